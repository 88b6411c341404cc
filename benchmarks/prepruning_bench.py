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

* the mini-batch gradient is the library's ``_mean_grad`` with
  ``jax.jit(jax.grad(loss_fn))`` on the masked weights (``_Context.apply_masks``,
  eager, as in the library loop);
* the jitted per-step bodies of ``_run_rule`` (SEVEN_pre and every dynamic
  rule), ``_run_force_like`` (FORCE, Iterative SNIP) and ``_run_synflow`` are
  local functions of those runners, so they are restated here line for line
  (``_rule_step``, ``_force_step``, ``_synflow_step``) on the library's
  ``ScoreRule.update``, ``_Context.select``, schedules and
  ``synflow_scores``; :func:`check_against_library` replays S steps with them
  and compares the masks with ``prune_before_finetuning(steps=S)``;
* GraSP's per-batch work is one gradient plus one Hessian-gradient product
  (``jax.jvp`` of ``jax.grad``, the formula of ``grasp_scores``);
* SNIP and GraSP have a one-off part after the batches (score formula and
  global selection), reported as ``fixed``; magnitude and random only have a
  one-off part (the library's ``_run_magnitude`` / ``_run_random`` jitted).

Aliases (``seven`` = ``seven_pre``, ``magnitude`` = ``magnitude_pre``: the
same runner and rule) are measured once and reported on both rows.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax

import seven_jax
from benchmarks import bert
from benchmarks.common import time_calls
from seven_jax import prepruning, schedules
from seven_jax.prunable import resolve_prunable
from seven_jax.scores import DYNAMIC_RULES, ScoreInputs, resolve_hparams
from seven_jax.threshold import canonicalize_scores

SPARSITY = 0.6


def _context(method, loss_fn, params, prunable, batch, *, steps, apply_fn=None,
             input_shape=None, input_dtype=jnp.float32):
  """The library's runner context for ``method``, fed the same batch forever."""
  pre = prepruning._lookup(method)  # pylint: disable=protected-access
  spec = resolve_prunable(prunable, params)
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  idx = [i for i, s in enumerate(treedef.flatten_up_to(spec)) if s]
  total = int(sum(np.prod(np.shape(flat[i][1]), dtype=np.int64) for i in idx))
  hp = resolve_hparams(DYNAMIC_RULES[pre.rule], {}) if pre.rule else {}
  batches = prepruning._Batches(  # pylint: disable=protected-access
      itertools.repeat(batch), 1, method, "benchmark")
  ctx = prepruning._Context(  # pylint: disable=protected-access
      method=method, loss_fn=loss_fn, params=params, treedef=treedef, idx=idx,
      total=total, final_keep=1.0 - SPARSITY, steps=steps, per_step=1,
      batches=batches, scope="global", nm=None, resurrect=pre.resurrect,
      optimizer=None, seed=0, apply_fn=apply_fn, input_shape=input_shape,
      input_dtype=input_dtype, hp=hp, rule=pre.rule)
  return pre, ctx


def _kind(pre) -> str:
  run = pre.run
  if run is prepruning._run_rule:  # pylint: disable=protected-access
    return "rule"
  for kind, fn in [("magnitude", prepruning._run_magnitude),  # pylint: disable=protected-access
                   ("random", prepruning._run_random),  # pylint: disable=protected-access
                   ("snip", prepruning._run_snip),  # pylint: disable=protected-access
                   ("grasp", prepruning._run_grasp),  # pylint: disable=protected-access
                   ("synflow", prepruning._run_synflow)]:  # pylint: disable=protected-access
    if run is fn:
      return kind
  if pre.name in ("force", "iter_snip"):
    return pre.name
  raise ValueError(f"no benchmark recipe for pre-pruning method {pre.name!r}")


# ----------------------------------------------- per-step bodies (restated)

def _rule_step(ctx):
  """``_run_rule``'s jitted step without an optimizer (weights frozen)."""
  rule = DYNAMIC_RULES[ctx.rule]

  @jax.jit
  def step(params, masks, stats, scores, grads, p):
    flat_g = ctx.prunable_leaves(grads)
    flat_g = [jnp.where(m, g, jnp.zeros_like(g)) for g, m in zip(flat_g, masks)]
    is_last = p == ctx.steps - 1
    new_stats, new_scores = [], []
    for j, (w, g) in enumerate(zip(ctx.prunable_leaves(params), flat_g)):
      w32 = w.astype(jnp.float32)
      x = ScoreInputs(w32, w32, g, masks[j], p, is_last, ctx.total)
      st, s = rule.update(ctx.hp, x, stats[j], scores[j])
      s = canonicalize_scores(s)
      if not ctx.resurrect and not rule.signed:
        s = jnp.where(masks[j], s, 0.0)
      new_stats.append(tuple(st))
      new_scores.append(s)
    ratio = schedules.cubic_keep_ratio(p, ctx.steps, ctx.final_keep)
    new_masks = ctx.select(new_scores, masks, ratio, is_last, signed=rule.signed)
    return ctx.apply_masks(params, new_masks), new_masks, new_stats, new_scores

  zeros = [jnp.zeros(jnp.shape(w), jnp.float32) for w in ctx.prunable_leaves(ctx.params)]
  state = (ctx.params, ctx.ones(),
           [tuple(jnp.zeros_like(z) for _ in range(rule.num_stats)) for z in zeros], zeros)
  return step, state


def _force_step(ctx, dense):
  """``_run_force_like``'s jitted step (FORCE: dense weights; else Iterative SNIP)."""
  @jax.jit
  def step(params, masks, grads, k):
    weights = ctx.prunable_leaves(params)
    if not dense:
      weights = [jnp.where(m, w, jnp.zeros_like(w)) for w, m in zip(weights, masks)]
    scores = [jnp.abs(w.astype(jnp.float32) * g.astype(jnp.float32))
              for w, g in zip(weights, ctx.prunable_leaves(grads))]
    ratio = schedules.exponential_keep_ratio(k, ctx.steps, ctx.final_keep)
    return ctx.select(scores, masks, ratio, k == ctx.steps - 1)
  return step


def _synflow_step(ctx):
  """``_run_synflow``'s jitted iteration (all-ones input, ``|W|`` weights)."""
  @jax.jit
  def step(params, masks, k):
    masked = ctx.apply_masks(params, masks)
    scores = prepruning.synflow_scores(ctx.apply_fn, masked, ctx.prunable_leaves,
                                       tuple(ctx.input_shape), ctx.input_dtype)
    ratio = schedules.exponential_keep_ratio(k, ctx.steps, ctx.final_keep)
    return ctx.select(scores, masks, ratio, k == ctx.steps - 1)
  return step


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
  prunable masks. Replaying ``S`` steps must give the masks of
  ``prune_before_finetuning(steps=S)`` (see :func:`check_against_library`).
  """

  def __init__(self, kind, ctx, grad_fn):
    self.kind, self.ctx, self.grad_fn = kind, ctx, grad_fn
    mean_grad = prepruning._mean_grad  # pylint: disable=protected-access
    if kind == "rule":
      step, self.init = _rule_step(ctx)

      def batch_step(state, p):
        params, masks, stats, scores = state
        grads, _ = mean_grad(ctx, grad_fn, ctx.apply_masks(params, masks), 1)
        return step(ctx.apply_masks(params, masks), masks, stats, scores, grads,
                    jnp.int32(p))
      self.batch_step, self.finish = batch_step, lambda s: s[1]
    elif kind in ("force", "iter_snip"):
      step = _force_step(ctx, dense=kind == "force")
      self.init = ctx.ones()

      def batch_step(masks, k):
        grads, _ = mean_grad(ctx, grad_fn, ctx.apply_masks(ctx.params, masks), 1)
        return step(ctx.params, masks, grads, jnp.int32(k))
      self.batch_step, self.finish = batch_step, lambda s: s
    elif kind == "synflow":
      step = _synflow_step(ctx)
      self.init = ctx.ones()
      self.batch_step = lambda masks, k: step(ctx.params, masks, jnp.int32(k))
      self.finish = lambda s: s
    elif kind in ("snip", "grasp"):
      hvp = _hvp(ctx.loss_fn) if kind == "grasp" else None
      self.init = None

      def batch_step(state, p):
        # snip_scores / grasp_scores: one gradient per batch (summed), and for
        # GraSP one Hessian-gradient product per batch at the mean gradient.
        # Timed on its own, the product is evaluated at this batch's gradient.
        batch = ctx.batches.next()
        g = grad_fn(ctx.params, batch)
        out = {"g": g if state is None else jax.tree.map(jnp.add, state["g"], g),
               "batches": ([] if state is None else state["batches"]) + [batch]}
        if hvp is not None:
          tangent = ctx.with_prunable(jax.tree.map(jnp.zeros_like, ctx.params),
                                      ctx.prunable_leaves(g))
          out["hg"] = hvp(ctx.params, tangent, batch)
        return out
      self.batch_step = batch_step

      def timed_batch(state):
        # What the library repeats per batch: one gradient, and for GraSP one
        # product (its tangent, built once from the mean gradient, is reused).
        g = grad_fn(ctx.params, state["batches"][0])
        if hvp is None:
          return g
        if "tangent" not in state:
          state["tangent"] = ctx.with_prunable(
              jax.tree.map(jnp.zeros_like, ctx.params), ctx.prunable_leaves(state["g"]))
        return g, hvp(ctx.params, state["tangent"], state["batches"][0])
      self.timed_batch = timed_batch

      @jax.jit
      def select(params, g, hg):
        w = [x.astype(jnp.float32) for x in ctx.prunable_leaves(params)]
        if hg is None:  # SNIP: |W * g|
          s = [jnp.abs(x * y.astype(jnp.float32)) for x, y in zip(w, ctx.prunable_leaves(g))]
          return ctx.select(s, ctx.ones(), ctx.final_keep, True)
        # GraSP prunes the highest -W * (H g): keep the top-k of W * (H g).
        s = [x * y.astype(jnp.float32) for x, y in zip(w, ctx.prunable_leaves(hg))]
        return ctx.select(s, ctx.ones(), ctx.final_keep, True, signed=True)

      def finish(state):
        n = len(state["batches"])
        g = jax.tree.map(lambda x: x / n, state["g"])
        hg = None
        if hvp is not None:  # the library's product at the mean gradient
          tangent = ctx.with_prunable(jax.tree.map(jnp.zeros_like, ctx.params),
                                      ctx.prunable_leaves(g))
          hg = None
          for batch in state["batches"]:
            hb = hvp(ctx.params, tangent, batch)
            hg = hb if hg is None else jax.tree.map(jnp.add, hg, hb)
          hg = jax.tree.map(lambda x: x / n, hg)
        return select(ctx.params, g, hg)
      self.finish = finish
      self.fixed = lambda state: select(ctx.params, state["g"], state.get("hg"))
    elif kind in ("magnitude", "random"):
      run = prepruning._run_magnitude if kind == "magnitude" else prepruning._run_random  # pylint: disable=protected-access
      one_off = jax.jit(lambda params: run(ctx._replace(params=params))[0])
      self.init, self.batch_step = None, None
      self.finish = lambda s: one_off(ctx.params)
    else:
      raise ValueError(kind)


def _setup(name: str):
  model, batch = bert.make_model(name)
  loss_fn = bert.loss_fn_of(model)
  seq = batch["input_ids"].shape[1]

  def apply_fn(params, x):  # SynFlow's f(1): all token ids 1, one sequence
    return model(x, params=params, train=False).logits
  return model, batch, loss_fn, apply_fn, (1, seq)


def _recipe(method, model, batch, loss_fn, apply_fn, input_shape, grad_fn, steps=None):
  prunable = bert.bert_prunable(model.params)
  pre = prepruning._lookup(method)  # pylint: disable=protected-access
  kind = _kind(pre)
  ctx_steps = steps if steps is not None else max(pre.default_steps, 1)
  pre, ctx = _context(method, loss_fn, model.params, prunable, batch, steps=ctx_steps,
                      apply_fn=apply_fn, input_shape=input_shape, input_dtype=jnp.int32)
  return pre, kind, _Recipe(kind, ctx, grad_fn)


def check_against_library(name: str = "tiny-bert", steps: int = 2,
                          methods=None) -> dict:
  """Replays ``steps`` steps of each recipe; True where the masks equal the library's.

  Slow (``prune_before_finetuning`` compiles on every call): run it by hand.
  """
  model, batch, loss_fn, apply_fn, input_shape = _setup(name)
  prunable = bert.bert_prunable(model.params)
  grad_fn = jax.jit(jax.grad(loss_fn))
  out = {}
  for method in methods or seven_jax.methods("pre"):
    pre, kind, rec = _recipe(method, model, batch, loss_fn, apply_fn, input_shape,
                             grad_fn, steps=steps)
    state = rec.init
    n = 0 if kind in ("magnitude", "random") else steps
    for p in range(n):
      state = rec.batch_step(state, p)
    mine = rec.finish(state)
    kw = {} if kind in ("magnitude", "random") else {"steps": steps}
    if kind == "synflow":
      kw.update(apply_fn=apply_fn, input_shape=input_shape, input_dtype=jnp.int32)
    lib = seven_jax.prune_before_finetuning(
        loss_fn, model.params, itertools.repeat(batch), sparsity=SPARSITY, method=method,
        prunable=prunable, **kw)
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
  grad_fn = jax.jit(jax.grad(loss_fn))
  rows, done = [], {}
  for method in methods or seven_jax.methods("pre"):
    pre, kind, rec = _recipe(method, model, batch, loss_fn, apply_fn, input_shape, grad_fn)
    key = (pre.run, pre.rule, pre.resurrect)
    row = {"method": method, "kind": kind, "default_steps": pre.default_steps,
           "default_batches": pre.batches(pre.default_steps, 1)}
    if key in done:
      rows.append({**row, **{k: v for k, v in done[key].items() if k in (
          "per_batch", "fixed", "how")}, "alias_of": done[key]["method"]})
      continue
    if kind in ("magnitude", "random"):
      row["per_batch"] = None
      row["fixed"] = time_calls(lambda: rec.finish(None), repeats=repeats, warmup=warmup)
      row["how"] = f"one-off: jitted _run_{kind} (score + global select), no batches"
    elif kind in ("snip", "grasp"):
      state = rec.batch_step(None, 0)
      row["per_batch"] = time_calls(lambda: rec.timed_batch(state), repeats=repeats,
                                    warmup=warmup)
      row["fixed"] = time_calls(lambda: rec.fixed(state), repeats=repeats, warmup=warmup)
      row["how"] = ("per batch: gradient" + (" + Hessian-gradient product (jvp of grad)"
                                             if kind == "grasp" else "")
                    + "; fixed: score + global select")
    else:
      # One step from the initial state (all weights kept, p = 0).
      row["per_batch"] = time_calls(lambda: rec.batch_step(rec.init, 0), repeats=repeats,
                                    warmup=warmup)
      row["fixed"] = None
      row["how"] = {
          "rule": "per batch: masked gradient + rule statistics/score + global select",
          "force": "per iteration (1 batch): masked gradient + |W_dense g| + global select",
          "iter_snip": "per iteration (1 batch): masked gradient + |W M g| + global select",
          "synflow": (f"per iteration (no data): grad of 1'f(1) at |W|, input "
                      f"{input_shape} token ids 1, + global select"),
      }[kind]
    done[key] = row
    rows.append(row)
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
      "model": name, "batch_seq": list(bert.CONFIGS[name][5:]),
      "prunable": int(sum(int(np.prod(p.shape)) for p, s in zip(
          jax.tree.leaves(model.params), jax.tree.leaves(prunable)) if s)),
      "sparsity": SPARSITY,
      "train_step_before": before, "train_step_after": after, "train_step_ms": ref,
      "methods": rows,
  }
