"""One pruning engine for every dynamic method: ``pruning_mask``.

:func:`pruning_mask` wraps an optax optimizer exactly as
:func:`seven_jax.seven_mask` does (which is this engine with the ``"seven"``
rule) and takes the score rule by name from :mod:`seven_jax.scores`; the
selection step is :func:`seven_jax.selection.select_masks`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from seven_jax import schedules, selection, storage, transform
from seven_jax.prunable import PrunableSpec, path_str, resolve_prunable
from seven_jax.scores import ScoreInputs, ScoreRule, get_rule, resolve_hparams
from seven_jax.threshold import canonicalize_scores

__all__ = ["pruning_mask", "PruningState"]

_SCHEDULES = ("cubic", "exponential")


class PruningState(NamedTuple):
  """State of :func:`pruning_mask`. Every field is an array (no ``None``).

  Attributes:
    count: int32, number of ``update`` calls so far.
    masks: bool, shaped like params for prunable leaves (``True`` = kept);
      for the others a static :class:`seven_jax.transform.AllKept` that
      records the shape at no cost (:func:`seven_jax.masks` expands it).
    stats: tuple of the rule's statistics, each a params-shaped tree
      (``stats_dtype`` for prunable leaves, a 0-d float32 placeholder for the
      others).
    scores: scores, same layout and dtype.
    inner_state: state of the wrapped optimizer.
  """

  count: jax.Array
  masks: Any
  stats: tuple
  scores: Any
  inner_state: Any


transform._MASK_STATE_TYPES.append(PruningState)


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _check_range(name, value, low, high):
  if not _is_concrete(value):
    return
  v = float(np.asarray(value))
  if not (low <= v < high) or not np.isfinite(v):
    raise ValueError(f"{name} must be in [{low}, {high}), got {value!r}.")


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
  pack: Optional[Callable] = None,
  unpack: Optional[Callable] = None,
  name: str = "pruning_mask",
) -> optax.GradientTransformationExtraArgs:
  """The engine. ``pack(count, masks, stats, scores, inner_state)`` builds the
  state and ``unpack(state)`` reads those five back; by default the state is a
  :class:`PruningState`. Arguments are assumed checked."""
  inner = optax.with_extra_args_support(inner)
  pack = pack or (lambda c, m, st, s, i: PruningState(c, m, tuple(st), s, i))
  unpack = unpack or (lambda s: (s.count, s.masks, s.stats, s.scores, s.inner_state))
  num_stats = rule.num_stats
  final_keep = 1.0 - sparsity
  stats_dtype = storage.check_stats_dtype(stats_dtype)

  def init_fn(params):
    if type(params).__name__ == "_ParamsPlaceholder":
      # optax.tree.map_params probes init with a leafless placeholder.
      return pack(
        jnp.zeros([], jnp.int32), params, (params,) * num_stats, params, inner.init(params)
      )
    spec = resolve_prunable(prunable, params)
    if nm is not None:
      flat, treedef = jax.tree_util.tree_flatten_with_path(params)
      flat_spec = treedef.flatten_up_to(spec)
      selection.check_pattern_shapes(
        nm,
        [p for (_, p), s in zip(flat, flat_spec) if s],
        [path_str(k) for (k, _), s in zip(flat, flat_spec) if s],
      )
    stat = lambda p, s: jnp.zeros(jnp.shape(p), stats_dtype) if s else jnp.zeros((), jnp.float32)
    zeros = lambda: jax.tree.map(stat, params, spec)
    # Non-prunable leaves are never masked: a static AllKept records their
    # shape (for seven_jax.masks) without a byte per weight.
    keep = lambda p, s: (
      jnp.ones(jnp.shape(p), jnp.bool_) if s else transform.AllKept(tuple(jnp.shape(p)))
    )
    return pack(
      jnp.zeros([], jnp.int32),
      jax.tree.map(keep, params, spec),
      tuple(zeros() for _ in range(num_stats)),
      zeros(),
      inner.init(params),
    )

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(transform._NO_PARAMS_MSG.replace("seven_mask", name))
    count, state_masks, state_stats, state_scores, state_inner = unpack(state)
    spec = resolve_prunable(prunable, params)
    treedef = jax.tree.structure(params)
    is_prunable = treedef.flatten_up_to(spec)
    flat_params = treedef.flatten_up_to(params)
    flat_masks = treedef.flatten_up_to(state_masks)
    flat_grads = treedef.flatten_up_to(updates)

    # Gradient of the masked network: pruned coordinates get exactly 0.
    flat_grads = [
      jnp.where(m, g, jnp.zeros_like(g)) if s else g
      for g, m, s in zip(flat_grads, flat_masks, is_prunable)
    ]
    grads = treedef.unflatten(flat_grads)
    inner_updates, inner_state = inner.update(grads, state_inner, params, **extra_args)
    flat_inner = treedef.flatten_up_to(inner_updates)

    idx = [i for i, s in enumerate(is_prunable) if s]
    total = int(sum(np.prod(np.shape(flat_params[i]), dtype=np.int64) for i in idx))
    t = count
    window_end = start_step + pruning_steps - 1
    in_window = (t >= start_step) & (t < window_end)
    local_step = t - start_step
    is_last = local_step == window_end - 1 - start_step

    def prune(operand):
      masks_p, stats_p, s_p = operand
      # Statistics are stored in stats_dtype and computed in float32.
      stats_p = [tuple(x.astype(jnp.float32) for x in st) for st in stats_p]
      s_p = [x.astype(jnp.float32) for x in s_p]
      new_stats, new_s = [], []
      for j, i in enumerate(idx):
        w = flat_params[i].astype(jnp.float32)
        inputs = ScoreInputs(
          param=w,
          weight_after=w + flat_inner[i].astype(jnp.float32),
          grad=flat_grads[i],
          mask=masks_p[j],
          local_step=local_step,
          is_last=is_last,
          total=total,
        )
        st, score = rule.update(hp, inputs, tuple(stats_p[j]), s_p[j])
        score = canonicalize_scores(score)
        if not resurrect and not rule.signed:
          score = jnp.where(masks_p[j], score, 0.0)  # SEVEN's (E7)
        new_stats.append(tuple(st))
        new_s.append(score)

      if schedule == "cubic":
        keep_ratio = schedules.cubic_keep_ratio(local_step, pruning_steps, final_keep)
      else:
        keep_ratio = schedules.exponential_keep_ratio(local_step, pruning_steps - 1, final_keep)

      def select(_):
        nm_keep = selection.nm_keep_count(keep_ratio, nm, is_last) if nm else None
        return selection.select_masks(
          new_s,
          masks_p,
          keep_ratio,
          scope=scope,
          nm=nm,
          nm_keep=nm_keep,
          resurrect=resurrect,
          signed=rule.signed,
          threshold=threshold,
        )

      select_now = ((local_step + 1) % update_every == 0) | is_last
      # The mask is chosen from the float32 scores; only the stored copy is
      # rounded (stochastically, for bfloat16: see seven_jax.storage).
      new_masks = lax.cond(select_now, select, lambda _: list(masks_p), None)
      new_stats = [
        tuple(storage.store(x, stats_dtype, t, (num_stats + 1) * j + n) for n, x in enumerate(st))
        for j, st in enumerate(new_stats)
      ]
      new_s = [
        storage.store(x, stats_dtype, t, (num_stats + 1) * j + num_stats)
        for j, x in enumerate(new_s)
      ]
      return new_masks, new_stats, new_s

    flat_stats = [treedef.flatten_up_to(tree) for tree in state_stats]
    flat_s = treedef.flatten_up_to(state_scores)
    operand = (
      [flat_masks[i] for i in idx],
      [tuple(fs[i] for fs in flat_stats) for i in idx],
      [flat_s[i] for i in idx],
    )
    masks_p, stats_p, s_p = lax.cond(in_window, prune, lambda op: op, operand)
    for j, i in enumerate(idx):
      flat_masks[i], flat_s[i] = masks_p[j], s_p[j]
      for n in range(num_stats):
        flat_stats[n][i] = stats_p[j][n]

    # Pruned weights land exactly on 0 once the update is applied.
    final = []
    for u, p, m, s in zip(flat_inner, flat_params, flat_masks, is_prunable):
      final.append(jnp.where(m, u, -p.astype(u.dtype)) if s else u)

    new_state = pack(
      optax.safe_increment(t),
      treedef.unflatten(flat_masks),
      tuple(treedef.unflatten(fs) for fs in flat_stats),
      treedef.unflatten(flat_s),
      inner_state,
    )
    return treedef.unflatten(final), new_state

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
  stats_dtype=jnp.float32,
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
    inner: the optimizer of the kept weights.
    method: a registered dynamic method name, or a :class:`ScoreRule`.
    sparsity: final fraction of pruned weights in ``[0, 1)``; with ``pattern``
      it defaults to (and must equal) ``1 - N/M``.
    start_step: dense steps before pruning starts.
    pruning_steps: ``N`` (>= 2), length of the schedule.
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
    stats_dtype: storage of the rule's statistics and scores, ``jnp.float32``
      or ``jnp.bfloat16`` (half the bytes, stochastically rounded; see
      :mod:`seven_jax.storage`). Computation is float32 either way.
    **method_kwargs: the method's hyper-parameters, e.g. ``b1``, ``b2`` for
      ``seven`` and ``platon``; unknown names raise. Under
      ``optax.inject_hyperparams`` they are static (``sparsity``,
      ``start_step`` and ``pruning_steps`` can be injected; pass
      ``static_args=("method", "prunable")``).

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
    elif _is_concrete(sparsity) and abs(float(sparsity) - implied) > 1e-6:
      raise ValueError(
        f"sparsity={sparsity!r} contradicts pattern={pattern!r}, "
        f"which prunes exactly {implied:g}; drop one of them."
      )
  if sparsity is None:
    raise ValueError(
      "sparsity is required (a float in [0, 1)) unless a pattern such as '2:4' is given."
    )
  _check_range("sparsity", sparsity, 0.0, 1.0)
  for name in ("b1", "b2"):
    if name in hp:
      _check_range(name, hp[name], 0.0, 1.0)
  if _is_concrete(start_step) and int(np.asarray(start_step)) < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step!r}.")
  if _is_concrete(pruning_steps) and int(np.asarray(pruning_steps)) < 2:
    raise ValueError(f"pruning_steps must be >= 2, got {pruning_steps!r}.")
  if scope not in selection.SCOPES:
    raise ValueError(f"scope must be one of {selection.SCOPES}, got {scope!r}.")
  if schedule not in _SCHEDULES:
    raise ValueError(f"schedule must be one of {_SCHEDULES}, got {schedule!r}.")
  if update_every is None:
    update_every = rule.update_every(hp)
  if _is_concrete(update_every) and int(np.asarray(update_every)) < 1:
    raise ValueError(f"update_every must be >= 1, got {update_every!r}.")
  threshold = rule.threshold(hp)
  if threshold is not None and nm is not None:
    raise ValueError(
      "a fixed score threshold and an N:M pattern exclude each "
      "other; pass one of threshold= or pattern=."
    )
  resurrect = rule.resurrect if resurrect is None else bool(resurrect)
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
  )
