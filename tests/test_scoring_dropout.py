"""Pre-pruning scores see dropout as each method's paper has it (experiments.scoring)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import seven_jax
from experiments import scoring
from seven_jax.models import bert
from tests._helpers import tiny_bert_config


def _model(dropout=0.3, seed=0):
  return bert.BertForSequenceClassification(tiny_bert_config(dropout), rngs=nnx.Rngs(seed))


def _loss_fn(model, batch):
  return bert.sequence_classification_loss(model(batch["input_ids"]), batch["labels"])


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, 64, (8, 8)).astype(np.int32)
  return {"input_ids": ids, "labels": (ids[:, 0] > 32).astype(np.int32)}


def _grad_vector(loss, params, batch):
  g = jax.jit(jax.grad(loss))(params, batch)
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)])


def test_policy_per_method():
  assert scoring.dropout_mode("seven_pre") == "train"
  assert scoring.dropout_mode("snip") == "train"
  assert scoring.dropout_mode("grasp") == "train"
  assert scoring.dropout_mode("synflow") == "eval"
  assert scoring.dropout_mode("magnitude_pre") is None
  assert scoring.dropout_mode("random") is None
  assert scoring.dropout_mode("movement") == "train"  # any dynamic rule run before fine-tuning


def test_train_mode_fresh_key_per_batch_changes_the_gradient():
  model = _model()
  loss, params = scoring.scoring_loss(model, _loss_fn, "train")
  same = _batch(0)
  keyed = list(scoring.keyed_batches([same, same, same], seed=7))
  g0, g1 = (_grad_vector(loss, params, b) for b in keyed[:2])
  # The same batch under two dropout keys: two different gradients.
  assert np.max(np.abs(g0 - g1)) > 1e-4
  # The same key again: bit-identical (the key, not hidden state, decides).
  np.testing.assert_array_equal(g0, _grad_vector(loss, params, keyed[0]))
  # Keys are fold_in(key(seed), i): reproducible and distinct per batch.
  again = list(scoring.keyed_batches([same, same], seed=7))
  np.testing.assert_array_equal(again[1][scoring.DROPOUT_KEY], keyed[1][scoring.DROPOUT_KEY])
  assert not np.array_equal(keyed[0][scoring.DROPOUT_KEY], keyed[1][scoring.DROPOUT_KEY])


def test_train_mode_is_not_the_fixed_rng_loss():
  # The old scoring loss: one nnx.merge of the same RNG state for every batch,
  # so every batch saw one dropout mask. Fresh keys must not reproduce it.
  model = _model()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  frozen = lambda p, b: _loss_fn(nnx.merge(graphdef, p, rest, copy=True), b)
  batch = {k: jnp.asarray(v) for k, v in _batch(1).items()}
  frozen_losses = {float(frozen(params, batch)) for _ in range(2)}
  assert len(frozen_losses) == 1  # the defect being fixed: identical every call
  loss, _ = scoring.scoring_loss(model, _loss_fn, "train")
  losses = {float(loss(params, b)) for b in scoring.keyed_batches([batch] * 3, seed=0)}
  assert len(losses) == 3


def test_eval_mode_is_the_deterministic_model():
  model = _model()
  loss, params = scoring.scoring_loss(model, _loss_fn, "eval")
  batch = _batch(2)
  keyed = list(scoring.keyed_batches([batch, batch], seed=3))
  # Keys are ignored, dropout is off: equal to the model without dropout.
  a, b = (float(loss(params, x)) for x in keyed)
  assert a == b
  reference = _model(dropout=0.0)  # same seed: same initial weights, no dropout
  expected = float(_loss_fn(reference, {k: jnp.asarray(v) for k, v in batch.items()}))
  np.testing.assert_allclose(a, expected, rtol=1e-6)
  # The caller's model is left in training mode.
  assert not model.bert.embeddings.dropout.deterministic


def test_train_mode_needs_the_key():
  loss, params = scoring.scoring_loss(_model(), _loss_fn, "train")
  with pytest.raises(ValueError, match="_dropout_key"):
    loss(params, _batch(0))
  with pytest.raises(ValueError, match="mode must be"):
    scoring.scoring_loss(_model(), _loss_fn, "training")


@pytest.mark.slow  # three pre-pruning runs of a BERT: ~20 s alone
def test_snip_scores_average_over_dropout_masks():
  # SNIP over K batches of the *same* data with fresh keys differs from the
  # single-mask score, and is reproducible from the seed.
  model = _model()
  loss, params = scoring.scoring_loss(model, _loss_fn, "train")
  prunable = bert.prunable(params)
  batch = _batch(3)

  def run(seed):
    return seven_jax.prune_before_finetuning(
      loss,
      params,
      scoring.keyed_batches([batch] * 4, seed=seed),
      sparsity=0.5,
      method="snip",
      steps=4,
      prunable=prunable,
    )

  leaves = lambda r: np.concatenate([np.ravel(m) for m in jax.tree.leaves(r)])
  a, b, c = run(0), run(0), run(1)
  np.testing.assert_array_equal(leaves(a), leaves(b))
  assert not np.array_equal(leaves(a), leaves(c))
