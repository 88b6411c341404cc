"""The common interface of every dataset: specs, examples and errors.

A dataset is described by a :class:`DatasetSpec` (its name, task, splits, features, label
count and metrics, where it comes from and how to get it) and loaded as a :class:`Dataset`,
a random-access sequence of examples in one canonical format per task:

================================  ===========================================================
task                              example keys
================================  ===========================================================
``text_classification``           ``text`` (str), ``label`` (int)
``text_pair_classification``      ``text``, ``text_pair`` (str), ``label`` (int)
``text_pair_regression``          ``text``, ``text_pair`` (str), ``label`` (float)
``image_classification``          ``image`` (uint8 ``[H, W, C]``), ``label`` (int)
``extractive_qa``                 ``id``, ``question``, ``context`` (str), ``answers``
                                  (``{"text": [str], "answer_start": [int]}``)
================================  ===========================================================

Labels of unlabelled test splits (GLUE test) are ``-1``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import numpy as np

TASKS = (
  "text_classification",
  "text_pair_classification",
  "text_pair_regression",
  "image_classification",
  "extractive_qa",
)


class DatasetUnavailableError(RuntimeError):
  """The dataset's source is not on this machine; the message says how to get it."""


class MalformedDataError(ValueError):
  """A local data file does not have the expected format; the message names the file
  and the line (or byte offset) where parsing failed."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Everything an experiment needs to know about a dataset before loading it.

  Attributes:
      name: registry name, e.g. ``"rotten_tomatoes"`` or ``"glue/mrpc"``.
      task: one of :data:`TASKS`.
      splits: split names accepted by :func:`seven_jax.data.get_dataset`.
      num_labels: number of classes; 1 for regression; ``None`` for extractive QA.
      label_names: class names in label order, when known.
      metrics: metric names (keys of :data:`seven_jax.metrics.METRICS`, or
          ``exact_match``/``f1`` for QA); the first is the primary metric.
      description: one line on what the data is.
      source: where the data is read from.
      how_to_get: the command that makes the source available.
      licence: licence of the data (and of the package it comes in).
      image_shape: ``(H, W, C)`` for image datasets with a fixed size, else ``None``.
  """

  name: str
  task: str
  splits: tuple[str, ...]
  num_labels: int | None
  metrics: tuple[str, ...]
  description: str
  source: str
  how_to_get: str
  licence: str
  label_names: tuple[str, ...] | None = None
  image_shape: tuple[int, int, int] | None = None
  # Loader and availability check; not part of the comparable description.
  loader: Callable[..., "Dataset"] | None = dataclasses.field(
    default=None, compare=False, repr=False
  )
  availability: Callable[..., "tuple[bool, str]"] | None = dataclasses.field(
    default=None, compare=False, repr=False
  )

  def __post_init__(self):
    if self.task not in TASKS:
      raise ValueError(f"unknown task {self.task!r}; valid tasks: {TASKS}")

  @property
  def features(self) -> tuple[str, ...]:
    """The input feature keys of an example (labels and ids excluded)."""
    return {
      "text_classification": ("text",),
      "text_pair_classification": ("text", "text_pair"),
      "text_pair_regression": ("text", "text_pair"),
      "image_classification": ("image",),
      "extractive_qa": ("question", "context"),
    }[self.task]

  @property
  def is_regression(self) -> bool:
    return self.task == "text_pair_regression"

  @property
  def primary_metric(self) -> str:
    return self.metrics[0]

  def compute_metrics(self, predictions: Any, labels: Any) -> dict[str, float]:
    """The dataset's metrics over a whole split. ``predictions`` may be logits
    (``[N, num_labels]``, argmax is taken) or class ids / regression outputs."""
    from seven_jax import metrics as metrics_lib

    if self.task == "extractive_qa":
      raise ValueError(
        "extractive QA is scored from answer strings: use "
        "seven_jax.metrics.decode_squad_predictions and squad_scores"
      )
    return metrics_lib.compute_metrics(
      self.metrics, metrics_lib.predictions_from_logits(predictions), labels
    )


class Dataset(Sequence):
  """One split of a dataset: a random-access sequence of canonical examples.

  Subclasses implement ``__len__`` and ``_example(index)``. ``columns`` may hold whole
  columns as numpy arrays (in-memory datasets) so batching can gather without a Python loop.
  """

  def __init__(self, spec: DatasetSpec, split: str):
    self.spec = spec
    self.split = split

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self._example(i) for i in range(*index.indices(len(self)))]
    index = int(index)
    if index < 0:
      index += len(self)
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} examples")
    return self._example(index)

  def _example(self, index: int) -> dict:
    raise NotImplementedError

  def examples(self, indices: Sequence[int]) -> list[dict]:
    """The examples at ``indices`` (one call, so sources can batch their reads)."""
    return [self[i] for i in indices]

  @property
  def columns(self) -> Mapping[str, Any] | None:
    return None

  def __repr__(self) -> str:
    return f"{type(self).__name__}(name={self.spec.name!r}, split={self.split!r}, size={len(self)})"


class InMemoryDataset(Dataset):
  """A split held as columns in memory (the offline local datasets)."""

  def __init__(self, spec: DatasetSpec, split: str, columns: Mapping[str, Any]):
    super().__init__(spec, split)
    lengths = {key: len(value) for key, value in columns.items()}
    if len(set(lengths.values())) != 1:
      raise ValueError(f"columns have different lengths: {lengths}")
    self._columns = dict(columns)
    self._length = next(iter(lengths.values()))

  def __len__(self) -> int:
    return self._length

  def _example(self, index: int) -> dict:
    return {key: _python_scalar(column[index]) for key, column in self._columns.items()}

  @property
  def columns(self) -> Mapping[str, Any]:
    return self._columns


def _python_scalar(value):
  if isinstance(value, np.generic):
    return value.item()
  return value
