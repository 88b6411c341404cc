"""Step overhead of ``seven_mask(adamw)`` against plain ``adamw`` on BERT shapes.

The model is ``transformers.FlaxBertForSequenceClassification`` with random
weights (no download). Prunable weights are those the official SEVEN code
prunes: attention query/key/value/output kernels, both FFN kernels, and the
pooler kernel; embeddings, biases, LayerNorms and the classifier are not.
"""

from __future__ import annotations

import os
import resource
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax
import jax.numpy as jnp
import numpy as np
import optax

import seven_jax
from benchmarks.common import entry_while_body, hlo_bytes, tree_bytes
from seven_jax.prunable import path_str

CONFIGS = {
  # name: (layers, hidden, heads, intermediate, vocab, batch, seq)
  "tiny-bert": (2, 32, 2, 64, 128, 4, 16),
  "minilm": (6, 384, 12, 1536, 30522, 32, 64),
  "bert-base": (12, 768, 12, 3072, 30522, 32, 64),
}

_PRUNABLE_SUFFIXES = (
  "attention/self/query/kernel",
  "attention/self/key/kernel",
  "attention/self/value/kernel",
  "attention/output/dense/kernel",
  "intermediate/dense/kernel",
  "output/dense/kernel",
  "pooler/dense/kernel",
)


def bert_prunable(params):
  """Bool pytree: the kernels the official code prunes (see module doc)."""

  def is_prunable(path, _):
    p = path_str(path)
    return bool(p.startswith("bert/") and p.endswith(_PRUNABLE_SUFFIXES))

  return jax.tree_util.tree_map_with_path(is_prunable, params)


def num_prunable(params, prunable) -> int:
  """Number of weights in the leaves ``prunable`` marks (a bool pytree)."""
  flat = zip(jax.tree.leaves(params), jax.tree.leaves(prunable), strict=True)
  return int(sum(int(np.prod(p.shape)) for p, s in flat if s))


def make_model(name: str, dtype=None):
  """Random-weight model and one batch; ``dtype`` is the compute dtype
  (e.g. ``jnp.bfloat16``; parameters stay float32)."""
  from transformers import BertConfig, FlaxBertForSequenceClassification

  layers, hidden, heads, inter, vocab, batch, seq = CONFIGS[name]
  config = BertConfig(
    vocab_size=vocab,
    hidden_size=hidden,
    num_hidden_layers=layers,
    num_attention_heads=heads,
    intermediate_size=inter,
    max_position_embeddings=max(512, seq),
    num_labels=2,
  )
  extra = {} if dtype is None else {"dtype": dtype}
  model = FlaxBertForSequenceClassification(config, seed=0, input_shape=(1, seq), **extra)
  rng = np.random.default_rng(0)
  batch_data = {
    "input_ids": jnp.asarray(rng.integers(0, vocab, (batch, seq)), jnp.int32),
    "attention_mask": jnp.ones((batch, seq), jnp.int32),
    "labels": jnp.asarray(rng.integers(0, 2, (batch,)), jnp.int32),
  }
  return model, batch_data


def loss_fn_of(model):
  """``(params, batch) -> mean cross-entropy`` of the classifier (no dropout)."""

  def loss_fn(params, batch):
    logits = model(
      batch["input_ids"], attention_mask=batch["attention_mask"], params=params, train=False
    ).logits
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()

  return loss_fn


def batch_gradient(model, batch):
  """The gradient of the classifier's loss on ``batch`` at the model's params:
  what the update-alone timings feed the optimizer. (A constant gradient makes
  every weight's SEVEN score proportional to ``|W|`` and, in bfloat16, ties
  thousands of scores, which sends the threshold down its slow general path
  and times a case training never sees.)"""
  return jax.jit(jax.grad(loss_fn_of(model)))(model.params, batch)


def _make_step(model, tx):
  loss_fn = loss_fn_of(model)

  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1))


def _fast_forward(state, step: int):
  """The state with its step counter set to ``step`` (statistics still fresh).

  Timing the middle of a pruning window by running there would cost minutes
  of BERT-base steps; only the counter decides the keep ratio, and so which
  path the threshold takes, so setting it is enough for timing.
  """
  if not step:
    return state
  return state._replace(count=jnp.asarray(step, jnp.int32))


def _frozen(state):
  """After the window: ``fixed_mask`` and the frozen state to continue with."""
  return (seven_jax.fixed_mask(_INNER(), seven_jax.masks(state)), seven_jax.freeze(state))


class _Runner:
  """One optimizer's training loop: params and state live here, donated."""

  def __init__(self, model, batch, tx, skip_steps, start_at=0, freeze=False):
    self.params = jax.tree.map(jnp.copy, model.params)
    self.opt_state = _fast_forward(tx.init(self.params), start_at)
    self.batch = batch
    self.step = _make_step(model, tx)
    for _ in range(skip_steps):  # e.g. leave the pruning window first
      jax.block_until_ready(self())
    if freeze:
      tx, self.opt_state = _frozen(self.opt_state)
      self.step = _make_step(model, tx)

  def __call__(self):
    self.params, self.opt_state, loss = self.step(self.params, self.opt_state, self.batch)
    return loss


class _UpdateRunner:
  """``tx.update`` alone on fixed gradients (state carried, params fixed).

  The gradient is donated, as the backward pass's output is in a training
  step (the update may reuse its buffer): every call gets a fresh copy,
  made by :meth:`prepare` outside the timed call.
  """

  def __init__(self, tx, params, grads, skip_steps, start_at=0, freeze=False):
    self.params, self.grads = params, grads
    self.state = _fast_forward(tx.init(params), start_at)
    self.update = jax.jit(lambda g, s, p: tx.update(g, s, p), donate_argnums=(0, 1))
    self.next_grads = None
    for _ in range(skip_steps):
      jax.block_until_ready(self())
    if freeze:
      tx, self.state = _frozen(self.state)
      self.update = jax.jit(lambda g, s, p: tx.update(g, s, p), donate_argnums=(0, 1))
    self.tx = tx

  def prepare(self):
    self.next_grads = jax.tree.map(jnp.copy, self.grads)
    return self.next_grads

  def __call__(self):
    grads = self.next_grads if self.next_grads is not None else self.prepare()
    self.next_grads = None
    updates, self.state = self.update(grads, self.state, self.params)
    return updates


def _interleaved(runners: dict, *, repeats: int, warmup: int, periods: dict | None = None) -> dict:
  """Median (and mean) step time of each runner, timed round-robin.

  The machine is shared (other jobs come and go), so the configurations are
  timed in turn, step by step, rather than one after the other: a burst of
  load then hits all of them alike and the ratios stay meaningful.
  ``periods``: runner name -> mask period ``P``; that runner is timed for a
  multiple of ``P`` steps (``repeats`` rounded up, so its mean covers whole
  periods: one mask update per ``P`` steps); the others stop at ``repeats``.
  """
  periods = periods or {}
  counts = {name: -(-repeats // periods.get(name, 1)) * periods.get(name, 1) for name in runners}
  for run in runners.values():
    for _ in range(warmup):
      jax.block_until_ready(run())
  times = {name: [] for name in runners}
  faults = {name: [] for name in runners}
  for i in range(max(counts.values())):
    for name, run in runners.items():
      if i >= counts[name]:
        continue
      if hasattr(run, "prepare"):  # inputs the call donates, made untimed
        jax.block_until_ready(run.prepare())
      f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      t0 = time.perf_counter()
      jax.block_until_ready(run())
      times[name].append((time.perf_counter() - t0) * 1e3)
      faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
  return {
    name: {
      "median_ms": statistics.median(v),
      "mean_ms": statistics.fmean(v),
      "min_ms": min(v),
      "max_ms": max(v),
      "repeats": len(v),
      # Page faults of the process during the call (XLA:CPU maps a fresh
      # temporary buffer per call, so every temporary page touched faults).
      "minor_faults": statistics.median(faults[name]),
    }
    for name, v in times.items()
  }


_WINDOW_STEP = 40
EVERY = 10
_INNER = lambda: optax.adamw(2e-5)


def step_overhead(
  name: str, *, repeats: int, warmup: int = 2, dtype=None, update_only: bool = True
) -> dict:
  """Plain adamw vs seven_mask(adamw) inside and after the pruning window.

  ``dtype``: compute dtype of the model (``jnp.bfloat16`` on accelerators).
  ``update_only=False`` skips the update-alone timings, the bytes moved and
  the bf16-state memory (the accelerator script's short mode).
  """
  model, batch = make_model(name, dtype)
  prunable = bert_prunable(model.params)
  n_prunable = num_prunable(model.params, prunable)
  num_params = int(sum(int(np.prod(p.shape)) for p in jax.tree.leaves(model.params)))

  plain = optax.adamw(2e-5)
  # Inside the window: every timed step updates the statistics and computes a
  # new global threshold and masks. The counter starts at step 40 of a
  # 200-step window, where the keep ratio falls from 0.70 to about 0.6 over
  # the timed steps: the typical case of the threshold (not the first few
  # steps, which drop fewer than 1024 weights and take a cheaper one-pass path).
  inside = seven_jax.seven_mask(
    optax.adamw(2e-5), sparsity=0.6, start_step=0, pruning_steps=200, prunable=prunable
  )
  # After the window: pruning_steps=2 means one mask update at step 0; the
  # timed steps only enforce the frozen masks.
  after = seven_jax.seven_mask(
    optax.adamw(2e-5), sparsity=0.6, start_step=0, pruning_steps=2, prunable=prunable
  )
  inside_bf16 = seven_jax.seven_mask(
    optax.adamw(2e-5),
    sparsity=0.6,
    start_step=0,
    pruning_steps=200,
    prunable=prunable,
    stats_dtype=jnp.bfloat16,
  )
  # In the window, a new mask every EVERY steps (statistics every step): its
  # figure is the mean over whole periods (see _interleaved).
  every = seven_jax.seven_mask(
    optax.adamw(2e-5),
    sparsity=0.6,
    start_step=0,
    pruning_steps=200,
    prunable=prunable,
    update_every=EVERY,
  )
  runners = {
    "plain_adamw": _Runner(model, batch, plain, 0),
    "seven_in_window": _Runner(model, batch, inside, 0, start_at=_WINDOW_STEP),
    "seven_every10": _Runner(model, batch, every, 0, start_at=_WINDOW_STEP),
    "seven_in_window_bf16": _Runner(model, batch, inside_bf16, 0, start_at=_WINDOW_STEP),
    "seven_after_window": _Runner(model, batch, after, 2),
    # After the window, frozen: fixed_mask on seven_jax.freeze(state).
    "seven_frozen": _Runner(model, batch, after, 2, freeze=True),
  }
  periods = {"seven_every10": EVERY}
  timing = _interleaved(runners, repeats=repeats, warmup=warmup, periods=periods)
  memory = optimizer_state_bytes(
    runners["plain_adamw"].opt_state, runners["seven_in_window"].opt_state, prunable, model.params
  )
  plain_state = runners["plain_adamw"].opt_state
  del runners  # BERT-base: four models' states at once plus the next four OOM in 24 GiB
  base = timing["plain_adamw"]["median_ms"]
  if not update_only:
    return {
      "model": name,
      "batch_seq": list(CONFIGS[name][5:]),
      "params": num_params,
      "prunable": n_prunable,
      "dtype": str(np.dtype(dtype)) if dtype is not None else "float32",
      **timing,
      "ratio_in_window": timing["seven_in_window"]["median_ms"] / base,
      "ratio_in_window_bf16": timing["seven_in_window_bf16"]["median_ms"] / base,
      "ratio_every10": _period_ratio(timing),
      "ratio_after_window": timing["seven_after_window"]["median_ms"] / base,
      "ratio_frozen": timing["seven_frozen"]["median_ms"] / base,
      "optimizer_state": memory,
      "load_avg": list(os.getloadavg()),
    }
  # The optimizer update alone (one batch's gradient, fed on every call): its
  # difference is the overhead in ms, far less noisy than a difference of
  # whole steps.
  grads = batch_gradient(model, batch)
  updates = {}
  for key, tx, skip, start in [
    ("plain_adamw", plain, 0, 0),
    ("seven_in_window", inside, 0, _WINDOW_STEP),
    ("seven_every10", every, 0, _WINDOW_STEP),
    ("seven_in_window_bf16", inside_bf16, 0, _WINDOW_STEP),
    ("seven_after_window", after, 2, 0),
    ("seven_frozen", after, 2, 0),
  ]:
    updates[key] = _UpdateRunner(
      tx, model.params, grads, skip, start_at=start, freeze=key == "seven_frozen"
    )
  update_timing = _interleaved(updates, repeats=repeats, warmup=warmup, periods=periods)
  moved = {
    key: update_bytes(r.tx, r.grads, r.state, r.params, n_prunable) for key, r in updates.items()
  }
  del updates
  bf16_state = seven_jax.seven_mask(
    optax.adamw(2e-5), prunable=prunable, stats_dtype=jnp.bfloat16
  ).init(model.params)
  memory_bf16 = optimizer_state_bytes(plain_state, bf16_state, prunable, model.params)
  return {
    "model": name,
    "batch_seq": list(CONFIGS[name][5:]),
    "params": num_params,
    "prunable": n_prunable,
    **timing,
    "ratio_in_window": timing["seven_in_window"]["median_ms"] / base,
    "ratio_after_window": timing["seven_after_window"]["median_ms"] / base,
    "ratio_frozen": timing["seven_frozen"]["median_ms"] / base,
    "ratio_in_window_bf16": timing["seven_in_window_bf16"]["median_ms"] / base,
    "ratio_every10": _period_ratio(timing),
    "update_bytes": moved,
    "load_avg": list(os.getloadavg()),
    "update_only": update_timing,
    "update_overhead_ms_in_window": (
      update_timing["seven_in_window"]["median_ms"] - update_timing["plain_adamw"]["median_ms"]
    ),
    "update_overhead_ms_after_window": (
      update_timing["seven_after_window"]["median_ms"] - update_timing["plain_adamw"]["median_ms"]
    ),
    "update_overhead_ms_frozen": (
      update_timing["seven_frozen"]["median_ms"] - update_timing["plain_adamw"]["median_ms"]
    ),
    "optimizer_state": memory,
    "optimizer_state_bf16": memory_bf16,
  }


def _period_ratio(timing) -> float:
  """Mean step over whole mask periods / mean adamw step (means: one step in
  ``EVERY`` carries the threshold, so a median would miss it)."""
  return timing["seven_every10"]["mean_ms"] / timing["plain_adamw"]["mean_ms"]


def update_bytes(tx, grads, state, params, num_prunable) -> dict:
  """Bytes the compiled optimizer step reads and writes (XLA's HLO).

  Compiled as a training step compiles it: ``params, state -> apply_updates(
  params, update), new state`` with both donated, and the gradient too (in
  a step it is the backward pass's output, a buffer the update may reuse),
  so that every output can reuse its input's buffer (jitting ``tx.update``
  alone with only the state donated lets XLA alias the *updates* to state
  buffers of the same shape, which adds copies no training step has).

  * ``bytes_accessed``: ``compiled.cost_analysis()``, XLA's estimate over the
    whole program (every branch of every conditional and loop body once).
  * ``path_bytes``: the top-level ops of the entry computation alone
    (:func:`benchmarks.common.hlo_bytes`): what a step *outside* the pruning
    window moves (the window's work is in a while loop of 0 trips then).
  * ``window_body_bytes``: the top-level ops of that loop's body (nested
    branches of the threshold not counted).

  The arithmetic limit of the in-window update is about 32 B per prunable
  weight (read W, g, m, v, S, mask; write m, v, S, mask in float32).
  """

  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  compiled = jax.jit(step, donate_argnums=(0, 1, 2)).lower(params, state, grads).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  total = float((cost or {}).get("bytes accessed", float("nan")))
  hlo = compiled.as_text()
  path = hlo_bytes(hlo)
  body = hlo_bytes(hlo, entry_while_body(hlo)) if entry_while_body(hlo) else 0
  return {
    "bytes_accessed": total,
    "bytes_per_prunable_weight": total / num_prunable,
    "path_bytes_per_prunable_weight": path / num_prunable,
    "window_body_bytes_per_prunable_weight": body / num_prunable,
  }


def optimizer_state_bytes(plain_state, seven_state, prunable, params) -> dict:
  """Bytes of optimizer state beyond plain adamw, per prunable weight.

  Counted from the state pytrees themselves, so anything the transformation
  stores (including masks of non-prunable leaves) shows up.
  """
  n_prunable = num_prunable(params, prunable)
  st = seven_jax.find_state(seven_state)
  treedef = jax.tree.structure(params)
  masks = treedef.flatten_up_to(st.masks)  # AllKept (no bytes) where not prunable
  parts = {
    "grad_ema_m": tree_bytes(st.grad_ema),
    "sq_grad_ema_v": tree_bytes(st.sq_grad_ema),
    "scores_S": tree_bytes(st.scores),
    "masks_prunable": int(
      sum(tree_bytes(m) for m, s in zip(masks, jax.tree.leaves(prunable)) if s)
    ),
    "masks_non_prunable": int(
      sum(tree_bytes(m) for m, s in zip(masks, jax.tree.leaves(prunable)) if not s)
    ),
    "count": tree_bytes(st.count),
  }
  extra = tree_bytes(seven_state) - tree_bytes(plain_state)
  return {
    "extra_bytes": int(extra),
    "extra_bytes_per_prunable_weight": extra / n_prunable,
    "per_prunable_weight": {k: v / n_prunable for k, v in parts.items()},
  }


def synthetic_update_bytes(layers: int = 6, hidden: int = 384, inter: int = 1536) -> dict:
  """:func:`update_bytes` (no timing) on MiniLM-shaped leaves without a model.

  ``layers`` x (four ``hidden x hidden`` kernels, ``hidden x inter``,
  ``inter x hidden``), each with a bias (not prunable): 10.6M prunable
  weights at the defaults. Rows: adamw, seven_mask(adamw) with float32 and
  bfloat16 statistics (one program for inside and after the window), and
  ``fixed_mask`` after ``freeze``.
  """
  rng = np.random.default_rng(0)
  params = {}
  for layer in range(layers):
    for name, shape in [
      ("q", (hidden, hidden)),
      ("k", (hidden, hidden)),
      ("v", (hidden, hidden)),
      ("o", (hidden, hidden)),
      ("up", (hidden, inter)),
      ("down", (inter, hidden)),
    ]:
      params[f"l{layer}_{name}"] = jnp.asarray(0.02 * rng.normal(size=shape), jnp.float32)
      params[f"l{layer}_{name}_bias"] = jnp.zeros(shape[1], jnp.float32)
  prunable = {k: not k.endswith("_bias") for k in params}
  n = int(sum(int(np.prod(p.shape)) for k, p in params.items() if prunable[k]))
  grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)
  out = {"prunable": n, "adamw": update_bytes(_INNER(), grads, _INNER().init(params), params, n)}
  for dtype in ("float32", "bfloat16"):
    tx = seven_jax.seven_mask(
      _INNER(), sparsity=0.6, start_step=0, pruning_steps=200, prunable=prunable, stats_dtype=dtype
    )
    state = _fast_forward(tx.init(params), _WINDOW_STEP)
    out[f"seven_{dtype}"] = update_bytes(tx, grads, state, params, n)
    if dtype == "float32":
      fixed, frozen = _frozen(state)
      out["frozen"] = update_bytes(fixed, grads, frozen, params, n)
  return out


if __name__ == "__main__":
  import json
  import sys

  print(json.dumps(synthetic_update_bytes(int(sys.argv[1]) if len(sys.argv) > 1 else 6), indent=1))
