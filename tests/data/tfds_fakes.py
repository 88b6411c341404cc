"""Small fake source files for the real tfds builders, and a download step that serves them.

:func:`serve_downloads` replaces only the network step of tfds' ``DownloadManager``
(``_download``, reached after its cache and ``manual_dir`` look-ups): a URL of the mapping is
answered with a copy of a local file, any other URL fails the test. Everything else is the
real builder: checksum-file look-up, archive extraction, example generation, array_record
writing.

The text sources live in ``tests/data/fixtures`` in the layout of the real downloads (the
GLUE zips hold ``<Task>/train.tsv``, ...; MRPC and SQuAD are plain files); the zips and the
CIFAR binaries are built from them (or from seeded random pixels) in a temporary directory.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import pathlib
import shutil
import tarfile
import zipfile
from collections.abc import Iterator

import numpy as np

FIXTURES = pathlib.Path(__file__).parent / "fixtures"

GLUE_URL = "https://dl.fbaipublicfiles.com/glue/data/{}.zip"
# tfds config name -> (archive name in the URL, directory inside the archive)
GLUE_ARCHIVES = {
  "cola": ("CoLA", "CoLA"),
  "sst2": ("SST-2", "SST-2"),
  "qqp": ("QQP", "QQP"),
  "stsb": ("STS-B", "STS-B"),
  "mnli": ("MNLI", "MNLI"),
  "qnli": ("QNLIv2", "QNLI"),
  "rte": ("RTE", "RTE"),
}
MRPC_URLS = {
  "https://firebasestorage.googleapis.com/v0/b/mtl-sentence-representations.appspot.com/o/"
  "data%2Fmrpc_dev_ids.tsv?alt=media&token=ec5c0836-31d5-48f4-b431-7480817f1adc": (
    "data_mrpc_dev_ids.tsv"
  ),
  "https://dl.fbaipublicfiles.com/senteval/senteval_data/msr_paraphrase_train.txt": (
    "msr_paraphrase_train.txt"
  ),
  "https://dl.fbaipublicfiles.com/senteval/senteval_data/msr_paraphrase_test.txt": (
    "msr_paraphrase_test.txt"
  ),
}
SQUAD_URL = "https://rajpurkar.github.io/SQuAD-explorer/dataset/{}"
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/{}"


@contextlib.contextmanager
def serve_downloads(files: dict[str, pathlib.Path]) -> Iterator[list[str]]:
  """Answer tfds' downloads of the URLs in ``files`` with those local files.

  Yields:
      The list of URLs the builder asked for, in order (filled while the block runs).
  """
  import promise
  from tensorflow_datasets.core.download import download_manager

  requested: list[str] = []

  def fake_download(self, resource):
    url = resource.url
    requested.append(url)
    if url not in files:
      raise AssertionError(f"the builder asked for {url}, which this test does not serve")
    # A fresh copy under the download dir, named like the original file, as the real
    # download leaves it (the extension selects the extraction method).
    target = pathlib.Path(self._download_dir) / "served" / str(len(requested)) / files[url].name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(files[url], target)
    return promise.Promise.resolve(target)

  original = download_manager.DownloadManager._download
  download_manager.DownloadManager._download = fake_download
  try:
    yield requested
  finally:
    download_manager.DownloadManager._download = original


# --------------------------------------------------------------------------- GLUE


def glue_sources(task: str, workdir: pathlib.Path) -> dict[str, pathlib.Path]:
  """URL -> local file for ``glue/<task>``; the zips are built from the fixture directory."""
  if task == "mrpc":
    return {url: FIXTURES / "glue" / "mrpc" / name for url, name in MRPC_URLS.items()}
  archive, inner = GLUE_ARCHIVES[task]
  path = workdir / f"{archive}.zip"
  with zipfile.ZipFile(path, "w") as zipped:
    for source in sorted((FIXTURES / "glue" / inner).iterdir()):
      zipped.write(source, f"{inner}/{source.name}")
  return {GLUE_URL.format(archive): path}


def _tsv(path: pathlib.Path, header: bool = True) -> list:
  with open(path, encoding="utf-8-sig", newline="") as f:
    reader = (csv.DictReader if header else csv.reader)(f, delimiter="\t", quoting=csv.QUOTE_NONE)
    return list(reader)


def glue_expected(task: str) -> dict[str, dict[int, dict]]:
  """The canonical examples each split must hold, read from the fixtures independently of
  tfds: ``{split: {idx: {"text", "text_pair"?, "label", "idx"}}}``, where ``idx`` is the
  row number in the source file (as the GLUE builder numbers them)."""
  base = FIXTURES / "glue"
  if task == "mrpc":
    rows = _tsv(base / "mrpc" / "msr_paraphrase_train.txt")
    dev_ids = {tuple(row) for row in _tsv(base / "mrpc" / "data_mrpc_dev_ids.tsv", header=False)}

    def pair(row, label, idx):
      return {"text": row["#1 String"], "text_pair": row["#2 String"], "label": label, "idx": idx}

    in_dev = [(row["#1 ID"], row["#2 ID"]) in dev_ids for row in rows]
    labelled = [pair(row, int(row["Quality"]), n) for n, row in enumerate(rows)]
    test = _tsv(base / "mrpc" / "msr_paraphrase_test.txt")
    return {
      "train": {e["idx"]: e for e, dev in zip(labelled, in_dev) if not dev},
      "validation": {e["idx"]: e for e, dev in zip(labelled, in_dev) if dev},
      "test": {n: pair(row, -1, n) for n, row in enumerate(test)},
    }
  inner = GLUE_ARCHIVES[task][1]
  first, second, label_key, classes = {
    "cola": ("sentence", None, "is_acceptable", None),
    "sst2": ("sentence", None, "label", None),
    "qqp": ("question1", "question2", "is_duplicate", None),
    "stsb": ("sentence1", "sentence2", "score", None),
    "mnli": ("sentence1", "sentence2", "gold_label", ("entailment", "neutral", "contradiction")),
    "qnli": ("question", "sentence", "label", ("entailment", "not_entailment")),
    "rte": ("sentence1", "sentence2", "label", ("entailment", "not_entailment")),
  }[task]

  def convert(row: dict) -> dict:
    example = {"text": row[first]}
    if second:
      example["text_pair"] = row[second]
    value = row.get(label_key)
    if value is None:
      example["label"] = -1.0 if task == "stsb" else -1
    elif task == "stsb":
      example["label"] = float(np.float32(value))
    else:
      example["label"] = classes.index(value) if classes else int(value)
    return example

  def read(name: str) -> dict[int, dict]:
    path = base / inner / name
    if task == "cola" and not name.startswith("test"):
      rows = [{"sentence": r[3], "is_acceptable": r[1]} for r in _tsv(path, header=False)]
    else:
      rows = _tsv(path)
    return {n: {**convert(row), "idx": n} for n, row in enumerate(rows)}

  if task == "mnli":
    return {
      "train": read("train.tsv"),
      "validation_matched": read("dev_matched.tsv"),
      "validation_mismatched": read("dev_mismatched.tsv"),
      "test_matched": read("test_matched.tsv"),
      "test_mismatched": read("test_mismatched.tsv"),
    }
  return {"train": read("train.tsv"), "validation": read("dev.tsv"), "test": read("test.tsv")}


# --------------------------------------------------------------------------- SQuAD


def squad_sources() -> dict[str, pathlib.Path]:
  return {
    SQUAD_URL.format(name): FIXTURES / "squad" / name
    for name in ("train-v1.1.json", "dev-v1.1.json")
  }


def squad_expected() -> dict[str, dict[str, dict]]:
  """``{split: {id: canonical example}}`` read from the fixture JSON."""
  out = {}
  for split, name in (("train", "train-v1.1.json"), ("validation", "dev-v1.1.json")):
    examples = {}
    for article in json.loads((FIXTURES / "squad" / name).read_text())["data"]:
      for paragraph in article["paragraphs"]:
        for qa in paragraph["qas"]:
          examples[qa["id"]] = {
            "id": qa["id"],
            "title": article["title"],
            "question": qa["question"],
            "context": paragraph["context"],
            "answers": {
              "text": [a["text"] for a in qa["answers"]],
              "answer_start": [a["answer_start"] for a in qa["answers"]],
            },
          }
    out[split] = examples
  return out


# --------------------------------------------------------------------------- CIFAR


def cifar_sources(
  name: str, workdir: pathlib.Path, per_file: int = 3, seed: int = 0
) -> tuple[dict[str, pathlib.Path], dict[str, tuple[np.ndarray, np.ndarray]]]:
  """A ``cifar-10-binary.tar.gz`` / ``cifar-100-binary.tar.gz`` in the real layout, with
  ``per_file`` seeded random images per batch file.

  Returns:
      ``({url: archive}, {split: (images uint8 [N, 32, 32, 3], labels int [N])})``; for
      CIFAR-100 the labels are the fine labels (the second label byte of each record).
  """
  rng = np.random.default_rng(seed)
  if name == "cifar10":
    archive, prefix, label_file = (
      "cifar-10-binary.tar.gz",
      "cifar-10-batches-bin",
      "batches.meta.txt",
    )
    files = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
    label_names = [f"class{i}" for i in range(10)]
  else:
    archive, prefix, label_file = (
      "cifar-100-binary.tar.gz",
      "cifar-100-binary",
      "fine_label_names.txt",
    )
    files = {"train": ["train.bin"], "test": ["test.bin"]}
    label_names = [f"fine{i}" for i in range(100)]
  members: dict[str, bytes] = {f"{prefix}/{label_file}": "\n".join(label_names).encode() + b"\n"}
  if name == "cifar100":
    members[f"{prefix}/coarse_label_names.txt"] = (
      "\n".join(f"coarse{i}" for i in range(20)).encode() + b"\n"
    )
  expected = {}
  for split, names in files.items():
    images, labels = [], []
    for file_name in names:
      count = per_file * (5 if name == "cifar100" and split == "train" else 1)
      batch_images = rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
      batch_labels = rng.integers(0, len(label_names), size=count)
      records = []
      for image, label in zip(batch_images, batch_labels):
        # Record layout: label byte(s), then the 1024 red, 1024 green, 1024 blue bytes.
        header = bytes([label % 20, label]) if name == "cifar100" else bytes([label])
        records.append(header + image.transpose(2, 0, 1).tobytes())
      members[f"{prefix}/{file_name}"] = b"".join(records)
      images.append(batch_images)
      labels.append(batch_labels)
    expected[split] = (np.concatenate(images), np.concatenate(labels))
  path = workdir / archive
  with tarfile.open(path, "w:gz") as tar:
    for member_name, content in members.items():
      info = tarfile.TarInfo(member_name)
      info.size = len(content)
      tar.addfile(info, io.BytesIO(content))
  return {CIFAR_URL.format(archive): path}, expected


# --------------------------------------------------------------------------- ImageNet


def _jpeg(array: np.ndarray, mode: str = "RGB") -> bytes:
  from PIL import Image

  buffer = io.BytesIO()
  image = Image.fromarray(array)
  (image.convert("CMYK") if mode == "CMYK" else image).save(buffer, format="JPEG", quality=95)
  return buffer.getvalue()


def _png(array: np.ndarray) -> bytes:
  from PIL import Image

  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


def _tar(path_or_buffer, members: dict[str, bytes]) -> None:
  mode = "w"
  kwargs = {"fileobj": path_or_buffer} if isinstance(path_or_buffer, io.BytesIO) else {}
  with tarfile.open(name=None if kwargs else path_or_buffer, mode=mode, **kwargs) as tar:
    for member_name, content in members.items():
      info = tarfile.TarInfo(member_name)
      info.size = len(content)
      tar.addfile(info, io.BytesIO(content))


def imagenet_manual_dir(workdir: pathlib.Path, seed: int = 0):
  """``ILSVRC2012_img_train.tar`` (one tar per synset inside) and ``ILSVRC2012_img_val.tar``
  in the real layout, with a few small images of distinct sizes, among them one of the
  CMYK JPEGs and the PNG-in-disguise that tfds' builder converts (by file name).

  Returns:
      ``(manual_dir, {split: {(height, width): (rgb uint8 array, synset, exact)}})``:
      ``exact`` is False for the two images tfds re-encodes as JPEG (compare approximately).
  """
  rng = np.random.default_rng(seed)
  expected: dict[str, dict] = {"train": {}, "validation": {}}
  sizes = iter([(20 + 3 * i, 24 + 2 * i) for i in range(10)])

  def smooth_image():
    height, width = next(sizes)
    # Smooth gradients plus a little noise: JPEG keeps them close, so a decoded image can
    # be compared with its source.
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (height + width)], -1)
    return np.clip(base + rng.integers(0, 8, size=base.shape), 0, 255).astype(np.uint8)

  synsets = {
    "n01440764": [("n01440764_1.JPEG", "rgb"), ("n01440764_2.JPEG", "rgb")],
    "n01739381": [("n01739381_1309.JPEG", "cmyk")],  # in the builder's CMYK_IMAGES
    "n02105855": [("n02105855_2933.JPEG", "png")],  # the builder's PNG_IMAGES
  }
  train_members = {}
  for synset, images in synsets.items():
    inner = {}
    for file_name, kind in images:
      array = smooth_image()
      if kind == "png":
        inner[file_name] = _png(array)
      else:
        inner[file_name] = _jpeg(array, "CMYK" if kind == "cmyk" else "RGB")
      expected["train"][array.shape[:2]] = (array, synset, kind == "rgb")
    buffer = io.BytesIO()
    _tar(buffer, inner)
    train_members[f"{synset}.tar"] = buffer.getvalue()
  manual = workdir / "imagenet_manual"
  manual.mkdir()
  _tar(manual / "ILSVRC2012_img_train.tar", train_members)
  # Validation labels come from tfds' validation_labels.txt, line i for the i-th file name
  # in sorted order: the first three names get its first three labels.
  from tensorflow_datasets.core import utils

  labels_file = utils.tfds_path("datasets/imagenet2012/validation_labels.txt")
  first_labels = labels_file.read_text().split()[:3]
  val_members = {}
  for i, synset in enumerate(first_labels, start=1):
    array = smooth_image()
    val_members[f"ILSVRC2012_val_{i:08d}.JPEG"] = _jpeg(array)
    expected["validation"][array.shape[:2]] = (array, synset, True)
  _tar(manual / "ILSVRC2012_img_val.tar", val_members)
  return manual, expected
