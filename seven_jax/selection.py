"""From scores to masks: the one selection step every pruning method shares.

Given the scores of the prunable leaves, the current masks and a keep ratio
``r``, a method keeps

* ``scope="global"``: the ``k = floor(r D)`` largest scores over all ``D``
  prunable weights (one pool, the official SEVEN behaviour);
* ``scope="per_leaf"``: the ``floor(r D_l)`` largest of every leaf;
* ``pattern="N:M"``: in every group of ``M`` consecutive weights along the
  input dimension (axis 0 of a Flax ``(in, out)`` kernel), the ``n`` best,
  where ``n`` follows the schedule from ``M`` down to ``N`` (exactly ``N`` on
  the last step);
* ``threshold=tau``: every weight whose score exceeds ``tau`` (soft movement
  pruning); the sparsity is then whatever the scores give.

Without resurrection, weights pruned earlier take the lowest possible score
before selection (0 for non-negative scores, exactly as SEVEN's (E7); the
most negative float for signed scores such as movement, as FORCE's Iterative
SNIP sets them to the minimum) and the new mask is intersected with the old
one, so masks only shrink. Global and per-leaf budgets use the exact counting
threshold of :mod:`seven_jax.threshold`.

Ties at the k-th score. With ``ties="exact"`` (the default) exactly ``k``
weights are kept even when many scores equal the k-th value ``tau`` (dead
inputs, all-zero or all-NaN gradient leaves, constant scores): every score
``> tau`` is kept, and among the scores ``== tau`` the currently kept weights
come first, then the lower flat (row-major) index, leaves in the order given
(the order of ``jax.tree.leaves`` of the params in the engine). This is the
order :func:`nm_masks` uses inside its groups. With ``ties="keep_all"``
every score ``>= tau`` is kept, the official ``S >= topk(S, k)[-1]`` rule
(then more than ``k`` weights may survive). The tie-break costs one more fused
pass over the scores (and one over the masks of the leaves that hold a tie),
and only runs (a ``lax.cond``) when the counting threshold reports more than
``k`` scores ``>= tau``. That is not rare at scale: training on random
batches, 3 of 16 in-window BERT-base steps had a tied k-th score, none of 40
at MiniLM size (``python -m benchmarks.tie_frequency``).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from seven_jax import schedules
from seven_jax.threshold import (
  canonicalize_scores,
  count_greater,
  row_counts_equal,
  run_in_auto_axes,
  threshold_stats,
)

__all__ = [
  "parse_pattern",
  "check_pattern_shapes",
  "nm_masks",
  "select_masks",
  "SCOPES",
  "TIES",
  "LOWEST_SCORE",
  "exact_topk_masks",
  "exact_topk_cut",
  "cut_masks",
  "keep_every_tie",
  "TieCut",
]

SCOPES = ("global", "per_leaf")
TIES = ("exact", "keep_all")
LOWEST_SCORE = np.float32(-np.finfo(np.float32).max)
"""Score given to pruned weights of signed methods (canonical, see threshold)."""


def parse_pattern(pattern: Optional[str]) -> Optional[tuple[int, int]]:
  """``"2:4"`` -> ``(2, 4)``; ``None`` stays ``None``.

  Raises:
    ValueError: not of the form ``"N:M"`` with integers ``0 < N < M``.
  """
  if pattern is None:
    return None
  try:
    n_str, m_str = str(pattern).split(":")
    n, m = int(n_str), int(m_str)
  except ValueError:
    raise ValueError(
      f"pattern must be None or 'N:M' such as '2:4' or '4:8', got {pattern!r}."
    ) from None
  if not 0 < n < m:
    raise ValueError(f"pattern 'N:M' needs 0 < N < M, got {pattern!r}.")
  return n, m


def check_pattern_shapes(nm: Optional[tuple[int, int]], leaves, paths) -> None:
  """Every prunable leaf's axis 0 must split into groups of ``M``."""
  if nm is None:
    return
  n, m = nm
  for leaf, path in zip(leaves, paths):
    shape = np.shape(leaf)
    if len(shape) == 0 or shape[0] % m:
      raise ValueError(
        f"pattern '{n}:{m}' needs the input dimension (axis 0) of every "
        f"prunable leaf to be divisible by {m}, but leaf '{path}' has shape "
        f"{tuple(shape)}. Leave it out with `prunable` or pick another M."
      )


def nm_masks(score: jax.Array, mask: jax.Array, n_keep, m: int) -> jax.Array:
  """Keeps the ``n_keep`` best scores in every group of ``m`` along axis 0.

  Ties are broken in favour of weights that are currently kept, then of the
  lower index, so that exactly ``n_keep`` weights per group survive. The rank
  is computed by pairwise comparison inside each group (``m <= 8`` in
  practice), which costs ``m`` times the leaf size and no sort.
  """
  shape = score.shape
  groups = score.reshape(shape[0] // m, m, -1)
  kept = mask.reshape(shape[0] // m, m, -1)
  si, sj = groups[:, :, None, :], groups[:, None, :, :]
  ki, kj = kept[:, :, None, :], kept[:, None, :, :]
  idx = jnp.arange(m)
  before = (idx[None, :] < idx[:, None])[None, :, :, None]  # j before i
  beats = (sj > si) | ((sj == si) & ((kj & ~ki) | ((kj == ki) & before)))
  rank = jnp.sum(beats, axis=2)  # how many weights of the group beat weight i
  return (rank < n_keep).reshape(shape)


def select_masks(
  scores: Sequence[jax.Array],
  masks: Sequence[jax.Array],
  keep_ratio,
  *,
  scope: str = "global",
  nm: Optional[tuple[int, int]] = None,
  nm_keep=None,
  resurrect: bool = False,
  signed: bool = False,
  threshold=None,
  ties: str = "exact",
  hint=None,
  return_threshold: bool = False,
  barriers: Optional[bool] = None,
  pruned_filled: bool = False,
):
  """New boolean masks of the prunable leaves.

  Args:
    scores: canonical float32 scores, one per prunable leaf (higher = keep);
      other dtypes (float64 under ``jax_enable_x64``) are canonicalised
      first (see :func:`seven_jax.threshold.canonicalize_scores`).
    masks: the current masks of those leaves.
    keep_ratio: fraction of weights to keep (may be traced).
    scope: ``"global"`` or ``"per_leaf"``; ignored with ``nm`` or ``threshold``.
    nm: ``(N, M)`` for an N:M pattern, or ``None`` for unstructured top-k.
    nm_keep: weights kept per group of ``M`` (may be traced); defaults to
      ``N``.
    resurrect: if False, pruned weights cannot come back.
    signed: the scores may be negative (pruned weights then score lowest).
    threshold: keep ``score > threshold`` instead of a budget.
    ties: ``"exact"`` (keep exactly ``k``; tie-break in the module doc) or
      ``"keep_all"`` (keep every score equal to the k-th, as the official
      code). Budgets only; N:M is always exact.
    hint: warm start of the budget threshold (global: a scalar, per_leaf: one
      value per leaf), e.g. the ``tau`` this function returned at the
      previous step; NaN for none. The masks do not depend on it. Measured
      slower than a cold search on smooth scores, and much slower (14-47
      passes) on a pruning engine's scores, where the last threshold is the
      edge of an empty gap (the engine passes none).
    return_threshold: also return the threshold: a scalar (global), one per
      leaf (per_leaf), ``threshold`` itself, or NaN for N:M.
    barriers: passed to :func:`seven_jax.threshold.kth_largest_threshold`.
    pruned_filled: without ``resurrect``, the caller promises that pruned
      weights already score the fill value (0, or the lowest score when
      ``signed``), as the pruning engine's scores do: the scores are then
      not masked again, which saves a materialised copy of every score.

  Returns:
    The list of masks, or ``(masks, tau)`` with ``return_threshold``.
  """
  if ties not in TIES:
    raise ValueError(f"ties must be one of {TIES}, got {ties!r}.")
  if threshold is None and nm is None and scope not in SCOPES:
    raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}.")
  masks = list(masks)
  scores = [
    s if getattr(s, "dtype", None) == jnp.float32 else canonicalize_scores(s) for s in scores
  ]
  if not resurrect and not pruned_filled:
    fill = LOWEST_SCORE if signed else np.float32(0.0)
    scores = [jnp.where(m, s, fill) for s, m in zip(scores, masks)]
  tau = jnp.float32(jnp.nan)
  # Without resurrection every path ands its new masks with the old ones
  # where it writes them (the budget paths inside their tie ``cond``, where
  # the ``and`` fuses into the comparison instead of being a pass of its own).
  restrict = _and_with if not resurrect else lambda kept, masks: list(kept)
  if threshold is not None:
    kept = restrict([s > threshold for s in scores], masks)
    tau = jnp.asarray(threshold, jnp.float32)
  elif nm is not None:
    n, m = nm
    n_keep = n if nm_keep is None else nm_keep
    kept = restrict([nm_masks(s, mk, n_keep, m) for s, mk in zip(scores, masks)], masks)
  elif scope == "global":
    kept, tau = _budget_masks(scores, masks, keep_ratio, ties, hint, barriers, restrict)
  else:
    kept, taus = [], []
    hints = [None] * len(scores) if hint is None else jnp.asarray(hint, jnp.float32).reshape(-1)
    for i, (s, mk) in enumerate(zip(scores, masks)):
      leaf_kept, leaf_tau = _budget_masks([s], [mk], keep_ratio, ties, hints[i], barriers, restrict)
      kept.append(leaf_kept[0])
      taus.append(leaf_tau)
    tau = jnp.stack(taus) if taus else jnp.zeros((0,), jnp.float32)
  return (kept, tau) if return_threshold else kept


def _and_with(kept, masks) -> list:
  return [k & m for k, m in zip(kept, masks)]


def _budget_masks(scores, masks, keep_ratio, ties, hint, barriers, restrict):
  """Masks of the global top-``floor(r D)`` of ``scores`` and the threshold.

  Zero-size leaves take no part (their masks stay empty); with no scores at
  all the threshold is ``+inf``. ``restrict(kept, masks)`` is applied inside
  each branch of the tie ``cond`` (no resurrection: :func:`_and_with`): after
  it, the ``and`` was a pass of its own over every mask (~0.8 ms at MiniLM
  size), inside it fuses into the comparison that writes the mask.
  """
  total = int(sum(int(np.prod(s.shape)) for s in scores))
  live = [i for i, s in enumerate(scores) if int(np.prod(s.shape))]
  kept = [jnp.zeros(s.shape, jnp.bool_) for s in scores]
  if not live:
    return kept, jnp.float32(jnp.inf)
  k = schedules.keep_count(keep_ratio, total)
  live_scores = [scores[i] for i in live]
  st = threshold_stats(live_scores, k, hint=hint, barriers=barriers)

  live_masks = [jnp.asarray(masks[i], jnp.bool_) for i in live]
  if ties == "keep_all":
    live_kept = restrict([s >= st.tau for s in live_scores], live_masks)
  else:
    # Only the cut (a few scalars) depends on the tie cond; the masks are
    # one pass after it. Masks written inside a cond's branches lived in a
    # temporary buffer and were copied into the state afterwards: on CPU
    # that buffer is fresh memory on every call (page faults: ~2,600 per
    # update at MiniLM size, ~10 ms of kernel time) plus the copy.
    cut = lax.cond(
      st.kept == k,
      lambda: keep_every_tie(len(live_scores)),
      lambda: exact_topk_cut(live_scores, live_masks, st.tau, k, kept=st.kept, barriers=barriers),
    )
    live_kept = restrict(cut_masks(live_scores, live_masks, st.tau, cut), live_masks)
  for i, x in zip(live, live_kept):
    kept[i] = x
  return kept, st.tau


def _as_rows(x):
  """A leaf as a ``(rows, last axis)`` array: row-major order is kept."""
  shape = tuple(x.shape)
  cols = shape[-1] if shape else 1
  return x.reshape(int(np.prod(shape[:-1])) if len(shape) > 1 else 1, cols)


class TieCut(NamedTuple):
  """Which of the scores tied with ``tau`` an exact top-k keeps.

  The ties of one class (``in_pref``: preferred, else the others) are kept
  in leaf order, then row-major order, up to row-major position ``last[i]``
  of leaf ``i`` (-1: none of that leaf); every tie of the preferred class is
  kept when the cut falls in the other class, none of the other class when
  it falls in the preferred one."""

  in_pref: jax.Array
  last: jax.Array


def keep_every_tie(num_leaves: int) -> TieCut:
  """The cut that keeps every score ``>= tau``."""
  return TieCut(jnp.bool_(False), jnp.full((num_leaves,), np.iinfo(np.int32).max, jnp.int32))


def exact_topk_masks(scores, prefer, tau, k, *, kept=None, barriers=None) -> list[jax.Array]:
  """Exactly ``k`` weights: every score ``> tau`` and the first of the scores
  ``== tau`` in the tie order (``prefer`` first, then lower row-major index,
  leaves in the given order).

  ``tau`` must be the k-th largest score (as :func:`threshold_stats` returns
  it when it reports more than ``k`` scores ``>= tau``): see
  :func:`exact_topk_cut` and :func:`cut_masks`.
  """
  cut = exact_topk_cut(scores, prefer, tau, k, kept=kept, barriers=barriers)
  return cut_masks(scores, prefer, tau, cut)


def exact_topk_cut(scores, prefer, tau, k, *, kept=None, barriers=None) -> TieCut:
  """The :class:`TieCut` of an exact top-``k`` at the k-th largest ``tau``.

  One fused pass counts the ties ``== tau`` of every row (float indicators,
  :func:`seven_jax.threshold.row_counts_equal`); only leaves that hold a tie
  read their ``prefer`` mask to split them by class (a ``lax.cond`` per
  leaf: on XLA's CPU backend a count that reads a boolean array materialises
  a score-sized temporary first). ``kept``, the number of scores ``>= tau``
  if known (:class:`seven_jax.threshold.ThresholdStats`; ``-1`` or ``None``
  for unknown), saves the pass that counts the scores above ``tau``. A
  cumulative sum over the row counts then finds the row where the budget
  runs out, and one row per leaf is read to find the column. Every step is a
  reduction, a one-row gather or a conditional, so it stays
  sharding-friendly.

  The three row counts (above, preferred ties, other ties) used to be
  compare-and-selects of every score, each materialised before its sum: a
  selection with a tie at MiniLM size took 63.2 ms against 27.3 ms without
  one, now 30.9 ms (``python -m benchmarks.selection_update minilm 63a67eb``).
  """
  scores = [jnp.asarray(s) for s in scores]
  prefer = [jnp.asarray(p, jnp.bool_) for p in prefer]
  kept = jnp.int32(-1) if kept is None else jnp.asarray(kept, jnp.int32)
  args = (scores, prefer, jnp.asarray(tau, jnp.float32), jnp.asarray(k, jnp.int32), kept)
  out = (jax.sharding.PartitionSpec(), jax.sharding.PartitionSpec())
  cut = lambda a: tuple(_exact_topk_cut(*a, barriers=barriers))
  return TieCut(*run_in_auto_axes(cut, args, out))


def _exact_topk_cut(scores, prefer, tau, k, kept, *, barriers) -> TieCut:
  views = [_as_rows(s) for s in scores]
  pviews = [_as_rows(p) for p in prefer]
  one, zero = np.float32(1), np.float32(0)

  def row_count(x):  # float32 per-row sums, exact below 2**24 per row
    if x.shape[1] >= 1 << 24:
      return jnp.sum(x, axis=1, dtype=jnp.int32)
    return jnp.sum(jnp.where(x, one, zero), axis=1).astype(jnp.int32)

  ties = [row_counts_equal(v, tau, barriers=barriers) for v in views]

  def preferred(v, p, t):
    return lax.cond(
      jnp.sum(t, dtype=jnp.int32) > 0,
      lambda: row_count((v == tau) & p),
      lambda: jnp.zeros_like(t),
    )

  tie_pref = [preferred(v, p, t) for v, p, t in zip(views, pviews, ties)]
  tie_rest = [t - tp for t, tp in zip(ties, tie_pref)]
  n_ties = sum(jnp.sum(t, dtype=jnp.int32) for t in ties)
  # kept = #{s >= tau} = n_above + n_ties when the search knows it.
  n_above = lax.cond(
    kept >= 0,
    lambda: kept - n_ties,
    lambda: count_greater(scores, tau, barriers=barriers),
  )
  n_pref = sum(jnp.sum(t, dtype=jnp.int32) for t in tie_pref)
  need = jnp.clip(k - n_above, 0, None)
  # Which tie class the budget runs out in, and how many of it to keep.
  in_pref = need < n_pref
  n = jnp.where(in_pref, need, need - n_pref)
  rows_x = jnp.concatenate([jnp.where(in_pref, a, b) for a, b in zip(tie_pref, tie_rest)])
  cum = jnp.cumsum(rows_x, dtype=jnp.int32)
  offsets = np.cumsum([0] + [v.shape[0] for v in views])
  g = jnp.clip(jnp.searchsorted(cum, n, side="left"), 0, offsets[-1] - 1).astype(jnp.int32)
  n_in_row = n - (cum[g] - rows_x[g])
  leaf_of_g = (jnp.searchsorted(jnp.asarray(offsets[1:]), g, side="right")).astype(jnp.int32)
  # n == 0: nothing of that class is kept.
  leaf_of_g = jnp.where(n > 0, leaf_of_g, -1)
  row_of_g = g - jnp.asarray(offsets[:-1], jnp.int32)[jnp.clip(leaf_of_g, 0, len(views) - 1)]
  last = []
  for i, (v, p) in enumerate(zip(views, pviews)):
    r = jnp.clip(g - int(offsets[i]), 0, v.shape[0] - 1)[None]
    row = jnp.take(v, r, axis=0, mode="clip")[0]
    prow = jnp.take(p, r, axis=0, mode="clip")[0]
    x = (row == tau) & jnp.where(in_pref, prow, ~prow)
    c = jnp.cumsum(x.astype(jnp.int32), dtype=jnp.int32)
    col = jnp.argmax(c >= n_in_row).astype(jnp.int32)
    # Leaves before the cut keep every tie of the class, after it none.
    whole = np.int32(np.iinfo(np.int32).max)
    at = row_of_g * np.int32(v.shape[1]) + col
    last.append(jnp.where(i < leaf_of_g, whole, jnp.where(i == leaf_of_g, at, np.int32(-1))))
  return TieCut(in_pref, jnp.stack(last))


def cut_masks(scores, prefer, tau, cut: TieCut) -> list[jax.Array]:
  """Every score ``> tau`` and the ties ``== tau`` that ``cut`` keeps: one
  elementwise pass per leaf (row-major positions from iotas); under
  explicit sharding the masks keep the scores' partition specs."""
  scores = [jnp.asarray(s) for s in scores]
  prefer = [jnp.asarray(p, jnp.bool_) for p in prefer]
  specs = [getattr(jax.typeof(s).sharding, "spec", None) for s in scores]
  specs = [jax.sharding.PartitionSpec() if x is None else x for x in specs]
  args = (scores, prefer, jnp.asarray(tau, jnp.float32), cut)
  return run_in_auto_axes(lambda a: _cut_masks(*a), args, specs)


def _cut_masks(scores, prefer, tau, cut: TieCut) -> list[jax.Array]:
  out = []
  for i, (s, p) in enumerate(zip(scores, prefer)):
    v, pv = _as_rows(s), _as_rows(p)
    rows = lax.broadcasted_iota(jnp.int32, v.shape, 0)
    cols = lax.broadcasted_iota(jnp.int32, v.shape, 1)
    first = rows * np.int32(v.shape[1]) + cols <= cut.last[i]
    keep_tie = jnp.where(pv, jnp.where(cut.in_pref, first, True), ~cut.in_pref & first)
    out.append(((v > tau) | ((v == tau) & keep_tie)).reshape(s.shape))
  return out


def nm_keep_count(keep_ratio, nm: tuple[int, int], is_last) -> jax.Array:
  """Weights kept per group on a schedule step: ``floor(r M)`` clipped to
  ``[N, M]``, and exactly ``N`` on the last step."""
  n, m = nm
  ramp = jnp.clip(jnp.floor(jnp.asarray(keep_ratio, jnp.float32) * m), n, m).astype(jnp.int32)
  return jnp.where(is_last, jnp.int32(n), ramp)
