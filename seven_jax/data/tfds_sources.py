"""The paper's datasets (GLUE, SQuAD v1.1, CIFAR-10/100, ImageNet-2012) through
tensorflow-datasets, without TensorFlow.

TensorFlow is not needed to *read*: a dataset prepared in the ``array_record`` file format is
opened with ``tfds.data_source(name, split=..., data_dir=...)``, a random-access sequence of
numpy/str dicts, which :class:`TfdsDataset` maps to this package's canonical examples
(see :mod:`seven_jax.data.core`). ``tfds.load`` / ``as_dataset`` need TensorFlow and are
not used.

Preparing a dataset (once, on a machine with internet)
------------------------------------------------------

::

    python -m seven_jax.data prepare glue/mrpc [--data_dir DIR] [--manual_dir DIR]

runs the real tfds builder with ``file_format='array_record'`` (``FileFormat.ARRAY_RECORD``
in ``tensorflow_datasets/core/file_adapters.py`` of tfds 4.9.10; the default ``tfrecord``
cannot be read without TensorFlow), see :func:`seven_jax.data.prepare.prepare`. It needs no
TensorFlow for any dataset here, CIFAR and ImageNet included: the few ``tf.*`` calls tfds
makes while preparing (archive extraction, PNG encoding, file checks) are served by a small
stand-in when TensorFlow is missing (:func:`seven_jax.data.prepare.tensorflow_stand_in`).
The per-dataset commands are in the specs' ``how_to_get``. Notes:

* ``imagenet2012`` cannot be downloaded automatically: put ``ILSVRC2012_img_train.tar`` and
  ``ILSVRC2012_img_val.tar`` (from image-net.org, after accepting its terms) in
  ``<data_dir>/downloads/manual/`` or in a directory passed as ``--manual_dir``.
* Offline, ``prepare`` stops within seconds and lists the files to download elsewhere and
  where to put them (the same manual directory); tfds checks them against its checksums.
* The data directory defaults to ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``; copy the
  prepared ``<data_dir>/<name>/<version>/`` directories to the machine that trains.
"""

from __future__ import annotations

import importlib
from typing import Any, Sequence

import numpy as np

from seven_jax.data.core import Dataset, DatasetSpec, DatasetUnavailableError

FILE_FORMAT = "array_record"

# Which tfds module registers each builder (tfds 4.9.10 does not import them eagerly).
BUILDER_MODULES = {
  "glue": "tensorflow_datasets.text.glue",
  "squad": "tensorflow_datasets.question_answering.squad",
  "cifar10": "tensorflow_datasets.image_classification.cifar",
  "cifar100": "tensorflow_datasets.image_classification.cifar",
  "imagenet2012": "tensorflow_datasets.image_classification.imagenet",
}

# tfds feature names of the two text inputs of each GLUE task.
GLUE_TEXT_KEYS = {
  "cola": ("sentence", None),
  "sst2": ("sentence", None),
  "mrpc": ("sentence1", "sentence2"),
  "stsb": ("sentence1", "sentence2"),
  "qqp": ("question1", "question2"),
  "mnli": ("premise", "hypothesis"),
  "qnli": ("question", "sentence"),
  "rte": ("sentence1", "sentence2"),
}


def prepare_command(name: str, manual_dir: bool = False) -> str:
  """The shell command that prepares ``name`` as array_record files."""
  if name.split("/")[0] not in BUILDER_MODULES:
    raise ValueError(f"{name!r} is not a tfds dataset; valid: {', '.join(BUILDER_MODULES)}")
  suffix = " --manual_dir /path/to/ILSVRC2012_tars" if manual_dir else ""
  return f"python -m seven_jax.data prepare {name}{suffix}  (array_record, no TensorFlow)"


def import_builder_module(name: str) -> Any:
  """Import tensorflow_datasets and the module that registers ``name``'s builder."""
  try:
    import tensorflow_datasets as tfds
  except ImportError as error:
    raise DatasetUnavailableError(
      f"dataset {name!r} is read through tensorflow-datasets, which is not installed. "
      "Install it with:\n    pip install tensorflow-datasets==4.9.10"
    ) from error
  importlib.import_module(BUILDER_MODULES[name.split("/")[0]])
  return tfds


def is_prepared(name: str, data_dir: str | None = None) -> bool:
  """Whether ``name`` has been prepared in ``data_dir`` (default ``$TFDS_DATA_DIR``)."""
  tfds = import_builder_module(name)
  builder = tfds.builder(name, data_dir=data_dir, file_format=FILE_FORMAT)
  return bool(builder.is_prepared())


def open_source(spec: DatasetSpec, split: str, data_dir: str | None = None):
  """``tfds.data_source`` for one split, with a helpful error when it is not prepared."""
  tfds = import_builder_module(spec.name)
  try:
    return tfds.data_source(
      spec.name,
      split=split,
      data_dir=data_dir,
      download=False,
      builder_kwargs={"file_format": FILE_FORMAT},
    )
  # tfds reports a missing dataset as KeyError (no splits), a wrongly formatted one as
  # NotImplementedError (tfrecord has no random access), a missing directory as
  # FileNotFoundError / AssertionError depending on the path.
  except (KeyError, NotImplementedError, FileNotFoundError, AssertionError) as error:
    raise DatasetUnavailableError(
      f"dataset {spec.name!r} (split {split!r}) is not prepared as {FILE_FORMAT} in "
      f"{data_dir or '$TFDS_DATA_DIR or ~/tensorflow_datasets'} ({type(error).__name__}: "
      f"{error}). On a machine with internet run:\n    {spec.how_to_get}\n"
      f"and copy the prepared directory here (pass data_dir=... or set TFDS_DATA_DIR)."
    ) from error


def _text(value: Any) -> str:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  return str(value)


class TfdsDataset(Dataset):
  """A split of a tfds dataset read through an array_record data source."""

  def __init__(self, spec: DatasetSpec, split: str, source: Sequence[dict]):
    super().__init__(spec, split)
    self.source = source
    self._converter = _converter_for(spec)

  def __len__(self) -> int:
    return len(self.source)

  def _example(self, index: int) -> dict:
    return self._converter(self.source[index])


def _converter_for(spec: DatasetSpec):
  family, _, config = spec.name.partition("/")
  if family == "glue":
    first, second = GLUE_TEXT_KEYS[config]
    regression = spec.is_regression

    def convert_glue(record: dict) -> dict:
      example = {"text": _text(record[first])}
      if second is not None:
        example["text_pair"] = _text(record[second])
      label = np.asarray(record["label"])
      example["label"] = float(label) if regression else int(label)
      example["idx"] = int(np.asarray(record["idx"]))
      return example

    return convert_glue
  if family == "squad":

    def convert_squad(record: dict) -> dict:
      answers = record["answers"]
      texts = [_text(text) for text in np.asarray(answers["text"]).reshape(-1)]
      starts = [int(start) for start in np.asarray(answers["answer_start"]).reshape(-1)]
      # Real SQuAD has one start per answer text; tfds's mock data draws the two lists
      # with independent lengths, so pair them up to the shorter one.
      count = min(len(texts), len(starts))
      return {
        "id": _text(record["id"]),
        "title": _text(record.get("title", "")),
        "question": _text(record["question"]),
        "context": _text(record["context"]),
        "answers": {"text": texts[:count], "answer_start": starts[:count]},
      }

    return convert_squad

  def convert_image(record: dict) -> dict:
    image = np.asarray(record["image"], dtype=np.uint8)
    if image.ndim == 2:
      image = image[..., None]
    return {"image": image, "label": int(np.asarray(record["label"]))}

  return convert_image


def load_tfds(spec: DatasetSpec, split: str, data_dir: str | None = None) -> TfdsDataset:
  """Loader used by the registry for every tfds-backed dataset."""
  return TfdsDataset(spec, split, open_source(spec, split, data_dir))


def tfds_availability(spec: DatasetSpec, data_dir: str | None = None) -> tuple[bool, str]:
  try:
    prepared = is_prepared(spec.name, data_dir)
  except DatasetUnavailableError as error:
    return False, str(error)
  if prepared:
    return True, f"prepared in {data_dir or '$TFDS_DATA_DIR or ~/tensorflow_datasets'}"
  return False, f"not prepared; on a machine with internet run: {spec.how_to_get}"
