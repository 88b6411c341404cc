"""Test helpers shared by several test files (import them, do not copy them).

``from tests._helpers import SHAPES, PRUNABLE, random_params, grad_sequence``

* :data:`SHAPES` / :data:`PRUNABLE`: the small mixed pytree of the transform
  tests (two matrices, a vector that is never pruned, a 3-D leaf).
* :func:`random_params`, :func:`grad_sequence`: its weights and a fixed
  sequence of noisy gradients with a per-weight signal (so that SEVEN's
  noise correction matters).
* :func:`mlp_params`, :func:`mlp_apply`, :func:`mlp_loss`,
  :func:`classification_batches`: a two-layer tanh classifier and its data.
* :func:`max_abs_diff`: the parity measure of the model tests;
  :func:`assert_bf16_close`: bfloat16 compute against float32.
* :func:`tiny_bert`: the project's NNX BERT (random init, no dropout) split
  for functional use, with its loss and the SEVEN prunable preset.

Every random draw comes from ``np.random.default_rng(<fixed int>)``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

SHAPES = {"a": (12, 10), "b": (7, 9), "c": (5,), "d": (3, 4, 5)}
PRUNABLE = {"a": True, "b": True, "c": False, "d": True}


def random_params(seed: int = 0, shapes: dict = SHAPES, dtype=jnp.float32) -> dict:
  """Standard-normal leaves of the given shapes (float64 draws cast to ``dtype``)."""
  rng = np.random.default_rng(seed)
  return {k: jnp.asarray(rng.standard_normal(s), dtype) for k, s in shapes.items()}


def grad_sequence(steps: int, seed: int = 1, shapes: dict = SHAPES) -> list[dict]:
  """``steps`` gradients ``signal + 2 * N(0, 1) * U(0, 1)``, float32 numpy leaves.

  The per-weight signal is drawn once; the heavy, weight-dependent noise
  is what SEVEN's correction is for.
  """
  rng = np.random.default_rng(seed)
  signal = {k: rng.standard_normal(s) for k, s in shapes.items()}
  return [
    {
      k: (signal[k] + 2.0 * rng.standard_normal(s) * rng.random(s)).astype(np.float32)
      for k, s in shapes.items()
    }
    for _ in range(steps)
  ]


def max_abs_diff(a, b) -> float:
  """max |a - b| in float32 (the parity measure against transformers)."""
  return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def assert_bf16_close(h16, h32, out16, out32):
  """bfloat16 compute against float32 for the same weights.

  The hidden states (LayerNorm'd, of order 1) must differ (so bf16 compute
  really happened) by less than 0.1; the outputs by less than 5% of their
  own scale (random heads give logits of order 0.01, so an absolute bound
  would hold whatever the model did).
  """
  d_h = max_abs_diff(h16, h32)
  assert 0 < d_h < 0.1, d_h
  scale = float(np.max(np.abs(np.asarray(out32, np.float32))))
  assert scale > 0 and max_abs_diff(out16, out32) < 0.05 * scale, (
    max_abs_diff(out16, out32),
    scale,
  )


# ------------------------------------------------------------- a tiny MLP


def mlp_params(
  d_in: int, d_h: int, d_out: int, *, seed: int = 0, scale: float = 0.5, bias_scale: float = 0.0
) -> dict:
  """``{"l1": {kernel, bias}, "l2": {kernel, bias}}``; the output bias is zero."""
  rng = np.random.default_rng(seed)
  return {
    "l1": {
      "kernel": jnp.asarray(rng.standard_normal((d_in, d_h)) * scale, jnp.float32),
      "bias": jnp.asarray(rng.standard_normal(d_h) * bias_scale, jnp.float32),
    },
    "l2": {
      "kernel": jnp.asarray(rng.standard_normal((d_h, d_out)) * scale, jnp.float32),
      "bias": jnp.zeros(d_out, jnp.float32),
    },
  }


def mlp_apply(p, x):
  return jnp.tanh(x @ p["l1"]["kernel"] + p["l1"]["bias"]) @ p["l2"]["kernel"] + p["l2"]["bias"]


def mlp_loss(p, batch):
  """Mean cross-entropy of :func:`mlp_apply` on ``(x, integer labels)``."""
  x, y = batch
  logits = mlp_apply(p, x)
  return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * jax.nn.one_hot(y, logits.shape[-1]), -1))


def classification_batches(
  n: int, d_in: int, d_out: int, *, seed: int = 1, size: int = 32, teacher: bool = True
) -> list:
  """``n`` batches ``(x, y)``; labels from a random linear teacher (learnable)
  or, with ``teacher=False``, uniform (pure noise)."""
  rng = np.random.default_rng(seed)
  w = rng.standard_normal((d_in, d_out)) if teacher else None
  out = []
  for _ in range(n):
    x = rng.standard_normal((size, d_in)).astype(np.float32)
    y = np.argmax(x @ w, -1) if teacher else rng.integers(0, d_out, size)
    out.append((jnp.asarray(x), jnp.asarray(y, jnp.int32)))
  return out


# ----------------------------------------------------- the project's NNX BERT


@dataclasses.dataclass
class TinyBert:
  """A random 2-layer, 32-wide NNX BERT classifier, split for functional use.

  ``loss(params, batch)`` and ``apply(params, ids)`` take the pure param
  dict ``params``; ``prunable`` is ``bert.prunable`` (encoder and pooler
  kernels, as the official SEVEN code); ``batches`` are ``(ids, labels)``.
  """

  graphdef: object
  params: dict
  rest: object
  prunable: dict
  batches: list
  seq_len: int
  loss: object
  apply: object

  def model(self, params):
    from flax import nnx  # pylint: disable=g-import-not-at-top

    return nnx.merge(self.graphdef, params, self.rest, copy=True)


def tiny_bert_config(dropout: float = 0.0):
  """A 2-layer, 32-wide BERT config (vocabulary 64, 2 labels)."""
  from seven_jax.models import bert  # pylint: disable=g-import-not-at-top

  return bert.BertConfig(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=32,
    num_labels=2,
    hidden_dropout_prob=dropout,
    attention_probs_dropout_prob=dropout,
  )


def tiny_bert(seed: int = 0, n_batches: int = 12, batch_size: int = 8, seq_len: int = 8):
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from seven_jax.models import bert  # pylint: disable=g-import-not-at-top

  cfg = tiny_bert_config()
  model = bert.BertForSequenceClassification(cfg, rngs=nnx.Rngs(seed))
  model.eval()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params = nnx.as_pure(params)
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(n_batches):
    ids = rng.integers(1, cfg.vocab_size, (batch_size, seq_len)).astype(np.int32)
    # A learnable label: whether the first token is in the upper half.
    batches.append((jnp.asarray(ids), jnp.asarray((ids[:, 0] > 32).astype(np.int32))))

  def apply(p, ids):
    return nnx.merge(graphdef, p, rest, copy=True)(ids)

  def loss(p, batch):
    ids, y = batch
    return bert.sequence_classification_loss(apply(p, ids), y)

  return TinyBert(
    graphdef, params, rest, bert.prunable(params), batches, seq_len, loss=loss, apply=apply
  )
