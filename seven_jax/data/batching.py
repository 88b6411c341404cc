"""Tokenization and batching into numpy arrays, with bucketed shapes and resumable order.

* :class:`BatchIterator` walks a dataset in seeded, per-epoch shuffled order and records its
  position (epoch, batch index), so a run can stop and resume on exactly the next batch
  (:meth:`BatchIterator.state` / :meth:`BatchIterator.restore`).
* :func:`text_batches` tokenizes with a ``transformers`` fast tokenizer (e.g. the
  checkpoint's ``BertTokenizerFast``) and pads every batch to the smallest *bucket length*
  that fits it, so a jitted step sees a handful of shapes instead of one per batch.
* :func:`image_batches` yields ``pixels`` as float32 NHWC in [0, 1].

Batches are dicts of numpy arrays:

* text: ``input_ids``, ``attention_mask``, ``token_type_ids`` (int32 ``[B, L]``) and
  ``labels`` (int32 ``[B]``, or float32 for regression);
* images: ``pixels`` (float32 ``[B, H, W, C]``) and ``labels`` (int32 ``[B]``);
* with ``pad_final_batch=True`` also ``example_mask`` (bool ``[B]``): the last, partial batch
  is padded to full size (so evaluation keeps one batch shape) and the mask marks real rows.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

DEFAULT_BUCKETS = (16, 32, 64, 128, 256, 512)


# --------------------------------------------------------------------------- argument checks
# Checked when the iterator is built, so a bad value fails at once with its name, not as
# an unrelated error (or a silent no-op) at the first batch.


def check_int(name: str, value: Any, minimum: int = 1) -> int:
  """``value`` as an int >= ``minimum``; ``TypeError``/``ValueError`` naming ``name``.

  Integers (Python or numpy) only: ``2.5``, ``"8"``, ``True`` and ``None`` are refused.
  """
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
    raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
  if value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return int(value)


def check_bool(name: str, value: Any) -> bool:
  """``value`` as a bool; anything else (``"no"``, ``0``, ``None``) is a ``TypeError``."""
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be True or False, got {value!r}")
  return bool(value)


def check_task(function: str, dataset: Any, tasks: Sequence[str], instead: str) -> None:
  """Refuse a dataset whose spec has a task ``function`` cannot batch."""
  spec = getattr(dataset, "spec", None)
  if spec is not None and spec.task not in tasks:
    raise ValueError(
      f"{function} batches {' / '.join(tasks)} datasets; {spec.name!r} is {spec.task} "
      f"(use {instead})"
    )


# --------------------------------------------------------------------------- resumable order


@dataclasses.dataclass
class IteratorState:
  """Position of a :class:`BatchIterator`: the next batch is batch ``index`` of ``epoch``."""

  epoch: int = 0
  index: int = 0

  def to_dict(self) -> dict[str, int]:
    return dataclasses.asdict(self)


class BatchIterator:
  """Iterate batches of a random-access dataset in a seeded, resumable order.

  Epoch ``e`` visits the examples in the permutation drawn from
  ``numpy.random.default_rng([seed, e])``, so the order of any epoch can be recomputed from
  the seed alone, and the position ``(epoch, index)`` is all a checkpoint needs to store.

  Args:
      num_examples: size of the dataset.
      batch_size: examples per batch.
      make_batch: builds the batch dict from an int array of example indices (and the
          number of padding rows to add when ``pad_final_batch``).
      shuffle: shuffle each epoch (training) or keep dataset order (evaluation).
      seed: shuffling seed.
      drop_remainder: drop the last, partial batch of each epoch (keeps one batch shape).
      pad_final_batch: instead of dropping it, pad the partial batch to ``batch_size`` and
          add an ``example_mask``. Mutually exclusive with ``drop_remainder``.
      num_epochs: stop after this many epochs; ``None`` iterates forever.
      lengths: optional per-example sequence lengths. When given (and ``shuffle``), each
          epoch groups examples of similar length into the same batch: the shuffled order is
          cut into chunks of ``group_batches * batch_size`` examples, each chunk is sorted by
          length and cut into batches, and the batches are shuffled. Padding to a bucket
          then wastes less compute, and the order is still a function of (seed, epoch).
      group_batches: batches per sorting chunk (larger: less padding, less randomness).
  """

  def __init__(
    self,
    num_examples: int,
    batch_size: int,
    make_batch: Callable[[np.ndarray, int], dict],
    *,
    shuffle: bool = True,
    seed: int = 0,
    drop_remainder: bool = True,
    pad_final_batch: bool = False,
    num_epochs: int | None = 1,
    lengths: Sequence[int] | None = None,
    group_batches: int = 50,
  ):
    num_examples = check_int("num_examples", num_examples, minimum=0)
    if num_examples == 0:
      raise ValueError("the dataset is empty (num_examples=0): there is nothing to batch")
    batch_size = check_int("batch_size", batch_size)
    shuffle = check_bool("shuffle", shuffle)
    seed = check_int("seed", seed, minimum=0)
    drop_remainder = check_bool("drop_remainder", drop_remainder)
    pad_final_batch = check_bool("pad_final_batch", pad_final_batch)
    if num_epochs is not None:
      num_epochs = check_int("num_epochs (or None for no end)", num_epochs)
    group_batches = check_int("group_batches", group_batches)
    if drop_remainder and pad_final_batch:
      raise ValueError("drop_remainder and pad_final_batch cannot both be set")
    if drop_remainder and num_examples < batch_size:
      raise ValueError(
        f"{num_examples} examples make no full batch of {batch_size} with drop_remainder=True"
      )
    self.num_examples = num_examples
    self.batch_size = batch_size
    self.make_batch = make_batch
    self.shuffle = shuffle
    self.seed = seed
    self.drop_remainder = drop_remainder
    self.pad_final_batch = pad_final_batch
    self.num_epochs = num_epochs
    self.lengths = None if lengths is None else np.asarray(lengths)
    if self.lengths is not None and len(self.lengths) != num_examples:
      raise ValueError("lengths must have one entry per example")
    self.group_batches = group_batches
    self._state = IteratorState()
    self._order_epoch = -1
    self._order: np.ndarray | None = None

  @property
  def batches_per_epoch(self) -> int:
    if self.drop_remainder:
      return self.num_examples // self.batch_size
    return -(-self.num_examples // self.batch_size)

  def __len__(self) -> int:
    """Batches left until the end of the last epoch (infinite iterators have no length)."""
    if self.num_epochs is None:
      raise TypeError("an iterator with num_epochs=None has no length")
    total = self.num_epochs * self.batches_per_epoch
    return max(0, total - (self._state.epoch * self.batches_per_epoch + self._state.index))

  def epoch_order(self, epoch: int) -> np.ndarray:
    """The example order of ``epoch``."""
    if not self.shuffle:
      return np.arange(self.num_examples)
    rng = np.random.default_rng([self.seed, epoch])
    order = rng.permutation(self.num_examples)
    if self.lengths is None:
      return order
    chunk = self.group_batches * self.batch_size
    grouped = np.concatenate(
      [
        part[np.argsort(self.lengths[part], kind="stable")]
        for part in np.split(order, range(chunk, len(order), chunk))
      ]
    )
    num_full = len(grouped) // self.batch_size
    full_batches = grouped[: num_full * self.batch_size].reshape(num_full, self.batch_size)
    # Shuffle whole batches so the epoch does not run short-to-long within each chunk; a
    # partial batch (if any) stays last, where drop_remainder / pad_final_batch expect it.
    return np.concatenate(
      [full_batches[rng.permutation(num_full)].reshape(-1), grouped[num_full * self.batch_size :]]
    )

  def state(self) -> dict[str, int]:
    """The position of the next batch, as a plain dict (store it with a checkpoint)."""
    return self._state.to_dict()

  def restore(self, state: Mapping[str, int]) -> None:
    """Continue from a position returned by :meth:`state`."""
    epoch, index = int(state["epoch"]), int(state["index"])
    if epoch < 0 or not 0 <= index <= self.batches_per_epoch:
      raise ValueError(f"invalid iterator state {dict(state)}")
    self._state = IteratorState(epoch, index)

  def __iter__(self) -> Iterator[dict]:
    return self

  def __next__(self) -> dict:
    if self._state.index >= self.batches_per_epoch:
      self._state = IteratorState(self._state.epoch + 1, 0)
    if self.num_epochs is not None and self._state.epoch >= self.num_epochs:
      raise StopIteration
    if self._order_epoch != self._state.epoch:
      self._order = self.epoch_order(self._state.epoch)
      self._order_epoch = self._state.epoch
    start = self._state.index * self.batch_size
    indices = self._order[start : start + self.batch_size]
    padding = self.batch_size - len(indices) if self.pad_final_batch else 0
    batch = self.make_batch(indices, padding)
    if self.pad_final_batch:
      batch["example_mask"] = np.arange(self.batch_size) < len(indices)
    self._state = IteratorState(self._state.epoch, self._state.index + 1)
    return batch


# --------------------------------------------------------------------------- text

TEXT_TASKS = ("text_classification", "text_pair_classification", "text_pair_regression")


def bucket_lengths(max_len: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> tuple[int, ...]:
  """The padded lengths in use: the buckets below ``max_len``, and ``max_len`` itself."""
  max_len = check_int("max_len", max_len)
  buckets = [check_int("each of buckets", bucket) for bucket in buckets]
  return tuple(sorted({b for b in buckets if b < max_len} | {max_len}))


def bucket_for(length: int, lengths: Sequence[int]) -> int:
  """The smallest bucket length that holds ``length`` tokens."""
  for bucket in lengths:
    if length <= bucket:
      return bucket
  raise ValueError(f"sequence of {length} tokens is longer than the largest bucket {lengths[-1]}")


def tokenize(
  tokenizer: Any,
  texts: Sequence[str],
  text_pairs: Sequence[str] | None = None,
  max_len: int = 128,
  buckets: Sequence[int] = DEFAULT_BUCKETS,
  pad_rows: int = 0,
) -> dict[str, np.ndarray]:
  """Tokenize texts (or text pairs) and pad them to one bucket length.

  Sequences are truncated to ``max_len`` tokens ("longest_first" for pairs, so both sides
  keep some tokens), then padded with the tokenizer's pad id to the smallest bucket that
  holds the longest one.

  Args:
      tokenizer: a ``transformers`` tokenizer (``BertTokenizerFast``).
      texts: first segments.
      text_pairs: second segments, or ``None`` for single-sentence tasks.
      max_len: truncation length, also the largest bucket.
      buckets: candidate padded lengths (see :func:`bucket_lengths`).
      pad_rows: extra all-padding rows appended (for a padded final batch).
  Returns:
      ``input_ids``, ``attention_mask``, ``token_type_ids``: int32 ``[len(texts)+pad_rows, L]``.
  """
  encoded = tokenizer(
    list(texts),
    list(text_pairs) if text_pairs is not None else None,
    truncation=True,
    max_length=max_len,
    padding=False,
    return_attention_mask=False,
    return_token_type_ids=True,
  )
  ids = encoded["input_ids"]
  type_ids = encoded["token_type_ids"]
  lengths = bucket_lengths(max_len, buckets)
  longest = max((len(row) for row in ids), default=1)
  padded_len = bucket_for(longest, lengths)
  rows = len(ids) + pad_rows
  input_ids = np.full((rows, padded_len), tokenizer.pad_token_id, dtype=np.int32)
  attention_mask = np.zeros((rows, padded_len), dtype=np.int32)
  token_type_ids = np.zeros((rows, padded_len), dtype=np.int32)
  for row, (row_ids, row_types) in enumerate(zip(ids, type_ids)):
    input_ids[row, : len(row_ids)] = row_ids
    attention_mask[row, : len(row_ids)] = 1
    token_type_ids[row, : len(row_types)] = row_types
  return {
    "input_ids": input_ids,
    "attention_mask": attention_mask,
    "token_type_ids": token_type_ids,
  }


def _gather(dataset: Any, indices: np.ndarray, key: str) -> list:
  columns = getattr(dataset, "columns", None)
  if columns is not None and key in columns:
    column = columns[key]
    if isinstance(column, np.ndarray):
      return column[indices]
    return [column[i] for i in indices]
  return [dataset[int(i)][key] for i in indices]


def text_batches(
  dataset: Any,
  tokenizer: Any,
  batch_size: int,
  *,
  max_len: int = 128,
  buckets: Sequence[int] = DEFAULT_BUCKETS,
  shuffle: bool = True,
  seed: int = 0,
  drop_remainder: bool = True,
  pad_final_batch: bool = False,
  num_epochs: int | None = 1,
  group_by_length: bool = False,
) -> BatchIterator:
  """Batches of a text (or text-pair) classification/regression dataset.

  Tokenization happens per batch, so the dataset can be a lazy tfds source. Padded lengths
  come from :func:`bucket_lengths`\\ ``(max_len, buckets)``; with ``drop_remainder`` or
  ``pad_final_batch`` the batch size is constant, so the number of distinct shapes is at most
  the number of buckets.

  With ``group_by_length`` (and ``shuffle``) the whole split is tokenized once up front to
  get its lengths, and batches are formed from examples of similar length (see
  :class:`BatchIterator`), so most batches fit a small bucket.

  Returns:
      A :class:`BatchIterator` of ``{input_ids, attention_mask, token_type_ids, labels}``.
  Raises:
      TypeError, ValueError: a bad argument (the message names it), or a dataset that is
          not text classification/regression.
  """
  check_task("text_batches", dataset, TEXT_TASKS, "image_batches or squad_batches")
  bucket_lengths(max_len, buckets)  # checks max_len and buckets now
  group_by_length = check_bool("group_by_length", group_by_length)
  spec = getattr(dataset, "spec", None)
  is_pair = spec.task in ("text_pair_classification", "text_pair_regression") if spec else None
  label_dtype = np.float32 if (spec is not None and spec.is_regression) else np.int32

  def make_batch(indices: np.ndarray, pad_rows: int) -> dict:
    if getattr(dataset, "columns", None) is not None:
      texts = _gather(dataset, indices, "text")
      pairs = _gather(dataset, indices, "text_pair") if is_pair else None
      labels = np.asarray(_gather(dataset, indices, "label"))
    else:
      examples = [dataset[int(i)] for i in indices]
      texts = [example["text"] for example in examples]
      pair_present = is_pair if is_pair is not None else "text_pair" in examples[0]
      pairs = [example["text_pair"] for example in examples] if pair_present else None
      labels = np.asarray([example["label"] for example in examples])
    batch = tokenize(tokenizer, texts, pairs, max_len=max_len, buckets=buckets, pad_rows=pad_rows)
    labels = labels.astype(label_dtype)
    if pad_rows:
      labels = np.concatenate([labels, np.zeros(pad_rows, dtype=label_dtype)])
    batch["labels"] = labels
    return batch

  lengths = None
  if group_by_length and shuffle:
    everything = np.arange(len(dataset))
    texts = _gather(dataset, everything, "text")
    pairs = _gather(dataset, everything, "text_pair") if is_pair else None
    encoded = tokenizer(
      list(texts),
      list(pairs) if pairs is not None else None,
      truncation=True,
      max_length=max_len,
      return_attention_mask=False,
    )
    lengths = [len(ids) for ids in encoded["input_ids"]]

  return BatchIterator(
    len(dataset),
    batch_size,
    make_batch,
    shuffle=shuffle,
    seed=seed,
    drop_remainder=drop_remainder,
    pad_final_batch=pad_final_batch,
    num_epochs=num_epochs,
    lengths=lengths,
  )


# --------------------------------------------------------------------------- images


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Resize the shorter side to fit, centre-crop to ``size`` (H, W), bilinear (PIL)."""
  from PIL import Image

  height, width = size
  scale = max(height / image.shape[0], width / image.shape[1])
  new_h, new_w = (
    max(height, round(image.shape[0] * scale)),
    max(width, round(image.shape[1] * scale)),
  )
  channels = image.shape[-1]
  pil = Image.fromarray(image[..., 0] if channels == 1 else image)
  resized = np.asarray(pil.resize((new_w, new_h), Image.BILINEAR))
  if resized.ndim == 2:
    resized = resized[..., None]
  top, left = (new_h - height) // 2, (new_w - width) // 2
  return resized[top : top + height, left : left + width]


def image_batches(
  dataset: Any,
  batch_size: int,
  *,
  image_size: tuple[int, int] | None = None,
  shuffle: bool = True,
  seed: int = 0,
  drop_remainder: bool = True,
  pad_final_batch: bool = False,
  num_epochs: int | None = 1,
) -> BatchIterator:
  """Batches of an image classification dataset: ``pixels`` float32 NHWC in [0, 1], ``labels``.

  Args:
      image_size: ``(H, W)`` to resize and centre-crop to; required when images differ in
          size (ImageNet), optional otherwise.
  Raises:
      TypeError, ValueError: a bad argument (the message names it), or a dataset that is
          not image classification.
  """
  check_task("image_batches", dataset, ("image_classification",), "text_batches")
  if image_size is not None:
    if isinstance(image_size, (str, bytes)) or not isinstance(image_size, Sequence):
      raise TypeError(f"image_size must be (height, width) or None, got {image_size!r}")
    if len(image_size) != 2:
      raise ValueError(f"image_size must be (height, width) or None, got {image_size!r}")
    image_size = (
      check_int("image_size[0] (height)", image_size[0]),
      check_int("image_size[1] (width)", image_size[1]),
    )

  def make_batch(indices: np.ndarray, pad_rows: int) -> dict:
    if getattr(dataset, "columns", None) is not None:
      images = list(_gather(dataset, indices, "image"))
      labels = np.asarray(_gather(dataset, indices, "label"), dtype=np.int32)
    else:
      examples = [dataset[int(i)] for i in indices]
      images = [example["image"] for example in examples]
      labels = np.asarray([example["label"] for example in examples], dtype=np.int32)
    if image_size is not None:
      images = [resize_image(np.asarray(image), image_size) for image in images]
    shapes = {np.shape(image) for image in images}
    if len(shapes) != 1:
      raise ValueError(f"images of different shapes {sorted(shapes)}: pass image_size=(H, W)")
    pixels = np.stack(images).astype(np.float32) / 255.0
    if pad_rows:
      pixels = np.concatenate([pixels, np.zeros((pad_rows,) + pixels.shape[1:], np.float32)])
      labels = np.concatenate([labels, np.zeros(pad_rows, np.int32)])
    return {"pixels": pixels, "labels": labels}

  return BatchIterator(
    len(dataset),
    batch_size,
    make_batch,
    shuffle=shuffle,
    seed=seed,
    drop_remainder=drop_remainder,
    pad_final_batch=pad_final_batch,
    num_epochs=num_epochs,
  )
