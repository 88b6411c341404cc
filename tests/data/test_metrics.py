"""Metrics on hand-computed cases, cross-checked against scikit-learn and scipy."""

import math

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from seven_jax import metrics


def test_accuracy_hand_computed():
  assert metrics.accuracy([1, 0, 1, 1], [1, 0, 0, 1]) == 0.75


def test_binary_f1_hand_computed():
  # TP=2 (idx 0, 3), FP=1 (idx 2), FN=1 (idx 4): F1 = 4 / (4 + 1 + 1) = 2/3
  predictions = [1, 0, 1, 1, 0]
  labels = [1, 0, 0, 1, 1]
  assert metrics.binary_f1(predictions, labels) == pytest.approx(2 / 3)


def test_binary_f1_is_corpus_level_not_mean_of_batches():
  predictions = np.array([1, 1, 0, 0, 1, 0, 1, 1])
  labels = np.array([1, 0, 0, 1, 1, 1, 1, 0])
  whole = metrics.binary_f1(predictions, labels)
  # TP=3, FP=2, FN=2 -> 6 / 10
  assert whole == pytest.approx(0.6)
  per_batch = np.mean(
    [metrics.binary_f1(predictions[i : i + 2], labels[i : i + 2]) for i in range(0, 8, 2)]
  )
  assert per_batch != pytest.approx(whole)  # what the official code reports instead
  assert whole == pytest.approx(skm.f1_score(labels, predictions))


def test_binary_f1_without_positives_is_zero():
  assert metrics.binary_f1([0, 0], [0, 0]) == 0.0


def test_matthews_hand_computed():
  # TP=2, TN=1, FP=1, FN=1: (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6
  predictions = [1, 1, 1, 0, 0]
  labels = [1, 1, 0, 1, 0]
  assert metrics.matthews_corrcoef(predictions, labels) == pytest.approx(1 / 6)


def test_matthews_matches_sklearn_binary_and_multiclass():
  rng = np.random.default_rng(0)
  for num_classes in (2, 3, 5):
    labels = rng.integers(0, num_classes, 200)
    predictions = np.where(rng.random(200) < 0.6, labels, rng.integers(0, num_classes, 200))
    assert metrics.matthews_corrcoef(predictions, labels) == pytest.approx(
      skm.matthews_corrcoef(labels, predictions)
    )


def test_matthews_constant_prediction_is_zero():
  assert metrics.matthews_corrcoef([1, 1, 1], [0, 1, 0]) == 0.0


def test_pearson_and_spearman_hand_computed():
  # y = 2x exactly: both correlations are 1.
  assert metrics.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
  # x=[1,2,3], y=[1,3,2]: centred (-1,0,1),(-1,1,0) -> 1/sqrt(2*2) = 0.5
  assert metrics.pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
  # monotone but not linear: Spearman 1, Pearson < 1
  x = [1, 2, 3, 4]
  y = [1, 10, 100, 1000]
  assert metrics.spearman(x, y) == pytest.approx(1.0)
  assert metrics.pearson(x, y) < 0.9


def test_spearman_ties_match_scipy():
  rng = np.random.default_rng(1)
  predictions = rng.normal(size=300)
  labels = np.round(rng.uniform(0, 5, 300) * 5) / 5  # STS-B style, many ties
  assert metrics.spearman(predictions, labels) == pytest.approx(
    stats.spearmanr(predictions, labels)[0]
  )
  assert metrics.pearson(predictions, labels) == pytest.approx(
    stats.pearsonr(predictions, labels)[0]
  )
  assert metrics.spearman([1, 1, 2], [1, 2, 2]) == pytest.approx(
    stats.spearmanr([1, 1, 2], [1, 2, 2])[0]
  )


def test_pearson_constant_is_nan():
  assert math.isnan(metrics.pearson([1, 1, 1], [1, 2, 3]))


def test_regression_outputs_of_shape_n_by_1():
  assert metrics.pearson(np.array([[1.0], [2.0], [3.0]]), [2, 4, 6]) == pytest.approx(1.0)


def test_length_mismatch_and_empty_raise():
  with pytest.raises(ValueError, match="differ in length"):
    metrics.accuracy([1, 0], [1])
  with pytest.raises(ValueError, match="zero examples"):
    metrics.accuracy([], [])


def test_compute_metrics_by_name():
  assert metrics.compute_metrics(["f1", "accuracy"], [1, 0, 1, 1], [1, 0, 0, 1]) == {
    "f1": pytest.approx(0.8),
    "accuracy": 0.75,
  }
  with pytest.raises(ValueError, match="unknown metric"):
    metrics.compute_metrics(["bleu"], [1], [1])


def test_predictions_from_logits():
  np.testing.assert_array_equal(metrics.predictions_from_logits([[0.1, 0.9], [2.0, -1.0]]), [1, 0])
  np.testing.assert_array_equal(metrics.predictions_from_logits([[0.5], [1.5]]), [0.5, 1.5])


# --------------------------------------------------------------------------- SQuAD


@pytest.mark.parametrize(
  "text, expected",
  [
    ("The Eiffel Tower!", "eiffel tower"),
    ("  an   apple, a pear  ", "apple pear"),
    ("Theatre", "theatre"),  # 'the' only as a whole word
    ("the-end", "theend"),  # punctuation goes before articles
    ("A", ""),
  ],
)
def test_normalize_answer(text, expected):
  assert metrics.normalize_answer(text) == expected


def test_squad_exact_match_and_f1_hand_computed():
  gold = ["the Denver Broncos", "Broncos"]
  assert metrics.squad_exact_match("Denver Broncos!", gold) == 1.0
  assert metrics.squad_exact_match("Denver", gold) == 0.0
  # "Denver" vs "denver broncos": P=1, R=1/2 -> F1=2/3; vs "broncos": 0 -> max 2/3
  assert metrics.squad_f1("Denver", gold) == pytest.approx(2 / 3)
  # "the broncos team" -> tokens [broncos, team]; vs [broncos]: P=1/2, R=1 -> 2/3;
  # vs [denver, broncos]: P=1/2, R=1/2 -> 1/2; max 2/3
  assert metrics.squad_f1("the Broncos team", gold) == pytest.approx(2 / 3)
  assert metrics.squad_f1("nothing", gold) == 0.0


def test_squad_scores_counts_missing_predictions_as_wrong():
  gold = {"q1": ["Paris"], "q2": ["blue", "light blue"], "q3": ["42"]}
  predictions = {"q1": "paris", "q2": "light"}
  scores = metrics.squad_scores(predictions, gold)
  # EM: 1 + 0 + 0 over 3; F1: 1 + max(0, 2/3) + 0 over 3
  assert scores["exact_match"] == pytest.approx(100 / 3)
  assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)


def test_best_spans_respects_constraints():
  #            0(CLS) 1(q) 2(SEP) 3    4    5    6    7(SEP)
  start = np.array([9.0, 9.0, 0.0, 1.0, 5.0, 0.0, 0.0, 0.0])
  end = np.array([9.0, 0.0, 0.0, 4.0, 0.0, 2.0, 3.0, 9.0])
  context = np.array([0, 0, 0, 1, 1, 1, 1, 0], dtype=bool)
  spans = metrics.best_spans(start, end, context, n_best=3, max_answer_length=30)
  # Best valid: start 4 (5.0) + end 6 (3.0) = 8; CLS/question/SEP tokens and end < start
  # (start 4, end 3 would score 9) are excluded.
  assert spans[0] == (4, 6, 8.0)
  assert spans[1] == (4, 5, 7.0)
  assert all(s <= e and context[s] and context[e] for s, e, _ in spans)
  # A maximum length of 2 tokens rules out (4, 6).
  assert metrics.best_spans(start, end, context, max_answer_length=2)[0] == (4, 5, 7.0)
  assert metrics.best_spans(start, end, np.zeros(8, bool)) == []


def test_best_spans_brute_force():
  rng = np.random.default_rng(2)
  for _ in range(20):
    length = 12
    start, end = rng.normal(size=length), rng.normal(size=length)
    context = rng.random(length) < 0.7
    candidates = sorted(
      (
        (start[s] + end[e], s, e)
        for s in range(length)
        for e in range(s, min(length, s + 4))
        if context[s] and context[e]
      ),
      reverse=True,
    )
    spans = metrics.best_spans(start, end, context, n_best=5, max_answer_length=4)
    assert [(s, e) for s, e, _ in spans] == [(s, e) for _, s, e in candidates[:5]]
