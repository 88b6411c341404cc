"""SQuAD v1.1 features: question/context pairs tokenized into overlapping windows.

A context longer than the window is split into several *features* that overlap by
``doc_stride`` tokens (the tokenizer's overflow mechanism). Each feature keeps:

* its token ids and segment ids (question = 0, context = 1);
* ``offsets``: per token, the ``(char_start, char_end)`` of the token in the context, or
  ``None`` for question, special and padding tokens; decoding uses this to map a predicted
  token span back to the context string and to keep spans inside the context;
* ``example_indices`` / ``example_ids``: which question the feature belongs to (the
  feature-to-example mapping needed to merge the windows at evaluation);
* ``start_positions`` / ``end_positions``: the token indices of the first gold answer, or
  ``(0, 0)`` (the ``[CLS]`` token) when the answer is not fully inside the window, as in
  BERT's SQuAD recipe.

Typical evaluation loop::

    features = prepare_squad_features(examples, tokenizer, max_len=384, doc_stride=128)
    batches = squad_batches(features, batch_size=32, shuffle=False, pad_final_batch=True)
    outputs = [(b["feature_index"], *model_logits(b)) for b in batches]
    start, end = assemble_logits(outputs, len(features), features.max_len)
    predictions = decode_squad_predictions(start, end, features, {e["id"]: e["context"] for e in examples})
    squad_scores(predictions, {e["id"]: e["answers"]["text"] for e in examples})
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

import numpy as np

from seven_jax.data.batching import (
  DEFAULT_BUCKETS,
  BatchIterator,
  bucket_for,
  bucket_lengths,
  check_int,
)


@dataclasses.dataclass
class SquadFeatures:
  """Tokenized SQuAD windows; see the module docstring for the fields."""

  input_ids: list[list[int]]
  token_type_ids: list[list[int]]
  offsets: list[list[tuple[int, int] | None]]
  example_indices: np.ndarray
  example_ids: list[str]
  start_positions: np.ndarray
  end_positions: np.ndarray
  max_len: int
  pad_token_id: int

  def __len__(self) -> int:
    return len(self.input_ids)


def _answer_token_span(
  offsets: Sequence[tuple[int, int] | None], answer_start: int, answer_end: int
) -> tuple[int, int]:
  """Token indices ``(start, end)`` covering ``[answer_start, answer_end)`` chars, or (0, 0)."""
  context_tokens = [i for i, offset in enumerate(offsets) if offset is not None]
  if not context_tokens:
    return 0, 0
  first, last = context_tokens[0], context_tokens[-1]
  if offsets[first][0] > answer_start or offsets[last][1] < answer_end:
    return 0, 0  # the answer is (partly) outside this window
  start = first
  while start <= last and offsets[start] is not None and offsets[start][1] <= answer_start:
    start += 1
  end = last
  while end >= first and offsets[end] is not None and offsets[end][0] >= answer_end:
    end -= 1
  if start > end:
    return 0, 0
  return start, end


def prepare_squad_features(
  examples: Iterable[dict],
  tokenizer: Any,
  max_len: int = 384,
  doc_stride: int = 128,
) -> SquadFeatures:
  """Tokenize SQuAD examples (canonical dicts: ``id, question, context, answers``).

  Args:
      examples: canonical examples (e.g. ``get_dataset("squad/v1.1", split)``).
      tokenizer: a fast tokenizer (offsets are needed).
      max_len: window length in tokens, question included.
      doc_stride: tokens of overlap between consecutive windows of one context.
  Raises:
      TypeError, ValueError: ``max_len`` not a positive integer, ``doc_stride`` not in
          ``[0, max_len)``.
  """
  max_len = check_int("max_len", max_len)
  doc_stride = check_int("doc_stride", doc_stride, minimum=0)
  if doc_stride >= max_len:
    raise ValueError(f"doc_stride must be in [0, max_len={max_len}), got {doc_stride}")
  examples = list(examples)
  # Leading whitespace in questions only wastes tokens and shifts nothing in the context.
  questions = [example["question"].lstrip() for example in examples]
  contexts = [example["context"] for example in examples]
  encoded = tokenizer(
    questions,
    contexts,
    truncation="only_second",
    max_length=max_len,
    stride=doc_stride,
    return_overflowing_tokens=True,
    return_offsets_mapping=True,
    return_token_type_ids=True,
    padding=False,
  )
  example_indices = np.asarray(encoded["overflow_to_sample_mapping"], dtype=np.int64)
  offsets, starts, ends = [], [], []
  for feature, example_index in enumerate(example_indices):
    sequence_ids = encoded.sequence_ids(feature)
    feature_offsets = [
      tuple(offset) if sequence_id == 1 else None
      for offset, sequence_id in zip(encoded["offset_mapping"][feature], sequence_ids)
    ]
    offsets.append(feature_offsets)
    answers = examples[example_index]["answers"]
    if answers["text"] and answers["answer_start"]:
      answer_start = int(answers["answer_start"][0])
      answer_end = answer_start + len(answers["text"][0])
      start, end = _answer_token_span(feature_offsets, answer_start, answer_end)
    else:
      start, end = 0, 0
    starts.append(start)
    ends.append(end)
  return SquadFeatures(
    input_ids=list(encoded["input_ids"]),
    token_type_ids=list(encoded["token_type_ids"]),
    offsets=offsets,
    example_indices=example_indices,
    example_ids=[examples[i]["id"] for i in example_indices],
    start_positions=np.asarray(starts, dtype=np.int32),
    end_positions=np.asarray(ends, dtype=np.int32),
    max_len=max_len,
    pad_token_id=tokenizer.pad_token_id,
  )


def squad_batches(
  features: SquadFeatures,
  batch_size: int,
  *,
  buckets: Sequence[int] = DEFAULT_BUCKETS,
  shuffle: bool = True,
  seed: int = 0,
  drop_remainder: bool = True,
  pad_final_batch: bool = False,
  num_epochs: int | None = 1,
) -> BatchIterator:
  """Batches of SQuAD features, padded to bucket lengths.

  Each batch has ``input_ids``, ``attention_mask``, ``token_type_ids``,
  ``start_positions``, ``end_positions`` and ``feature_index`` (int32; ``-1`` on padding
  rows), which maps the batch's logits back to features (:func:`assemble_logits`).
  """
  if not isinstance(features, SquadFeatures):
    raise TypeError(
      f"features must be the SquadFeatures of prepare_squad_features, got {type(features).__name__}"
    )
  lengths = bucket_lengths(features.max_len, buckets)

  def make_batch(indices: np.ndarray, pad_rows: int) -> dict:
    rows = len(indices) + pad_rows
    padded_len = bucket_for(max(len(features.input_ids[i]) for i in indices), lengths)
    input_ids = np.full((rows, padded_len), features.pad_token_id, dtype=np.int32)
    attention_mask = np.zeros((rows, padded_len), dtype=np.int32)
    token_type_ids = np.zeros((rows, padded_len), dtype=np.int32)
    for row, feature in enumerate(indices):
      ids = features.input_ids[feature]
      input_ids[row, : len(ids)] = ids
      attention_mask[row, : len(ids)] = 1
      token_type_ids[row, : len(ids)] = features.token_type_ids[feature]
    feature_index = np.full(rows, -1, dtype=np.int32)
    feature_index[: len(indices)] = indices
    start_positions = np.zeros(rows, dtype=np.int32)
    end_positions = np.zeros(rows, dtype=np.int32)
    start_positions[: len(indices)] = features.start_positions[indices]
    end_positions[: len(indices)] = features.end_positions[indices]
    return {
      "input_ids": input_ids,
      "attention_mask": attention_mask,
      "token_type_ids": token_type_ids,
      "start_positions": start_positions,
      "end_positions": end_positions,
      "feature_index": feature_index,
    }

  return BatchIterator(
    len(features),
    batch_size,
    make_batch,
    shuffle=shuffle,
    seed=seed,
    drop_remainder=drop_remainder,
    pad_final_batch=pad_final_batch,
    num_epochs=num_epochs,
  )


def assemble_logits(
  outputs: Iterable[tuple[Any, Any, Any]], num_features: int, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
  """Collect per-batch ``(feature_index, start_logits, end_logits)`` into
  ``[num_features, max_len]`` arrays (positions beyond a batch's length get -1e9).

  Raises:
      ValueError: a feature received no logits (an incomplete evaluation pass).
  """
  start = np.full((num_features, max_len), -1e9, dtype=np.float32)
  end = np.full((num_features, max_len), -1e9, dtype=np.float32)
  seen = np.zeros(num_features, dtype=bool)
  for feature_index, start_logits, end_logits in outputs:
    feature_index = np.asarray(feature_index)
    real = feature_index >= 0
    start_logits = np.asarray(start_logits)[real]
    end_logits = np.asarray(end_logits)[real]
    width = start_logits.shape[1]
    start[feature_index[real], :width] = start_logits
    end[feature_index[real], :width] = end_logits
    seen[feature_index[real]] = True
  if not seen.all():
    raise ValueError(f"{int((~seen).sum())} of {num_features} features have no logits")
  return start, end
