"""Scoring cost of the pre-pruning methods, per mini-batch, against a training step.

For a BERT config of :mod:`benchmarks.bert` (random weights, batch x seq of
the config) and every name in ``seven_jax.methods("pre")`` we time the work
:func:`seven_jax.prune_before_finetuning` repeats for each mini-batch (or
each iteration, for the data-free SynFlow), and divide it by one jitted
training step (forward + backward + ``optax.adamw`` update) on the same batch.

``prune_before_finetuning`` builds fresh ``jax.jit`` closures on every call,
so a whole call always re-traces and re-compiles; timing it would mostly time
XLA. Instead each method's per-batch work is rebuilt here from the library's
own pieces and timed after warm-up (compilation excluded):

* the mini-batch gradient is the library's ``mean_grad`` with
  ``jax.jit(jax.grad(loss_fn))`` on the masked weights (``PreContext.apply_masks``,
  eager, as in the library loop);
* the jitted per-step bodies of ``_run_rule`` (SEVEN_pre and every dynamic
  rule), ``_run_force_like`` (FORCE, Iterative SNIP) and ``_run_synflow`` are
  local functions of those runners, so they are restated here
  (``_rule_score``, ``_force_score``, ``_synflow_score``) on the library's
  ``ScoreRule.update``, schedules and ``synflow_scores``, followed by a
  jitted ``PreContext.select`` (the global top-k) shared between methods;
  :func:`check_against_library` replays S steps with them and compares the
  masks with ``prune_before_finetuning(steps=S)``;
* GraSP's per-batch work is one gradient plus one Hessian-gradient product
  (``jax.jvp`` of ``jax.grad``, the formula of ``grasp_scores``);
* SNIP and GraSP have a one-off part after the batches (mean gradient, score
  formula and global selection), reported as ``fixed``; magnitude and random
  only have a one-off part (``|W|`` or the seeded uniform scores of
  ``_run_magnitude`` / ``_run_random``, then the selection).

Aliases (``seven`` = ``seven_pre``, ``magnitude`` = ``magnitude_pre``: the
same runner and rule) are measured once and reported on both rows.
"""

from __future__ import annotations

import itertools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import seven_jax
from benchmarks import bert
from benchmarks.common import time_calls
from seven_jax import engine, prepruning, schedules
from seven_jax.prunable import resolve_prunable
from seven_jax.scores import DYNAMIC_RULES, ScoreInputs, pre_method, resolve_hparams

SPARSITY = 0.6


def _context(
  method,
  loss_fn,
  params,
  prunable,
  batch,
  *,
  steps,
  apply_fn=None,
  input_shape=None,
  input_dtype=jnp.float32,
):
  """The library's runner context for ``method``, fed the same batch forever."""
  pre = pre_method(method)
  spec = resolve_prunable(prunable, params)
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  idx = [i for i, s in enumerate(treedef.flatten_up_to(spec)) if s]
  total = int(sum(np.prod(np.shape(flat[i][1]), dtype=np.int64) for i in idx))
  hp = resolve_hparams(DYNAMIC_RULES[pre.rule], {}) if pre.rule else {}
  batches = prepruning.BatchFeed(itertools.repeat(batch), 1, method, "benchmark")
  ctx = prepruning.PreContext(
    method=method,
    loss_fn=loss_fn,
    params=params,
    treedef=treedef,
    idx=idx,
    total=total,
    final_keep=1.0 - SPARSITY,
    steps=steps,
    per_step=1,
    batches=batches,
    scope="global",
    nm=None,
    resurrect=pre.resurrect,
    optimizer=None,
    seed=0,
    apply_fn=apply_fn,
    input_shape=input_shape,
    input_dtype=input_dtype,
    hp=hp,
    rule=pre.rule,
    spec=spec,
  )
  return pre, ctx


def _kind(pre) -> str:
  if pre.runner in (
    "rule",
    "magnitude",
    "random",
    "snip",
    "grasp",
    "synflow",
    "force",
    "iter_snip",
  ):
    return pre.runner
  raise ValueError(f"no benchmark recipe for pre-pruning method {pre.name!r}")


# ----------------------------------------------- per-step bodies (restated)
#
# The library jits each runner's step (score and selection) as one function.
# Here the score part and the selection are two jitted calls, and the
# selection is shared by every recipe with the same (resurrect, signed): the
# selection is the same code on the same shapes, and sharing it keeps the
# compile time of the tiny smoke run small. The scores are an output of the
# library's step as well, so the split adds a dispatch, not a pass over memory.


class _Shared:
  """Jitted functions every recipe of one model uses (compiled once)."""

  def __init__(self, grad_fn):
    self.grad_fn = grad_fn
    self._select = {}

  def select(self, ctx, signed=False):
    key = (ctx.resurrect, signed)
    if key not in self._select:
      self._select[key] = jax.jit(
        lambda scores, masks, ratio, is_last: ctx.select(
          scores, masks, ratio, is_last, signed=signed
        )
      )
    return self._select[key]


def _rule_score(ctx):
  """``_run_rule``'s step without an optimizer, up to the selection."""
  rule = DYNAMIC_RULES[ctx.rule]

  @jax.jit
  def score(params, masks, stats, scores, grads, p):
    flat_g = ctx.prunable_leaves(grads)
    flat_g = [jnp.where(m, g, jnp.zeros_like(g)) for g, m in zip(flat_g, masks)]
    is_last = p == ctx.steps - 1
    new_stats, new_scores = [], []
    for j, (w, g) in enumerate(zip(ctx.prunable_leaves(params), flat_g)):
      w32 = w.astype(jnp.float32)
      x = ScoreInputs(w32, w32, g, masks[j], p, is_last, ctx.total)
      # The library's one per-leaf step (the engine's update uses it too).
      st, s = engine.score_leaf(rule, ctx.hp, x, stats[j], scores[j], resurrect=ctx.resurrect)
      new_stats.append(tuple(st))
      new_scores.append(s)
    ratio = schedules.cubic_keep_ratio(p, ctx.steps, ctx.final_keep)
    return new_stats, new_scores, ratio, is_last

  zeros = [jnp.zeros(jnp.shape(w), jnp.float32) for w in ctx.prunable_leaves(ctx.params)]
  state = (
    ctx.params,
    ctx.ones(),
    [tuple(jnp.zeros_like(z) for _ in range(rule.num_stats)) for z in zeros],
    zeros,
  )
  return score, state, rule.signed


def _force_score(ctx, dense):
  """``_run_force_like``'s step up to the selection (FORCE if ``dense``)."""

  @jax.jit
  def score(params, masks, grads, k):
    scores = prepruning.force_like_scores(ctx, params, masks, grads, dense=dense)
    return (
      scores,
      schedules.exponential_keep_ratio(k, ctx.steps, ctx.final_keep),
      k == ctx.steps - 1,
    )

  return score


def _synflow_score(ctx):
  """``_run_synflow``'s iteration up to the selection (all-ones input, ``|W|``)."""

  @jax.jit
  def score(params, masks, k):
    masked = ctx.apply_masks(params, masks)
    scores = prepruning.synflow_scores(
      ctx.apply_fn, masked, ctx.prunable_leaves, tuple(ctx.input_shape), ctx.input_dtype
    )
    return (
      scores,
      schedules.exponential_keep_ratio(k, ctx.steps, ctx.final_keep),
      k == ctx.steps - 1,
    )

  return score


def _hvp(loss_fn):
  """GraSP's Hessian-gradient product on one batch (forward over reverse)."""

  @jax.jit
  def hvp(params, tangent, batch):
    return jax.jvp(jax.grad(lambda q: loss_fn(q, batch)), (params,), (tangent,))[1]

  return hvp


class _Recipe:
  """One method's per-batch work (``batch_step``) and one-off part (``finish``).

  ``batch_step(state, p)`` does what the library does for mini-batch (or
  iteration) ``p`` and returns the new state; ``finish(state)`` returns the
  prunable masks. Replaying ``S`` steps gives the masks of
  ``prune_before_finetuning(steps=S)`` (see :func:`check_against_library`).
  ``timed_batch(state)`` (SNIP, GraSP) and ``fixed(state)`` are what is timed
  for the methods whose batches only accumulate.
  """

  def __init__(self, kind, ctx, shared: _Shared):
    self.kind, self.ctx = kind, ctx
    grad_fn = shared.grad_fn
    mean_grad = prepruning.mean_grad
    apply_masks = jax.jit(ctx.apply_masks)
    if kind == "rule":
      score, self.init, signed = _rule_score(ctx)
      select = shared.select(ctx, signed)

      def batch_step(state, p):
        params, masks, stats, scores = state
        grads, _ = mean_grad(ctx, grad_fn, ctx.apply_masks(params, masks), 1)
        stats, scores, ratio, is_last = score(
          ctx.apply_masks(params, masks), masks, stats, scores, grads, jnp.int32(p)
        )
        new_masks = select(scores, masks, ratio, is_last)
        return apply_masks(params, new_masks), new_masks, stats, scores

      self.batch_step, self.finish = batch_step, lambda s: s[1]
    elif kind in ("force", "iter_snip"):
      score = _force_score(ctx, dense=kind == "force")
      select = shared.select(ctx)
      self.init = ctx.ones()

      def batch_step(masks, k):
        # The gradient at the effective weights W * M (FORCE can resurrect).
        grads, _ = mean_grad(ctx, grad_fn, ctx.apply_masks(ctx.params, masks), 1)
        return _select_scored(select, score(ctx.params, masks, grads, jnp.int32(k)), masks)

      self.batch_step, self.finish = batch_step, lambda s: s
    elif kind == "synflow":
      score = _synflow_score(ctx)
      select = shared.select(ctx)
      self.init = ctx.ones()
      self.batch_step = lambda masks, k: _select_scored(
        select, score(ctx.params, masks, jnp.int32(k)), masks
      )
      self.finish = lambda s: s
    elif kind in ("snip", "grasp"):
      hvp = _hvp(ctx.loss_fn) if kind == "grasp" else None
      select = shared.select(ctx, signed=kind == "grasp")
      self.init = None

      def batch_step(state, p):
        del p
        batch = ctx.batches.next()
        g = grad_fn(ctx.params, batch)
        return {
          "g": g if state is None else jax.tree.map(jnp.add, state["g"], g),
          "batches": ([] if state is None else state["batches"]) + [batch],
        }

      self.batch_step = batch_step

      def tangent_of(g):
        return ctx.with_prunable(jax.tree.map(jnp.zeros_like, ctx.params), ctx.prunable_leaves(g))

      def timed_batch(state):
        # What the library repeats per batch: one gradient, and for GraSP one
        # Hessian-gradient product (its tangent, built once from the mean
        # gradient, is reused across batches).
        g = grad_fn(ctx.params, state["batches"][0])
        if hvp is None:
          return g
        if "tangent" not in state:
          state["tangent"] = tangent_of(state["g"])
        return g, hvp(ctx.params, state["tangent"], state["batches"][0])

      self.timed_batch = timed_batch

      @jax.jit
      def final_scores(params, v):
        w = [x.astype(jnp.float32) for x in ctx.prunable_leaves(params)]
        v = [y.astype(jnp.float32) for y in ctx.prunable_leaves(v)]
        if hvp is None:  # SNIP: |W * g|
          return [jnp.abs(x * y) for x, y in zip(w, v)]
        # GraSP prunes the highest -W * (H g): keep the top-k of W * (H g).
        return [x * y for x, y in zip(w, v)]

      def finish(state, hg=None):
        n = len(state["batches"])
        g = jax.tree.map(lambda x: x / n, state["g"])
        v = g
        if hvp is not None:
          tangent = tangent_of(g)
          if hg is None:  # the library's product at the mean gradient, per batch
            for batch in state["batches"]:
              hb = hvp(ctx.params, tangent, batch)
              hg = hb if hg is None else jax.tree.map(jnp.add, hg, hb)
            hg = jax.tree.map(lambda x: x / n, hg)
          v = hg
        return select(final_scores(ctx.params, v), ctx.ones(), ctx.final_keep, True)

      self.finish = finish
      # The one-off part, without the per-batch products: mean gradient,
      # (tangent), score formula and global selection.
      self.fixed = lambda state: finish(state, hg=state.get("hg"))
    elif kind in ("magnitude", "random"):
      select = shared.select(ctx)

      @jax.jit
      def scores(params):  # _run_magnitude / _run_random's scores
        leaves = ctx.prunable_leaves(params)
        if kind == "magnitude":
          return [jnp.abs(w.astype(jnp.float32)) for w in leaves]
        key = jax.random.PRNGKey(ctx.seed)
        return [
          jax.random.uniform(jax.random.fold_in(key, j), jnp.shape(w)) for j, w in enumerate(leaves)
        ]

      self.init, self.batch_step = None, None
      self.finish = lambda s: select(scores(ctx.params), ctx.ones(), ctx.final_keep, True)
    else:
      raise ValueError(kind)


def _select_scored(select, scored, masks):
  scores, ratio, is_last = scored
  return select(scores, masks, ratio, is_last)


def _setup(name: str):
  model, batch = bert.make_model(name)
  loss_fn = bert.loss_fn_of(model)
  seq = batch["input_ids"].shape[1]

  def apply_fn(params, x):  # SynFlow's f(1): all token ids 1, one sequence
    return model(x, params=params, train=False).logits

  return model, batch, loss_fn, apply_fn, (1, seq)


def _recipe(method, model, batch, loss_fn, apply_fn, input_shape, shared, steps=None):
  prunable = bert.bert_prunable(model.params)
  pre = pre_method(method)
  kind = _kind(pre)
  ctx_steps = steps if steps is not None else max(pre.default_steps, 1)
  pre, ctx = _context(
    method,
    loss_fn,
    model.params,
    prunable,
    batch,
    steps=ctx_steps,
    apply_fn=apply_fn,
    input_shape=input_shape,
    input_dtype=jnp.int32,
  )
  return pre, kind, _Recipe(kind, ctx, shared)


def check_against_library(name: str = "tiny-bert", steps: int = 2, methods=None) -> dict:
  """Replays ``steps`` steps of each recipe; True where the masks equal the library's.

  Slow (``prune_before_finetuning`` compiles on every call): run it by hand.
  """
  model, batch, loss_fn, apply_fn, input_shape = _setup(name)
  prunable = bert.bert_prunable(model.params)
  shared = _Shared(jax.jit(jax.grad(loss_fn)))
  out = {}
  for method in methods or seven_jax.methods("pre"):
    pre, kind, rec = _recipe(
      method, model, batch, loss_fn, apply_fn, input_shape, shared, steps=steps
    )
    state = rec.init
    n = 0 if kind in ("magnitude", "random") else steps
    for p in range(n):
      state = rec.batch_step(state, p)
    mine = rec.finish(state)
    kw = {} if kind in ("magnitude", "random") else {"steps": steps}
    if kind == "synflow":
      kw.update(apply_fn=apply_fn, input_shape=input_shape, input_dtype=jnp.int32)
    lib = seven_jax.prune_before_finetuning(
      loss_fn,
      model.params,
      itertools.repeat(batch),
      sparsity=SPARSITY,
      method=method,
      prunable=prunable,
      **kw,
    )
    lib = [m for m, s in zip(jax.tree.leaves(lib), jax.tree.leaves(prunable)) if s]
    out[method] = all(bool(jnp.array_equal(a, b)) for a, b in zip(mine, lib))
  return out


def prepruning_cost(name: str, *, repeats: int, warmup: int = 1, methods=None) -> dict:
  """Per-batch scoring time of every pre-pruning method / one training step.

  The training step (``bert._Runner`` with ``optax.adamw(2e-5)``) is timed
  before and after the methods, and the ratios use the median of both sets
  of calls, so a change in machine load during the run shows up in
  ``train_step_before`` / ``train_step_after``.
  """
  model, batch, loss_fn, apply_fn, input_shape = _setup(name)
  train = bert._Runner(model, batch, optax.adamw(2e-5), 0)  # pylint: disable=protected-access
  before = time_calls(train, repeats=repeats, warmup=warmup)
  shared = _Shared(jax.jit(jax.grad(loss_fn)))
  rows, done = [], {}
  names = list(methods or seven_jax.methods("pre"))
  # Measure seven_pre / magnitude_pre first: their short names are the aliases.
  for method in sorted(names, key=lambda m: not m.endswith("_pre")):
    pre, kind, rec = _recipe(method, model, batch, loss_fn, apply_fn, input_shape, shared)
    key = (pre.runner, pre.rule, pre.resurrect)
    row = {
      "method": method,
      "kind": kind,
      "default_steps": pre.default_steps,
      "default_batches": pre.batches(pre.default_steps, 1),
    }
    if key in done:
      rows.append(
        {
          **row,
          **{k: v for k, v in done[key].items() if k in ("per_batch", "fixed", "how")},
          "alias_of": done[key]["method"],
        }
      )
      continue
    if kind in ("magnitude", "random"):
      row["per_batch"] = None
      row["fixed"] = time_calls(lambda: rec.finish(None), repeats=repeats, warmup=warmup)
      row["how"] = "one-off: score + global select, no batches"
    elif kind in ("snip", "grasp"):
      state = rec.batch_step(None, 0)
      if kind == "grasp":  # a product to feed the one-off part
        state["hg"] = rec.timed_batch(state)[1]
      row["per_batch"] = time_calls(lambda: rec.timed_batch(state), repeats=repeats, warmup=warmup)
      row["fixed"] = time_calls(lambda: rec.fixed(state), repeats=repeats, warmup=warmup)
      row["how"] = (
        "per batch: gradient"
        + (" + Hessian-gradient product (jvp of grad)" if kind == "grasp" else "")
        + "; fixed: score + global select"
      )
    else:
      # One step from the initial state (all weights kept, p = 0).
      row["per_batch"] = time_calls(
        lambda: rec.batch_step(rec.init, 0), repeats=repeats, warmup=warmup
      )
      row["fixed"] = None
      row["how"] = {
        "rule": "per batch: masked gradient + rule statistics/score + global select",
        "force": "per iteration (1 batch): masked gradient + abs(W_dense g) + global select",
        "iter_snip": "per iteration (1 batch): masked gradient + abs(W M g) + global select",
        "synflow": (
          f"per iteration (no data): grad of 1'f(1) at abs(W), input "
          f"{input_shape} token ids 1, + global select"
        ),
      }[kind]
    done[key] = row
    rows.append(row)
    print(f"[prepruning] {name} {method}: {row['how']}", file=sys.stderr, flush=True)
  rows.sort(key=lambda r: names.index(r["method"]))
  after = time_calls(train, repeats=repeats, warmup=0)
  # Pool the training-step calls for the reference median.
  ref = float(np.median([before["median_ms"], after["median_ms"]]))
  for row in rows:
    per = row["per_batch"]["median_ms"] if row["per_batch"] else None
    fixed = row["fixed"]["median_ms"] if row["fixed"] else 0.0
    row["ratio_per_batch"] = per / ref if per is not None else None
    row["ratio_fixed"] = fixed / ref if row["fixed"] else None
    row["default_total_ms"] = (per or 0.0) * row["default_steps"] + fixed
  prunable = bert.bert_prunable(model.params)
  return {
    "model": name,
    "batch_seq": list(bert.CONFIGS[name][5:]),
    "prunable": bert.num_prunable(model.params, prunable),
    "sparsity": SPARSITY,
    "train_step_before": before,
    "train_step_after": after,
    "train_step_ms": ref,
    "methods": rows,
  }
