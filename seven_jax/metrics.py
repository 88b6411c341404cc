"""Evaluation metrics for the SEVEN experiments, computed over a whole split.

Every metric here takes the predictions and the labels of the *entire* evaluation split
(concatenate the per-batch outputs first). This matters: the official SEVEN code averages
accuracy and F1 over batches, and a mean of per-batch F1 scores is not the F1 of the dev set
(a batch without positives has an undefined or zero F1, and batches of different sizes get the
same weight). GLUE defines F1 (MRPC, QQP), Matthews correlation (CoLA) and the correlations
(STS-B) over the whole dev set, and that is what these functions compute.

Contents:

* classification: :func:`accuracy`, :func:`binary_f1`, :func:`matthews_corrcoef`;
* regression: :func:`pearson`, :func:`spearman`;
* extractive QA (SQuAD v1.1): :func:`normalize_answer`, :func:`squad_exact_match`,
  :func:`squad_f1`, :func:`squad_scores`, and :func:`best_spans` / :func:`decode_squad_predictions`
  to turn start/end logits into answer strings;
* :func:`compute_metrics`, which evaluates a list of metrics by name (the names used in the
  dataset registry, :mod:`seven_jax.data`).

All functions take numpy-compatible arrays (jax arrays work too) and return Python floats.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
  "accuracy",
  "binary_f1",
  "matthews_corrcoef",
  "pearson",
  "spearman",
  "normalize_answer",
  "squad_exact_match",
  "squad_f1",
  "squad_scores",
  "best_spans",
  "decode_squad_predictions",
  "METRICS",
  "compute_metrics",
  "predictions_from_logits",
]


def _as_1d(values: Any, name: str) -> np.ndarray:
  array = np.asarray(values)
  if array.ndim == 2 and array.shape[1] == 1:  # regression outputs of shape [N, 1]
    array = array.reshape(-1)
  if array.ndim != 1:
    raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
  return array


def _check_pair(predictions: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
  predictions = _as_1d(predictions, "predictions")
  labels = _as_1d(labels, "labels")
  if predictions.shape != labels.shape:
    raise ValueError(
      f"predictions and labels differ in length: {predictions.shape[0]} vs {labels.shape[0]}"
    )
  if predictions.size == 0:
    raise ValueError("cannot compute a metric over zero examples")
  return predictions, labels


def predictions_from_logits(logits: Any) -> np.ndarray:
  """Class predictions from logits of shape ``[N, num_classes]`` (argmax), or regression
  outputs from ``[N]`` / ``[N, 1]`` (returned flat, unchanged)."""
  logits = np.asarray(logits)
  if logits.ndim == 2 and logits.shape[1] > 1:
    return logits.argmax(axis=-1)
  return logits.reshape(-1)


# --------------------------------------------------------------------------- classification


def accuracy(predictions: Any, labels: Any) -> float:
  """Fraction of predictions equal to the label."""
  predictions, labels = _check_pair(predictions, labels)
  return float(np.mean(predictions == labels))


def binary_f1(predictions: Any, labels: Any, positive_label: int = 1) -> float:
  """F1 of the positive class over the whole split: ``2·TP / (2·TP + FP + FN)``.

  This is the GLUE F1 for MRPC and QQP (positive class 1: "equivalent" / "duplicate").
  When there are no positives in either predictions or labels, F1 is 0 (scikit-learn's
  ``zero_division=0`` convention), never NaN.
  """
  predictions, labels = _check_pair(predictions, labels)
  predicted_positive = predictions == positive_label
  actual_positive = labels == positive_label
  true_positives = np.sum(predicted_positive & actual_positive)
  false_positives = np.sum(predicted_positive & ~actual_positive)
  false_negatives = np.sum(~predicted_positive & actual_positive)
  denominator = 2 * true_positives + false_positives + false_negatives
  return float(2 * true_positives / denominator) if denominator else 0.0


def matthews_corrcoef(predictions: Any, labels: Any) -> float:
  """Matthews correlation coefficient (the CoLA metric), for any number of classes.

  Uses the multiclass form (Gorodkin 2004), which for two classes reduces to
  ``(TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN))``. Returns 0 when the
  denominator is 0 (e.g. a constant predictor), as scikit-learn does.
  """
  predictions, labels = _check_pair(predictions, labels)
  classes, encoded = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
  num_classes = len(classes)
  label_ids = encoded[: len(labels)]
  prediction_ids = encoded[len(labels) :]
  confusion = np.zeros((num_classes, num_classes), dtype=np.float64)
  np.add.at(confusion, (label_ids, prediction_ids), 1.0)
  total = confusion.sum()
  correct = np.trace(confusion)
  true_counts = confusion.sum(axis=1)
  predicted_counts = confusion.sum(axis=0)
  covariance_numerator = correct * total - np.dot(true_counts, predicted_counts)
  denominator = np.sqrt(
    (total**2 - np.dot(predicted_counts, predicted_counts))
    * (total**2 - np.dot(true_counts, true_counts))
  )
  return float(covariance_numerator / denominator) if denominator else 0.0


# --------------------------------------------------------------------------- regression


def pearson(predictions: Any, labels: Any) -> float:
  """Pearson correlation between predictions and labels (STS-B).

  Returns NaN when either side is constant (the correlation is undefined there).
  """
  predictions, labels = _check_pair(predictions, labels)
  x = predictions.astype(np.float64) - np.mean(predictions, dtype=np.float64)
  y = labels.astype(np.float64) - np.mean(labels, dtype=np.float64)
  denominator = np.sqrt(np.dot(x, x) * np.dot(y, y))
  return float(np.dot(x, y) / denominator) if denominator else float("nan")


def _average_ranks(values: np.ndarray) -> np.ndarray:
  """Ranks 1..N with ties given the mean of the ranks they span."""
  order = np.argsort(values, kind="mergesort")
  sorted_values = values[order]
  # Boundaries of runs of equal values in sorted order.
  run_starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
  run_ends = np.r_[run_starts[1:], len(values)]
  mean_rank_of_run = (run_starts + run_ends + 1) / 2.0  # mean of 1-based ranks start+1..end
  ranks = np.empty(len(values), dtype=np.float64)
  ranks[order] = np.repeat(mean_rank_of_run, run_ends - run_starts)
  return ranks


def spearman(predictions: Any, labels: Any) -> float:
  """Spearman rank correlation (Pearson correlation of tie-averaged ranks), for STS-B."""
  predictions, labels = _check_pair(predictions, labels)
  return pearson(_average_ranks(predictions), _average_ranks(labels))


# --------------------------------------------------------------------------- SQuAD

_ARTICLES = re.compile(r"\b(a|an|the)\b", flags=re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
  """The SQuAD v1.1 answer normalisation: lowercase, drop ASCII punctuation, drop the
  articles a/an/the, and collapse whitespace.

  The order matters and follows the official evaluation script: punctuation is removed
  before articles, so "the-end" becomes "theend" and keeps its letters.
  """
  lowered = text.lower()
  without_punctuation = "".join(ch for ch in lowered if ch not in _PUNCTUATION)
  without_articles = _ARTICLES.sub(" ", without_punctuation)
  return " ".join(without_articles.split())


def _token_f1(prediction: str, gold: str) -> float:
  prediction_tokens = normalize_answer(prediction).split()
  gold_tokens = normalize_answer(gold).split()
  common = collections.Counter(prediction_tokens) & collections.Counter(gold_tokens)
  overlap = sum(common.values())
  if overlap == 0:
    return 0.0
  precision = overlap / len(prediction_tokens)
  recall = overlap / len(gold_tokens)
  return 2 * precision * recall / (precision + recall)


def squad_exact_match(prediction: str, gold_answers: Sequence[str]) -> float:
  """1.0 if the normalised prediction equals any normalised gold answer, else 0.0."""
  if not gold_answers:
    raise ValueError("a SQuAD v1.1 question needs at least one gold answer")
  normalized = normalize_answer(prediction)
  return float(any(normalized == normalize_answer(gold) for gold in gold_answers))


def squad_f1(prediction: str, gold_answers: Sequence[str]) -> float:
  """Bag-of-tokens F1 between the normalised prediction and each gold answer; the max."""
  if not gold_answers:
    raise ValueError("a SQuAD v1.1 question needs at least one gold answer")
  return max(_token_f1(prediction, gold) for gold in gold_answers)


def squad_scores(
  predictions: Mapping[str, str], gold_answers: Mapping[str, Sequence[str]]
) -> dict[str, float]:
  """Exact match and F1 in percent, averaged over all questions of ``gold_answers``.

  A question with no prediction scores 0 (as in the official script), so a partial
  prediction file cannot inflate the score.

  Args:
      predictions: question id -> predicted answer text.
      gold_answers: question id -> list of gold answer texts.
  Returns:
      ``{"exact_match": ..., "f1": ...}`` on a 0–100 scale.
  """
  if not gold_answers:
    raise ValueError("no gold answers given")
  exact_total = f1_total = 0.0
  for question_id, answers in gold_answers.items():
    if question_id not in predictions:
      continue
    exact_total += squad_exact_match(predictions[question_id], answers)
    f1_total += squad_f1(predictions[question_id], answers)
  count = len(gold_answers)
  return {"exact_match": 100.0 * exact_total / count, "f1": 100.0 * f1_total / count}


def best_spans(
  start_logits: Any,
  end_logits: Any,
  context_mask: Any,
  n_best: int = 20,
  max_answer_length: int = 30,
) -> list[tuple[int, int, float]]:
  """The ``n_best`` highest-scoring answer spans of one feature.

  A span ``(start, end)`` (token indices, inclusive) is valid when both ends are context
  tokens (``context_mask`` true), ``start <= end`` and ``end - start + 1 <= max_answer_length``.
  Its score is ``start_logits[start] + end_logits[end]``. Every valid pair is scored (no
  "top-k starts × top-k ends" shortcut that could miss the best valid span).

  Returns:
      Up to ``n_best`` tuples ``(start, end, score)``, best first.
  """
  start_logits = np.asarray(start_logits, dtype=np.float64).reshape(-1)
  end_logits = np.asarray(end_logits, dtype=np.float64).reshape(-1)
  context_mask = np.asarray(context_mask, dtype=bool).reshape(-1)
  length = len(start_logits)
  if not (len(end_logits) == length == len(context_mask)):
    raise ValueError("start_logits, end_logits and context_mask must have the same length")
  # Score only the band of allowed lengths: row k holds the spans (s, s + k), so the work is
  # O(length × max_answer_length) rather than O(length²).
  band = min(max_answer_length, length)
  starts = np.arange(length)[None, :]
  span_offsets = np.arange(band)[:, None]
  ends = starts + span_offsets
  inside = ends < length
  ends_clipped = np.minimum(ends, length - 1)
  scores = start_logits[starts] + end_logits[ends_clipped]
  valid = inside & context_mask[starts] & context_mask[ends_clipped]
  flat_valid = np.flatnonzero(valid)
  if flat_valid.size == 0:
    return []
  flat_scores = scores.reshape(-1)[flat_valid]
  keep = min(n_best, flat_valid.size)
  top = np.argpartition(-flat_scores, keep - 1)[:keep]
  top = top[np.argsort(-flat_scores[top], kind="stable")]
  spans = []
  for i in top:
    offset, start = divmod(int(flat_valid[i]), length)
    spans.append((start, start + offset, float(flat_scores[i])))
  return spans


def decode_squad_predictions(
  start_logits: Any,
  end_logits: Any,
  features: Any,
  contexts: Mapping[str, str] | Sequence[str],
  n_best: int = 20,
  max_answer_length: int = 30,
) -> dict[str, str]:
  """Turn per-feature start/end logits into one answer string per question.

  A long context is split into several overlapping features; each feature's candidate
  spans are mapped back to character offsets of the original context, and the best span
  over all features of a question wins.

  Args:
      start_logits, end_logits: ``[num_features, seq_len]`` (padding beyond a feature's
          length is ignored through its offsets).
      features: a :class:`seven_jax.data.squad.SquadFeatures` (or anything with
          ``example_ids`` and ``offsets``: per feature, the question id and a list of
          ``(char_start, char_end)`` per token, ``None`` for tokens outside the context).
      contexts: question id -> context string (or a sequence indexed like
          ``features.example_indices``).
      n_best, max_answer_length: see :func:`best_spans`.
  Returns:
      question id -> predicted answer text ("" if no valid span exists).
  """
  start_logits = np.asarray(start_logits)
  end_logits = np.asarray(end_logits)
  best: dict[str, tuple[float, str]] = {}
  for feature_index, question_id in enumerate(features.example_ids):
    offsets = features.offsets[feature_index]
    length = min(len(offsets), start_logits.shape[1])
    context_mask = [offset is not None for offset in offsets[:length]]
    spans = best_spans(
      start_logits[feature_index, :length],
      end_logits[feature_index, :length],
      context_mask,
      n_best=n_best,
      max_answer_length=max_answer_length,
    )
    if isinstance(contexts, Mapping):
      context = contexts[question_id]
    else:
      context = contexts[features.example_indices[feature_index]]
    best.setdefault(question_id, (-np.inf, ""))
    if spans:
      start, end, score = spans[0]
      if score > best[question_id][0]:
        text = context[offsets[start][0] : offsets[end][1]]
        best[question_id] = (score, text)
  return {question_id: text for question_id, (_, text) in best.items()}


# --------------------------------------------------------------------------- by name

METRICS: dict[str, Callable[[Any, Any], float]] = {
  "accuracy": accuracy,
  "f1": binary_f1,
  "matthews_corrcoef": matthews_corrcoef,
  "pearson": pearson,
  "spearman": spearman,
}
"""Metric name -> function ``(predictions, labels) -> float``. SQuAD metrics take answer
strings rather than arrays and are computed with :func:`squad_scores`."""


def compute_metrics(names: Iterable[str], predictions: Any, labels: Any) -> dict[str, float]:
  """Evaluate the named metrics (keys of :data:`METRICS`) over the whole split.

  Example:
      >>> compute_metrics(["f1", "accuracy"], [1, 0, 1, 1], [1, 0, 0, 1])
      {'f1': 0.8, 'accuracy': 0.75}
  """
  results = {}
  for name in names:
    if name not in METRICS:
      raise ValueError(f"unknown metric {name!r}; valid names: {sorted(METRICS)}")
    results[name] = METRICS[name](predictions, labels)
  return results
