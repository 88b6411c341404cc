"""Step overhead of ``seven_mask(adamw)`` against plain ``adamw`` on BERT shapes.

The model is ``transformers.FlaxBertForSequenceClassification`` with random
weights (no download). Prunable weights are those the official SEVEN code
prunes: attention query/key/value/output kernels, both FFN kernels, and the
pooler kernel; embeddings, biases, LayerNorms and the classifier are not.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax
import jax.numpy as jnp
import numpy as np
import optax

import seven_jax
from benchmarks.common import time_calls, tree_bytes
from seven_jax.prunable import path_str

CONFIGS = {
    # name: (layers, hidden, heads, intermediate, vocab, batch, seq)
    "tiny-bert": (2, 32, 2, 64, 128, 4, 16),
    "minilm": (6, 384, 12, 1536, 30522, 32, 64),
    "bert-base": (12, 768, 12, 3072, 30522, 32, 64),
}

_PRUNABLE_SUFFIXES = (
    "attention/self/query/kernel", "attention/self/key/kernel",
    "attention/self/value/kernel", "attention/output/dense/kernel",
    "intermediate/dense/kernel", "output/dense/kernel", "pooler/dense/kernel",
)


def bert_prunable(params):
  """Bool pytree: the kernels the official code prunes (see module doc)."""
  def is_prunable(path, _):
    p = path_str(path)
    return bool(p.startswith("bert/") and p.endswith(_PRUNABLE_SUFFIXES))
  return jax.tree_util.tree_map_with_path(is_prunable, params)


def make_model(name: str):
  from transformers import BertConfig, FlaxBertForSequenceClassification
  layers, hidden, heads, inter, vocab, batch, seq = CONFIGS[name]
  config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, intermediate_size=inter,
                      max_position_embeddings=max(512, seq), num_labels=2)
  model = FlaxBertForSequenceClassification(config, seed=0, input_shape=(1, seq))
  rng = np.random.default_rng(0)
  batch_data = {
      "input_ids": jnp.asarray(rng.integers(0, vocab, (batch, seq)), jnp.int32),
      "attention_mask": jnp.ones((batch, seq), jnp.int32),
      "labels": jnp.asarray(rng.integers(0, 2, (batch,)), jnp.int32),
  }
  return model, batch_data


def _make_step(model, tx):
  def loss_fn(params, batch):
    logits = model(batch["input_ids"], attention_mask=batch["attention_mask"],
                   params=params, train=False).logits
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, batch["labels"]).mean()

  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1))


def _time_optimizer(model, batch, tx, *, skip_steps, repeats, warmup):
  """Median step time after ``skip_steps`` untimed steps (to leave a window)."""
  params = jax.tree.map(jnp.copy, model.params)
  opt_state = tx.init(params)
  step = _make_step(model, tx)
  state = {"params": params, "opt": opt_state}

  def one():
    state["params"], state["opt"], loss = step(state["params"], state["opt"], batch)
    return loss

  for _ in range(skip_steps):
    jax.block_until_ready(one())
  return time_calls(one, repeats=repeats, warmup=warmup), state


def step_overhead(name: str, *, repeats: int, warmup: int = 2) -> dict:
  """Plain adamw vs seven_mask(adamw) inside and after the pruning window."""
  model, batch = make_model(name)
  prunable = bert_prunable(model.params)
  num_prunable = int(sum(int(np.prod(p.shape)) for p, s in zip(
      jax.tree.leaves(model.params), jax.tree.leaves(prunable)) if s))
  num_params = int(sum(int(np.prod(p.shape)) for p in jax.tree.leaves(model.params)))

  plain = optax.adamw(2e-5)
  # Inside the window: the window outlasts the benchmark, so every timed step
  # updates the statistics and recomputes the global threshold and masks.
  inside = seven_jax.seven_mask(optax.adamw(2e-5), sparsity=0.6, start_step=0,
                                pruning_steps=10**6, prunable=prunable)
  # After the window: pruning_steps=2 means one mask update at step 0; the
  # timed steps only enforce the frozen masks.
  after = seven_jax.seven_mask(optax.adamw(2e-5), sparsity=0.6, start_step=0,
                               pruning_steps=2, prunable=prunable)

  plain_t, plain_state = _time_optimizer(model, batch, plain, skip_steps=0,
                                         repeats=repeats, warmup=warmup)
  inside_t, seven_state = _time_optimizer(model, batch, inside, skip_steps=0,
                                          repeats=repeats, warmup=warmup)
  after_t, _ = _time_optimizer(model, batch, after, skip_steps=2,
                               repeats=repeats, warmup=warmup)
  memory = optimizer_state_bytes(plain_state["opt"], seven_state["opt"],
                                 prunable, model.params)
  base = plain_t["median_ms"]
  return {
      "model": name,
      "batch_seq": list(CONFIGS[name][5:]),
      "params": num_params,
      "prunable": num_prunable,
      "plain_adamw": plain_t,
      "seven_in_window": inside_t,
      "seven_after_window": after_t,
      "ratio_in_window": inside_t["median_ms"] / base,
      "ratio_after_window": after_t["median_ms"] / base,
      "optimizer_state": memory,
  }


def optimizer_state_bytes(plain_state, seven_state, prunable, params) -> dict:
  """Bytes of optimizer state beyond plain adamw, per prunable weight.

  Counted from the state pytrees themselves, so anything the transformation
  stores (including masks of non-prunable leaves) shows up.
  """
  num_prunable = sum(int(np.prod(p.shape)) for p, s in zip(
      jax.tree.leaves(params), jax.tree.leaves(prunable)) if s)
  st = seven_jax.find_state(seven_state)
  flat_spec = jax.tree.leaves(prunable)
  masks = jax.tree.leaves(st.masks)
  parts = {
      "grad_ema_m": tree_bytes(st.grad_ema),
      "sq_grad_ema_v": tree_bytes(st.sq_grad_ema),
      "scores_S": tree_bytes(st.scores),
      "masks_prunable": int(sum(m.nbytes for m, s in zip(masks, flat_spec) if s)),
      "masks_non_prunable": int(sum(m.nbytes for m, s in zip(masks, flat_spec) if not s)),
      "count": tree_bytes(st.count),
  }
  extra = tree_bytes(seven_state) - tree_bytes(plain_state)
  return {
      "extra_bytes": int(extra),
      "extra_bytes_per_prunable_weight": extra / num_prunable,
      "per_prunable_weight": {k: v / num_prunable for k, v in parts.items()},
  }
