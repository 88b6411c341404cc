r"""One pruning engine for every dynamic method: ``pruning_mask`` and ``fixed_mask``.

:func:`pruning_mask` wraps an optax optimizer exactly as
:func:`seven_jax.seven_mask` does (which is this engine with the ``"seven"``
rule) and takes the score rule by name from :mod:`seven_jax.scores`; the
selection step is :func:`seven_jax.selection.select_masks`. SEVEN_pre
(:func:`seven_jax.prune_before_finetuning`) is the same engine with an
optimizer that does not move the weights.

Every step of a prunable leaf goes through one pure function,
:func:`score_leaf`; the rest of ``update`` is tree maps over the params, the
gradients and the state, whose non-prunable leaves are
:class:`optax.MaskedNode` holes (:mod:`seven_jax.state`).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from seven_jax import schedules, selection, storage, validation
from seven_jax.prunable import PrunableSpec, path_str, resolve_prunable
from seven_jax.scores import ScoreInputs, ScoreRule, get_rule, resolve_hparams
from seven_jax.state import (
  HOLE,
  FixedMaskState,
  Layout,
  PruningState,
  is_hole,
  map_kept,
  placeholder_layout,
)
from seven_jax.threshold import canonicalize_scores

__all__ = [
  "pruning_mask",
  "PruningState",
  "fixed_mask",
  "FixedMaskState",
  "score_leaf",
  "straight_through_masked",
]

SCHEDULES = ("cubic", "exponential")
TIES_SUPPORTED = "ties" in inspect.signature(selection.select_masks).parameters

_NO_PARAMS_MSG = "{name} needs the current parameters: call tx.update(grads, state, params)."


# ------------------------------------------------------------ the leaf step


def score_leaf(
  rule: ScoreRule, hp: dict, inputs: ScoreInputs, stats, score, *, resurrect: bool, store=None
):
  """The pure per-leaf score step every method and entry point shares.

  ``rule.update`` on float32 inputs, then canonical scores
  (:func:`seven_jax.threshold.canonicalize_scores`) and, without
  resurrection, score 0 for pruned weights (SEVEN's (E7)). A statistic that
  would become non-finite (the weights or the inner update went NaN) keeps
  its previous value, so one bad step cannot poison a rule's EMAs for good.

  A rule with ``score_from_stats`` (SEVEN, PLATON) is scored on the new
  statistics *as the state keeps them*: guarded, and, with ``store``, as
  stored (``store(n, x)`` gives statistic ``n`` in the storage dtype, e.g.
  bfloat16 rounded stochastically; the score reads its float32 upcast). XLA
  then writes each statistic once and the score reads it. Scored on values
  that are never materialised (``update``'s own unguarded ones, or the
  float32 values before rounding), it fused their update into the score
  too, which re-read the old ``m`` and ``v`` while the statistics' fusion
  overwrote them in place, and copy insertion copied both first: 16 bytes
  per prunable weight on every pruning step for SEVEN in float32, 8 in
  bfloat16 (``tests/test_engine_hlo.py``). The values differ only where a
  statistic went non-finite, and by the rounding of the stored statistics.
  A rule with ``next_stat`` (PLATON) gets the same treatment between its
  statistics: each is computed from the ones before it as kept (PLATON's
  window body at the test's shapes: 6 copies and 117 B per weight -> no
  copies, 69 B).

  Returns:
    ``(stats, score)``: the statistics as stored (float32 without
    ``store``) and the float32 score.
  """
  old = tuple(jnp.asarray(s, jnp.float32) for s in stats)
  score = jnp.asarray(score, jnp.float32)
  keep = lambda n, new: _kept(jnp.where(jnp.isfinite(new), new, old[n]), n, store)
  if rule.next_stat is not None:
    # One statistic at a time, each from the ones before it as kept.
    new_stats, as_kept = (), ()
    for n in range(len(old)):
      stored, value = keep(n, rule.next_stat(hp, inputs, n, as_kept, old))
      new_stats, as_kept = new_stats + (stored,), as_kept + (value,)
    new_score = None
  else:
    new_stats, new_score = rule.update(hp, inputs, old, score)
    pairs = [keep(n, x) for n, x in enumerate(new_stats)]
    new_stats, as_kept = tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)
  if rule.score_from_stats is not None:
    new_score = rule.score_from_stats(hp, inputs, as_kept, score)
  elif new_score is None:
    new_score = rule.update(hp, inputs, old, score)[1]
  new_score = canonicalize_scores(new_score)
  if not resurrect and not rule.signed:
    new_score = jnp.where(inputs.mask, new_score, 0.0)
  return new_stats, new_score


def _kept(x, n, store):
  """Statistic ``n`` as the state keeps it (stored) and as the score reads it (float32)."""
  stored = x if store is None else store(n, x)
  return stored, jnp.asarray(stored, jnp.float32)


def run_if(pred, fn, carry):
  """``fn(carry)`` if ``pred`` else ``carry``, as a while loop of 0 or 1 trips.

  Not ``lax.cond(pred, fn, identity, carry)``: XLA's copy insertion cannot
  keep a conditional's pass-through outputs in the donated input buffers
  when the other branch cannot update them in place (the score fusion
  re-reads the old statistics), and copies them *outside* the conditional,
  on every call: 16 bytes per prunable weight after the pruning window for
  SEVEN's ``m`` and ``v`` (compiled HLO, MiniLM-size leaves). A while loop's
  state lives in one buffer, so those copies move into its body and run
  only inside the window. Everything the loop reads must be a buffer: the
  engine passes it what exists anyway (weights, gradient, states) and
  recomputes the rest inside (the inner update), so that outside the window
  the step fuses as a :func:`fixed_mask` step does.
  """

  def body(state):
    _, x = state
    return jnp.zeros((), jnp.bool_), fn(x)

  return lax.while_loop(lambda state: state[0], body, (jnp.asarray(pred, jnp.bool_), carry))[1]


def _masked(m, x):
  """``x`` where the mask keeps it, exactly 0 (in ``x``'s dtype) elsewhere."""
  return jnp.where(m, x, jnp.zeros_like(x))


def _finite(x):
  return jnp.where(jnp.isfinite(x), x, 0.0)


def _kept_leaves(mask_tree, tree) -> list:
  """The leaves of ``tree`` (params-shaped) at the prunable positions."""
  flat, treedef = jax.tree.flatten(mask_tree, is_leaf=is_hole)
  return [x for m, x in zip(flat, treedef.flatten_up_to(tree), strict=True) if not is_hole(m)]


def _with_kept(mask_tree, tree, leaves) -> Any:
  """``tree`` with its leaves at the prunable positions replaced by ``leaves``
  (in :func:`_kept_leaves` order)."""
  flat, treedef = jax.tree.flatten(mask_tree, is_leaf=is_hole)
  subtrees = treedef.flatten_up_to(tree)
  leaves = iter(leaves)
  subtrees = [x if is_hole(m) else next(leaves) for m, x in zip(flat, subtrees, strict=True)]
  return treedef.unflatten(subtrees)


def select_kwargs(ties):
  if ties is None:
    return {}
  if not TIES_SUPPORTED:
    raise ValueError("ties= needs a seven_jax.selection that supports it (not this version).")
  return {"ties": ties}


def check_ties(ties):
  if ties is not None:
    validation.check_choice("ties", ties, ("exact", "keep_all"))
  return ties


# --------------------------------------------------------- hyper-parameters


def _as_int32(x):
  return jnp.asarray(x).astype(jnp.int32) if isinstance(x, jax.Array) else x


def clip_traced_schedule(sparsity, start_step, pruning_steps, update_every, total):
  """Injected (array) values clipped into their valid ranges.

  ``sparsity`` into ``[0, 1 - 1/D]`` (at least one weight is kept),
  ``start_step >= 0``, ``pruning_steps >= 2``, ``update_every >= 1``. Python
  numbers were checked when the transformation was built and pass unchanged.
  """
  if isinstance(sparsity, jax.Array):
    sparsity = jnp.clip(jnp.asarray(sparsity, jnp.float32), 0.0, 1.0 - 1.0 / max(total, 1))
  if isinstance(start_step, jax.Array):
    start_step = jnp.maximum(_as_int32(start_step), 0)
  if isinstance(pruning_steps, jax.Array):
    pruning_steps = jnp.maximum(_as_int32(pruning_steps), 2)
  if isinstance(update_every, jax.Array):
    update_every = jnp.maximum(_as_int32(update_every), 1)
  return sparsity, start_step, pruning_steps, update_every


_BELOW_ONE = float(np.nextafter(np.float32(1.0), np.float32(0.0)))


def clip_traced_rates(hp: dict, names=("b1", "b2")) -> dict:
  """EMA rates given as arrays (injected) clipped into ``[0, 1)`` in float32."""
  hp = dict(hp)
  for name in names:
    if isinstance(hp.get(name), jax.Array):
      hp[name] = jnp.clip(jnp.asarray(hp[name], jnp.float32), 0.0, _BELOW_ONE)
  return hp


# ------------------------------------------------------------------- engine


def _check_leaves(params, spec, nm):
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  flat_spec = treedef.flatten_up_to(spec)
  for (path, p), s in zip(flat, flat_spec, strict=True):
    if s and jnp.iscomplexobj(p):
      raise TypeError(
        f"prunable leaf '{path_str(path)}' is {jnp.result_type(p)}: scores rank real weights; "
        "leave complex leaves out with prunable= (they are then updated by the inner optimizer)."
      )
    if s and not jnp.issubdtype(jnp.result_type(p), jnp.floating):
      raise TypeError(
        f"prunable leaf '{path_str(path)}' has dtype {jnp.result_type(p)}; only floating "
        "point weights can be pruned."
      )
  if nm is not None:
    selection.check_pattern_shapes(
      nm,
      [p for (_, p), s in zip(flat, flat_spec) if s],
      [path_str(k) for (k, _), s in zip(flat, flat_spec) if s],
    )


def _layout_trees(params, spec, num_stats, stats_dtype):
  """Masks, stats and scores created like their params (holes elsewhere).

  The statistics in ``stats_dtype``, the scores always in float32: see
  :mod:`seven_jax.storage` for why a bfloat16 accumulated score costs both
  accuracy and time.

  Leaves that are already ``MaskedNode`` in ``params`` (the part of the
  params an ``optax.multi_transform`` / ``optax.masked`` gives to another
  transformation) stay holes of unknown shape: ``None`` in the layout, and
  :func:`seven_jax.masks` leaves them as they are.
  """
  flat_p, treedef = jax.tree.flatten(params, is_leaf=is_hole)
  flat_s = treedef.flatten_up_to(spec)
  kept = [not is_hole(p) and bool(s) for p, s in zip(flat_p, flat_s, strict=True)]
  like = lambda make: treedef.unflatten(
    [make(p) if k else HOLE for p, k in zip(flat_p, kept, strict=True)]
  )
  masks = like(lambda p: jnp.ones_like(p, jnp.bool_))
  zeros = lambda dtype: like(lambda p: jnp.zeros_like(p, dtype))
  holes = tuple(None if is_hole(p) else tuple(np.shape(p)) for p, k in zip(flat_p, kept) if not k)
  stats = tuple(zeros(stats_dtype) for _ in range(num_stats))
  return masks, stats, zeros(jnp.float32), Layout(holes)


def _inner_update(inner, grads, inner_state, params, extra_args, name, lookahead):
  """``inner.update``; an optax.lookahead given plain params gets a clear error."""
  try:
    return inner.update(grads, inner_state, params, **extra_args)
  except (ValueError, AttributeError) as err:
    if not lookahead and ("named tuple" in str(err) or "fast" in str(err)):
      raise ValueError(
        f"the inner optimizer of {name} needs optax.LookaheadParams (optax.lookahead): "
        "pass params = optax.LookaheadParams.init_synced(params) to init and update, "
        f"and {name} masks the fast and the slow weights."
      ) from err
    raise


def _zero_schedule_free_z(inner_state, mask_tree, when=None):
  """``optax.contrib.schedule_free`` keeps the sequence ``z`` in its state and
  evaluates at an average of ``z`` and the params: pruned entries of ``z``
  must be 0 too, for the evaluated weights to be exactly 0. ``when`` (a
  traced bool, straight-through only): zero them only then, as the params."""
  try:
    from optax.contrib import ScheduleFreeState  # optax is imported anyway
  except ImportError:  # pragma: no cover - older optax
    return inner_state
  is_sf = lambda x: isinstance(x, ScheduleFreeState)

  def fix(x):
    if not is_sf(x):
      return x
    try:
      keep = (lambda m: m) if when is None else (lambda m: m | ~when)
      z = map_kept(lambda m, zi: jnp.where(keep(m), zi, jnp.zeros_like(zi)), mask_tree, x.z)
    except (ValueError, TypeError):  # z is not shaped like these params
      return x
    return x._replace(z=z)

  return jax.tree.map(fix, inner_state, is_leaf=is_sf)


def build_transform(
  inner: optax.GradientTransformation,
  rule: ScoreRule,
  hp: dict,
  *,
  sparsity,
  start_step,
  pruning_steps,
  prunable: PrunableSpec,
  scope: str,
  resurrect: bool,
  update_every,
  nm: Optional[tuple[int, int]] = None,
  schedule: str = "cubic",
  threshold: Optional[float] = None,
  stats_dtype=jnp.float32,
  state_type=PruningState,
  name: str = "pruning_mask",
  window: Optional[int] = None,
  ties: Optional[str] = None,
  straight_through: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """The engine; arguments are assumed checked (but ``straight_through``).

  The pruning window is ``window`` update calls from ``start_step`` (default
  ``pruning_steps - 1``, the official SEVEN loop; SEVEN_pre uses
  ``pruning_steps``, so that its last step keeps exactly ``1 - sparsity``).
  ``straight_through``: see :func:`pruning_mask`.
  """
  straight_through = validation.check_bool("straight_through", straight_through)
  inner = optax.with_extra_args_support(inner)
  num_stats = rule.num_stats
  stats_dtype = storage.check_stats_dtype(stats_dtype)
  select_kw = select_kwargs(ties)

  def _initial_tau(num_leaves):
    # The shape select_masks returns its threshold in: one per leaf for a
    # per-leaf budget, else a scalar. NaN = no warm start yet.
    per_leaf = scope == "per_leaf" and threshold is None and nm is None
    return jnp.full((num_leaves,) if per_leaf else (), jnp.nan, jnp.float32)

  def split_lookahead(params):
    # With optax.lookahead inside, params are LookaheadParams(fast, slow): the
    # fast weights are scored and masked, the slow ones masked alike.
    if isinstance(params, optax.LookaheadParams):
      return params.fast, True
    return params, False

  def init_fn(params):
    if type(params).__name__ == "_ParamsPlaceholder":
      # optax.tree.map_params probes init with a leafless placeholder.
      return state_type(
        jnp.zeros([], jnp.int32),
        params,
        (params,) * num_stats,
        params,
        inner.init(params),
        placeholder_layout(),
        jnp.float32(jnp.nan),
      )
    weights, _ = split_lookahead(params)
    spec = resolve_prunable(prunable, weights)
    _check_leaves(weights, spec, nm)
    masks, stats, scores, layout = _layout_trees(weights, spec, num_stats, stats_dtype)
    return state_type(
      jnp.zeros([], jnp.int32),
      masks,
      stats,
      scores,
      inner.init(params),
      layout,
      _initial_tau(len(jax.tree.leaves(masks))),
    )

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(_NO_PARAMS_MSG.format(name=name))
    weights, lookahead = split_lookahead(params)
    masks = state.masks
    kept = lambda tree: _kept_leaves(masks, tree)
    total = int(sum(np.size(w) for w in kept(weights)))
    sp, start, n_steps, every = clip_traced_schedule(
      sparsity, start_step, pruning_steps, update_every, total
    )
    length = n_steps - 1 if window is None else window
    local_step = state.count - start
    is_last = local_step == length - 1

    in_window = (local_step >= 0) & (local_step < length)
    as_tree = functools.partial(jax.tree.unflatten, jax.tree.structure(masks))

    # The optimizer gets the gradient of the masked network (pruned
    # coordinates exactly 0) under this call's mask, before its selection.
    def inner_step(masked_leaves, inner_state):
      grads = _with_kept(masks, updates, masked_leaves)
      return _inner_update(inner, grads, inner_state, params, extra_args, name, lookahead)

    # Statistic n of leaf j in the storage dtype (stochastic rounding draws
    # its bits from the step and this salt). Slot num_stats of each leaf was
    # the scores' when they were stored in bfloat16; it stays unused (the
    # statistics keep their salts; renumbering would only change bits).
    def store(j, n, x):
      return storage.store(x, stats_dtype, state.count, (num_stats + 1) * j + n)

    def leaf_step(j, m, w, u, g, score, *stats):
      w = w.astype(jnp.float32)
      u = u.astype(jnp.float32)
      if straight_through:
        # Pruned weights keep their dense value (they do not move), and the
        # rule scores every weight with the raw gradient (taken at W * M
        # through the identity); the optimizer only sees the masked one.
        u = jnp.where(m, u, 0.0)
      x = ScoreInputs(_finite(w), _finite(w + u), g, m, local_step, is_last, total)
      return score_leaf(
        rule, hp, x, stats, score, resurrect=resurrect, store=functools.partial(store, j)
      )

    def prune(carry):
      masks_l, scores_l, stats_l, tau, grads_l, inner_state = carry
      masked_l = [_masked(m, g) for m, g in zip(masks_l, grads_l)]
      # The rule needs this step's inner update (W + u). It is computed here
      # again rather than passed in: a loop operand is a buffer, and passing
      # ``u`` would materialise it on every call, also outside the window,
      # where the update otherwise fuses into one pass with the emit below.
      # The inner state and the gradient ride in the loop's state (the
      # latter masked with the mask the loop starts from), so that the update
      # after the loop reads them there: no copy of Adam's moments, nor of
      # the old mask.
      u, _ = inner_step(masked_l, inner_state)
      u = u.fast if lookahead else u
      # The rule scores with the gradient of the masked network, as the
      # optimizer's; straight-through with the raw one.
      scored = grads_l if straight_through else masked_l
      leaves = zip(masks_l, kept(weights), kept(u), scored, scores_l, *stats_l)
      new_stats, new_scores = zip(*[leaf_step(j, *xs) for j, xs in enumerate(leaves)])
      if schedule == "cubic":
        keep_ratio = schedules.cubic_keep_ratio(local_step, n_steps, 1.0 - sp)
      else:
        keep_ratio = schedules.exponential_keep_ratio(local_step, length, 1.0 - sp)
      nm_keep = selection.nm_keep_count(keep_ratio, nm, is_last) if nm else None
      select = lambda _: selection.select_masks(
        list(new_scores),
        masks_l,
        keep_ratio,
        scope=scope,
        nm=nm,
        nm_keep=nm_keep,
        resurrect=resurrect,
        signed=rule.signed,
        threshold=threshold,
        # No warm start from the last selection's threshold (state.tau):
        # SEVEN's survivors all score above it and the pruned score 0, so the
        # hint sits at the bottom of an empty gap, where a search started
        # from it took 14-47 passes at MiniLM size against 3-4 cold; cold
        # was faster on smooth scores too (README, Benchmarks).
        return_threshold=True,
        # score_leaf gave pruned weights score 0 already (unsigned rules).
        pruned_filled=not rule.signed,
        **select_kw,
      )
      select_now = ((local_step + 1) % every == 0) | is_last
      new_masks, new_tau = lax.cond(select_now, select, lambda _: (list(masks_l), tau), None)
      return (
        list(new_masks),
        # The scores are kept in float32 whatever stats_dtype is: the ones
        # the selection ranks are the ones the state keeps (one buffer).
        list(new_scores),
        # score_leaf stored the statistics already.
        [[st[n] for st in new_stats] for n in range(num_stats)],
        jnp.asarray(new_tau, jnp.float32).reshape(jnp.shape(tau)),
        masked_l,
        # Not the same value for JAX (which would forward an unchanged loop
        # state around the loop and make XLA copy it); one buffer for XLA.
        lax.optimization_barrier(inner_state),
      )

    carry = (
      jax.tree.leaves(masks),
      jax.tree.leaves(state.scores),
      [jax.tree.leaves(t) for t in state.stats],
      jnp.asarray(state.tau, jnp.float32),
      kept(updates),
      state.inner_state,
    )
    masks_l, scores_l, stats_l, new_tau, grads_l, inner_state = run_if(in_window, prune, carry)
    # Inside the window the loop masked the gradient with the mask it started
    # from; outside, that mask is the one it returns.
    grads_l = [_masked(m | in_window, g) for m, g in zip(masks_l, grads_l)]
    inner_updates, inner_state = inner_step(grads_l, inner_state)
    fast_updates = inner_updates.fast if lookahead else inner_updates
    new_masks = as_tree(masks_l)

    # Pruned weights land exactly on 0 once the update is applied; with
    # straight_through they keep their dense value (update 0) inside the
    # window and are zeroed on its last step, when the mask is final.
    if straight_through:
      zero_pruned = ~in_window | is_last
      pruned_update = lambda u_, w: jnp.where(zero_pruned, -w.astype(u_.dtype), jnp.zeros_like(u_))
    else:
      zero_pruned = None
      pruned_update = lambda u_, w: -w.astype(u_.dtype)
    emit = lambda u, p: map_kept(
      lambda m, u_, w: jnp.where(m, u_, pruned_update(u_, w)), new_masks, u, p
    )
    if lookahead:  # fast and slow weights alike
      final = optax.LookaheadParams(
        emit(fast_updates, params.fast), emit(inner_updates.slow, params.slow)
      )
    else:
      final = emit(inner_updates, params)
    new_state = state_type(
      optax.safe_increment(state.count),
      new_masks,
      tuple(as_tree(s) for s in stats_l),
      as_tree(scores_l),
      _zero_schedule_free_z(inner_state, new_masks, zero_pruned),
      state.layout,
      new_tau,
    )
    return final, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def pruning_mask(
  inner: optax.GradientTransformation,
  method: str = "seven",
  sparsity: Optional[float] = None,
  start_step: int = 0,
  pruning_steps: int = 1000,
  prunable: PrunableSpec = None,
  *,
  scope: str = "global",
  resurrect: Optional[bool] = None,
  pattern: Optional[str] = None,
  update_every: Optional[int] = None,
  schedule: str = "cubic",
  stats_dtype="float32",
  ties: Optional[str] = None,
  straight_through: bool = False,
  **method_kwargs,
) -> optax.GradientTransformationExtraArgs:
  r"""Prunes while fine-tuning with any registered dynamic method.

  The same loop as :func:`seven_jax.seven_mask`, with the score rule chosen
  by name (``seven_jax.methods("dynamic")``; see :mod:`seven_jax.scores`). On
  the ``t``-th ``update`` call: the gradient is masked and ``inner`` computes
  ``u``; inside the window ``start_step <= t < start_step + N - 1`` the rule
  updates its statistics and scores from ``W``, ``W + u`` and ``g``, and every
  ``update_every`` steps (and on the last window step) the mask keeps the
  best weights at the keep ratio of the schedule,

  .. math::

     r_p = r_f + (1 - r_f)\left(1 - \frac{p+1}{N}\right)^3
     \quad\text{(cubic)}, \qquad r_p = r_f^{(p+1)/(N-1)}
     \quad\text{(exponential)},

  with ``r_f = 1 - sparsity``; the emitted update is ``where(M, u, -W)`` so
  pruned weights are exactly 0.

  Args:
    inner: the optimizer of the kept weights (``optax.lookahead(...)`` works
      too, with ``optax.LookaheadParams`` as params: fast and slow weights
      are both exactly 0 where pruned; so does
      ``optax.contrib.schedule_free``, whose evaluated weights are then 0
      where pruned).
    method: a registered dynamic method name, or a :class:`ScoreRule`.
    sparsity: final fraction of pruned weights in ``[0, 1)``; with ``pattern``
      it defaults to (and must equal) ``1 - N/M``.
    start_step: dense steps before pruning starts (an integer >= 0).
    pruning_steps: ``N`` (an integer >= 2), length of the schedule.
    prunable: as in :func:`seven_jax.seven_mask`.
    scope: ``"global"`` (one budget over all prunable weights) or
      ``"per_leaf"`` (every leaf at the same ratio).
    resurrect: may pruned weights come back? ``None`` takes the method's
      default (True for ``platon``, ``movement``, ``soft_movement``, whose
      originals re-score pruned weights; False otherwise).
    pattern: ``"N:M"`` (e.g. ``"2:4"``, ``"4:8"``): instead of top-k, keep the
      ``N`` best of every ``M`` consecutive weights along axis 0 (the input
      dimension of a Flax ``(in, out)`` kernel); during the ramp ``floor(r_p M)``
      per group. Every prunable leaf's axis 0 must be divisible by ``M``.
    update_every: mask period in window steps; ``None`` takes the method's
      (``delta_t`` for ``platon``, else 1).
    schedule: ``"cubic"`` or ``"exponential"``.
    stats_dtype: storage of the rule's statistics, ``"float32"`` or
      ``"bfloat16"`` (or the dtypes; half their bytes, stochastically
      rounded; see :mod:`seven_jax.storage`). The scores stay float32 and
      computation is float32 either way.
    ties: how the threshold treats scores tied with the k-th
      (:func:`seven_jax.selection.select_masks`); ``None`` takes its default.
    straight_through: keep the dense weights inside the window, as movement
      pruning does (Sanh et al. 2020), so that a pruned weight can come back.
      Inside the window the emitted update of a pruned weight is 0 (it keeps
      its dense value ``W``) instead of ``-W``, and the rule scores every
      weight with the dense ``W`` and the *raw* gradient (the inner
      optimizer still gets the masked one, so pruned weights do not move).
      The loss must then apply the mask itself, with the identity gradient:
      ``loss(seven_jax.straight_through_masked(params, seven_jax.masks(state)))``
      (:func:`straight_through_masked`). On the window's last step, and
      whenever the mask is final (after the window), pruned weights get
      ``-W`` as usual: after the window every pruned weight is exactly 0.
      Inside the window ``params`` themselves are *not* sparse: export or
      evaluate through the mask.
    **method_kwargs: the method's hyper-parameters, e.g. ``b1``, ``b2`` for
      ``seven`` and ``platon``; unknown names raise. Under
      ``optax.inject_hyperparams`` they are static (``sparsity``,
      ``start_step``, ``pruning_steps`` and ``update_every`` can be injected;
      pass ``static_args=("method", "prunable")``). Injected values out of
      range are clipped where they are used: ``sparsity`` into
      ``[0, 1 - 1/D]`` (``D`` prunable weights), ``start_step`` to
      ``>= 0``, ``pruning_steps`` to ``>= 2``, ``update_every`` to ``>= 1``.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` with a
    :class:`PruningState`; read the masks with :func:`seven_jax.masks`.

  Examples:
    >>> import jax.numpy as jnp, optax, seven_jax
    >>> params = {"w": jnp.arange(1.0, 9.0).reshape(4, 2)}
    >>> tx = seven_jax.pruning_mask(optax.sgd(0.1), "magnitude", pattern="2:4",
    ...                             pruning_steps=2)
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.ones((4, 2))}, state, params)
    >>> seven_jax.masks(state)["w"].sum(axis=0).tolist()
    [2, 2]
  """
  rule = get_rule(method)
  if set(method_kwargs) == {"method_kwargs"} and isinstance(method_kwargs["method_kwargs"], dict):
    # optax.inject_hyperparams binds **kwargs as one static dict argument.
    method_kwargs = method_kwargs["method_kwargs"]
  hp = resolve_hparams(rule, method_kwargs)
  nm = selection.parse_pattern(pattern)
  if nm is not None:
    implied = 1.0 - nm[0] / nm[1]
    if sparsity is None:
      sparsity = implied
    elif not validation.is_traced(sparsity):
      if abs(validation.check_fraction("sparsity", sparsity) - implied) > 1e-6:
        raise ValueError(
          f"sparsity={sparsity!r} contradicts pattern={pattern!r}, "
          f"which prunes exactly {implied:g}; drop one of them."
        )
  if sparsity is None:
    raise ValueError(
      "sparsity is required (a float in [0, 1)) unless a pattern such as '2:4' is given."
    )
  check_schedule_args(sparsity, start_step, pruning_steps)
  for hp_name in ("b1", "b2"):
    if hp_name in hp:
      validation.check_fraction(hp_name, hp[hp_name])
  for hp_name in ("signed_first_moment", "correction"):
    if hp_name in hp:
      validation.check_bool(hp_name, hp[hp_name])
  hp = clip_traced_rates(hp)
  validation.check_choice("scope", scope, selection.SCOPES)
  validation.check_choice("schedule", schedule, SCHEDULES)
  if update_every is None:
    update_every = rule.update_every(hp)
  validation.check_int("update_every", update_every, 1)
  threshold = rule.threshold(hp)
  if threshold is not None and nm is not None:
    raise ValueError(
      "a fixed score threshold and an N:M pattern exclude each "
      "other; pass one of threshold= or pattern=."
    )
  resurrect = rule.resurrect if resurrect is None else validation.check_bool("resurrect", resurrect)
  return build_transform(
    inner,
    rule,
    hp,
    sparsity=sparsity,
    start_step=start_step,
    pruning_steps=pruning_steps,
    prunable=prunable,
    scope=scope,
    resurrect=resurrect,
    update_every=update_every,
    nm=nm,
    schedule=schedule,
    threshold=threshold,
    stats_dtype=stats_dtype,
    ties=check_ties(ties),
    straight_through=validation.check_bool("straight_through", straight_through),
  )


def straight_through_masked(params: Any, masks: Any) -> Any:
  r"""``W * M`` in the forward pass with the identity gradient (straight-through).

    .. math::

       \operatorname{ste}(W) = W + \operatorname{stop\_gradient}(W \odot M - W),
       \qquad rac{\partial L(\operatorname{ste}(W))}{\partial W}
       =
  abla Lig|_{W \odot M},

    so the gradient of every weight, pruned or not, is the gradient of the loss
    at the masked weights: what :func:`pruning_mask` with
    ``straight_through=True`` scores pruned weights by. Pruned entries are
    exactly 0 in the forward pass (``W - W``), kept ones exactly ``W``.

    Args:
      params: the (dense) parameters.
      masks: bools shaped like ``params`` (``True`` = kept), e.g.
        :func:`seven_jax.masks` of the optimizer state; an
        :class:`optax.MaskedNode` in it (a leaf the pruning state does not
        cover) leaves that part of ``params`` as it is.

    Returns:
      A tree like ``params``.
  """

  def leaf(m, p):
    masked = _masked(m, p)
    return p + lax.stop_gradient(masked - p)

  return map_kept(leaf, masks, params)


def check_schedule_args(sparsity, start_step, pruning_steps) -> None:
  """The checks shared by ``seven_mask`` and ``pruning_mask`` (traced values pass)."""
  validation.check_fraction("sparsity", sparsity)
  validation.check_int("start_step", start_step, 0)
  validation.check_int("pruning_steps", pruning_steps, 2)


# --------------------------------------------------------------- fixed mask


def fixed_mask(
  inner: optax.GradientTransformation, masks: Any
) -> optax.GradientTransformationExtraArgs:
  """Fine-tunes with a frozen mask; pruned weights are exactly 0 after every step.

  The gradient is masked (the gradient of the masked network ``W * M``), the
  inner optimizer moves the kept weights, and the emitted update is
  ``where(M, u, -W)``, so after ``optax.apply_updates`` every pruned weight is
  exactly 0, also on the first step if the weights were not zeroed yet.

  Args:
    inner: the optimizer of the kept weights.
    masks: pytree of bools shaped like params (``True`` = kept), e.g. from
      :func:`prune_before_finetuning` or :func:`seven_jax.masks`. Leaves that
      are all ``True`` cost nothing in the state (an ``optax.MaskedNode``);
      the others are stored like their parameter (same sharding).
  """
  flat_masks, masks_def = jax.tree.flatten(masks)
  for i, m in enumerate(flat_masks):
    if not validation.is_traced(m):
      dtype = np.asarray(m).dtype
      if dtype != np.bool_:
        path = path_str(jax.tree_util.tree_flatten_with_path(masks)[0][i][0])
        raise TypeError(f"masks must hold bools; the mask of '{path}' has dtype {dtype}.")
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    if type(params).__name__ == "_ParamsPlaceholder":
      return FixedMaskState(
        jnp.zeros([], jnp.int32), params, inner.init(params), placeholder_layout()
      )
    p_def = jax.tree.structure(params)
    if p_def != masks_def:
      raise ValueError(
        f"masks must have the structure of params; params: {p_def}, masks: {masks_def}."
      )
    stored, holes = [], []
    for (path, p), m in zip(
      jax.tree_util.tree_flatten_with_path(params)[0], flat_masks, strict=True
    ):
      if np.shape(p) != np.shape(m):
        raise ValueError(
          f"mask of '{path_str(path)}' has shape {np.shape(m)}, the parameter {np.shape(p)}."
        )
      if not validation.is_traced(m) and bool(np.all(np.asarray(m))):
        stored.append(HOLE)
        holes.append(tuple(np.shape(p)))
      else:
        # Like the parameter (its sharding), holding the given bools.
        stored.append(jnp.logical_and(jnp.ones_like(p, jnp.bool_), m))
    return FixedMaskState(
      jnp.zeros([], jnp.int32), p_def.unflatten(stored), inner.init(params), Layout(tuple(holes))
    )

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(_NO_PARAMS_MSG.format(name="fixed_mask"))
    grads = map_kept(_masked, state.masks, updates)
    u, inner_state = inner.update(grads, state.inner_state, params, **extra_args)
    final = map_kept(lambda m, u_, p: jnp.where(m, u_, -p.astype(u_.dtype)), state.masks, u, params)
    inner_state = _zero_schedule_free_z(inner_state, state.masks)
    return final, state._replace(count=optax.safe_increment(state.count), inner_state=inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
