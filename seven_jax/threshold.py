"""Exact global top-k thresholds without sorting or concatenating the scores.

Every magnitude-style pruning step asks the same question: given score arrays
:math:`S_1, \\dots, S_L` with :math:`D = \\sum_l |S_l|` entries in all, which
threshold :math:`\\tau` keeps exactly the entries that a descending sort would
keep as the ``k`` largest? The official SEVEN code (and jaxpruner) answers it
by concatenating every score into one vector and calling ``topk``/``sort``:
that costs a copy of all scores and, on CPU, tens of seconds at BERT-base
size (85.5M scores).

Here :math:`\\tau` is found by a *counting select*: we only ever evaluate

.. math::

   C(u) = \\#\\{\\, i : s_i > u \\,\\},

one fused pass over each leaf that returns an integer, so the leaves are never
concatenated and, under ``jax.sharding``, ``C`` is a plain reduction that XLA
turns into a ``psum``.

Fast path (inputs of at least ``2**18`` scores), four passes (rarely five or
six), unrolled:

1. a sorted random sample of ``2**14`` scores gives a first estimate; pass 1
   counts it exactly and pass 2 corrects it with the sample's local density;
2. pass 3 probes the secant of passes 1-2 (in order-preserving integer key
   space, roughly logarithmic in the value); pass 4 probes the next secant
   shifted by a safety margin to the far side of the k-th value, so that
   passes 3-4 bracket it. Passes 3-4 also return per-column counts (each
   leaf seen as a ``(256, n / 256)`` array); when they do not bracket it
   closely enough (heavy-tailed scores) one or two more such passes, each
   under a ``lax.cond`` that runs only when needed, aim past the k-th value
   from the nearest probe;
3. the columns whose counts differ between the tightest bracketing pair hold
   every candidate (a few hundred at BERT-base size); up to 1024 of them are
   gathered and the exact answer is found among those few values.

When six passes do not bracket the answer within 1024 columns (heavy ties,
``k`` at the very ends, odd distributions) the general search below resumes
from the tightest bracket the passes found. It keeps ``lo < hi`` keys with
``G(lo) >= k > G(hi)`` (``G(key) = #{s >= value(key)}``), interpolates the
counts inside the bracket (alternating just below and above the estimate) and
bisects when interpolation stops paying, so it terminates for any input.

The search stops as soon as ``G(lo) == k`` (then ``{s >= lo}`` is exactly the
sorted top-k) or the bracket is one key wide (ties at the k-th value: every
tied entry is kept, exactly as ``s >= topk(s, k)[-1]`` in the official code).

Exactness and speed of the counts. XLA on CPU vectorises float reductions far
better than integer or boolean ones, so ``C`` is computed in float32 with the
division-free indicator ``min(max(s - u, 0) * 2**124, 1)``, exact for
*canonical* scores (finite, and either 0 or at least ``1e-30`` in magnitude;
see :func:`canonicalize_scores`). Every leaf is reduced as a ``(groups,
columns)`` array with at most 256 groups, first over the groups, so each
column sum is an exact float32 integer; columns are added in int32. Each
leaf's reduction sits behind an ``optimization_barrier`` so that XLA cannot share one materialised broadcast
of ``u`` between all leaves of the same shape (that sharing made every pass
3-5x slower than a plain ``jnp.sum``).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
  "canonicalize_scores",
  "kth_largest_threshold",
  "topk_masks",
  "sort_reference_threshold",
  "threshold_and_passes",
]

TINY = np.float32(1e-30)
"""Scores of smaller magnitude are treated as exactly zero."""

_FLOAT32_MAX = np.float32(np.finfo(np.float32).max)
# Integer keys: canonical floats mapped, in order, onto a contiguous int32 range.
# 0.0 -> 0, +TINY -> 1, ..., +FLOAT32_MAX -> _MAX_KEY, +inf -> _MAX_KEY + 1.
_TINY_BITS = int(np.array(TINY, np.float32).view(np.int32))
_MAX_KEY = int(np.array(_FLOAT32_MAX, np.float32).view(np.int32)) - _TINY_BITS + 1
_DEFAULT_SAMPLE = 1 << 14
# Fast path: entries per column of the per-column counts, how many candidate
# columns may be gathered for the exact finish (capacity x group values), and
# the input size from which it pays.
_GROUP = 256
_CAPACITY = 1024
_FAST_MIN = 1 << 18
# Conditional column-counted passes after the four (run only when needed).
_EXTRA_PASSES = 2


def canonicalize_scores(scores: jax.Array) -> jax.Array:
  """Maps scores onto values the counting select handles exactly.

  NaN becomes 0, infinities become the largest finite float32, and values of
  magnitude below ``1e-30`` become 0. Apply it once where scores are produced;
  the resulting order is the same as the input's except among those tiny
  values, which are all tied at zero.
  """
  scores = jnp.asarray(scores, jnp.float32)
  scores = jnp.nan_to_num(scores, nan=0.0, posinf=_FLOAT32_MAX, neginf=-_FLOAT32_MAX)
  return jnp.where(jnp.abs(scores) >= TINY, scores, 0.0)


def _to_key(x: jax.Array) -> jax.Array:
  """Order-preserving map from canonical float32 values to int32 keys."""
  bits = lax.bitcast_convert_type(jnp.abs(x), jnp.int32)
  magnitude = jnp.where(bits == 0, 0, bits - (_TINY_BITS - 1))
  return jnp.where(x < 0, -magnitude, magnitude)


def _from_key(key: jax.Array) -> jax.Array:
  """Inverse of :func:`_to_key`; ``_MAX_KEY + 1`` maps to ``+inf``."""
  magnitude = jnp.abs(key)
  bits = jnp.where(magnitude == 0, 0, magnitude + (_TINY_BITS - 1))
  value = lax.bitcast_convert_type(bits, jnp.float32)
  return jnp.where(key < 0, -value, value)


# Exact indicator of ``s > u`` for canonical s and u, in float arithmetic:
# ``min(max(s - u, 0) * 2**124, 1)``. For distinct canonical values
# ``|s - u| >= 2**-123`` (a multiple of the ulp of 1e-30), which stays a normal
# float after rounding (no flush-to-zero), so the scaled difference is >= 2
# when ``s > u`` (overflow to +inf is fine: min(inf, 1) = 1) and exactly 0 when
# ``s <= u``. No division: on this CPU it is ~2x cheaper than a ratio form.
_SCALE = np.float32(2.0**124)


def _indicator(leaf: jax.Array, block: "_Block", u: jax.Array) -> jax.Array:
  """The exact 0/1 indicator ``s > u`` over one block, as a float32
  ``(groups, columns)`` array (fused into the reduction that consumes it).

  ``lax.optimization_barrier`` gives every block its own copy of the scalars:
  without it XLA shares one broadcast of ``u`` (and of the constants) between
  all leaves of the same shape and materialises it as a full-size array, which
  made every probe 3-5x slower than a plain ``jnp.sum``. The barrier goes
  after the reshape when the block is the whole leaf (a free view; measured
  1.5x faster than reshaping behind the barrier) and before the slice
  otherwise (a barrier after a slice would materialise it).
  """
  consts = (_SCALE, np.float32(0), np.float32(1))
  if block.groups * block.columns == leaf.size:
    x, u, (scale, zero, one) = lax.optimization_barrier((_block_view(leaf, block), u, consts))
  else:
    leaf, u, (scale, zero, one) = lax.optimization_barrier((leaf, u, consts))
    x = _block_view(leaf, block)
  return jnp.minimum(jnp.maximum(x - u, zero) * scale, one)


def _count_greater(leaves: Sequence[jax.Array], u: jax.Array) -> jax.Array:
  """Exact ``#{s > u}`` over all leaves, as int32, for canonical s and u.

  Each leaf is reduced as ``(groups, columns)`` blocks, first over the
  groups: every column sum is at most ``groups`` (an exact float32 integer),
  and columns are added in int32, so counts are exact at any leaf size.
  """
  u = jnp.asarray(u, jnp.float32)
  total = jnp.zeros((), jnp.int32)
  for b in _plan_blocks([int(leaf.size) for leaf in leaves], _GROUP):
    per_column = jnp.sum(_indicator(leaves[b.leaf], b, u), axis=0)
    total = total + jnp.sum(per_column.astype(jnp.int32))
  return total


def _count_at_least(leaves: Sequence[jax.Array], key: jax.Array) -> jax.Array:
  """``G(key) = #{s >= value(key)}``; no canonical value lies between keys."""
  return _count_greater(leaves, _from_key(key - 1))


def _sample(leaves: Sequence[jax.Array], size: int, seed: int) -> jax.Array:
  """A fixed pseudo-random sample, allocated to leaves by their size."""
  sizes = np.array([leaf.size for leaf in leaves], np.int64)
  total = int(sizes.sum())
  rng = np.random.default_rng(seed)
  parts = []
  for leaf, n in zip(leaves, sizes):
    take = int(min(n, max(1, round(size * n / total))))
    # Indices are static (shapes are static), so this is a cheap gather.
    # (With replacement: choice without replacement permutes all n at trace time.)
    idx = np.sort(rng.integers(0, int(n), size=take)) if take < n else np.arange(int(n))
    parts.append(leaf.reshape(-1)[jnp.asarray(idx, jnp.int32)])
  return jnp.concatenate(parts)


def kth_largest_threshold(
  leaves: Sequence[jax.Array],
  k: jax.typing.ArrayLike,
  *,
  sample_size: int = _DEFAULT_SAMPLE,
  max_passes: int = 128,
  seed: int = 0,
) -> jax.Array:
  """Threshold whose mask ``s >= tau`` equals the sorted top-``k`` mask.

  Args:
    leaves: float32 score arrays of any shapes, already canonical (see
      :func:`canonicalize_scores`). They are never concatenated.
    k: number of entries to keep (may be traced). ``k <= 0`` gives ``+inf``
      (keep nothing); ``k >= D`` keeps everything.
    sample_size: size of the random sample that seeds the search.
    max_passes: safety cap on counting passes of the fallback search; its
      bisection guarantees convergence well before it (about 3 probes per bit
      of the 32-bit key range in the worst case).
    seed: seed of the (static) sample positions.

  Returns:
    A float32 scalar ``tau``. ``[s >= tau for s in leaves]`` keeps the same
    entries as ``s >= sort(concat(leaves))[::-1][k - 1]``; in particular every
    entry tied with the k-th largest value is kept, as in the official code.
    ``tau`` itself may lie strictly between the k-th and (k+1)-th values.
  """
  return threshold_and_passes(leaves, k, sample_size=sample_size, max_passes=max_passes, seed=seed)[
    0
  ]


def threshold_and_passes(
  leaves: Sequence[jax.Array],
  k: jax.typing.ArrayLike,
  *,
  sample_size: int = _DEFAULT_SAMPLE,
  max_passes: int = 128,
  seed: int = 0,
  group: int = _GROUP,
  capacity: int = _CAPACITY,
  fast_min: int = _FAST_MIN,
) -> tuple[jax.Array, jax.Array]:
  """:func:`kth_largest_threshold` plus the number of full counting passes.

  Inputs of at least ``fast_min`` scores take the four-probe path
  (:func:`_four_probe_select`), which falls back to the general search
  (:func:`_loop_select`) when it cannot prove its answer; smaller inputs use
  the general search directly. ``group`` and ``capacity`` size the
  candidate gather of the fast path (exposed for tests and benchmarks).
  """
  leaves = [jnp.asarray(leaf, jnp.float32) for leaf in leaves]
  total = sum(int(leaf.size) for leaf in leaves)
  if total == 0:
    raise ValueError("kth_largest_threshold needs at least one score.")
  if total >= 2**31:
    raise ValueError(f"kth_largest_threshold supports fewer than 2**31 scores, got {total}.")
  k = jnp.clip(jnp.asarray(k, jnp.int32), 0, total)
  if total < fast_min:
    tau, passes = _loop_select(leaves, k, total, sample_size, max_passes, seed)
    return jnp.where(k <= 0, jnp.float32(jnp.inf), tau), passes

  blocks = _plan_blocks([int(x.size) for x in leaves], group)
  capacity = min(capacity, sum(b.columns for b in blocks))

  def middle():
    fast_tau, ok, bracket, fast_passes = _four_probe_select(
      leaves, k, total, sample_size, seed, group, capacity
    )
    # The fallback runs only when the fast path failed (a ``cond``, not both),
    # and resumes from the tightest bracket the four passes found.
    tau, extra = lax.cond(
      ok,
      lambda: (fast_tau, jnp.int32(0)),
      lambda: _loop_select(leaves, k, total, sample_size, max_passes, seed, bracket),
    )
    return tau, fast_passes + extra

  # Near either end (keep at most ``capacity``, or drop fewer than
  # ``capacity``: the first steps of every pruning window) a sample cannot
  # resolve the k-th value, but one pass of per-column extremes finds it.
  branch = jnp.where(k <= capacity, 0, jnp.where(total - k < capacity, 1, 2))
  tau, passes = lax.switch(
    branch,
    [
      lambda: _extreme_select(leaves, blocks, k, total, group, capacity, True),
      lambda: _extreme_select(leaves, blocks, k, total, group, capacity, False),
      middle,
    ],
  )
  return jnp.where(k <= 0, jnp.float32(jnp.inf), tau), passes


def _extreme_select(leaves, blocks, k, total, group, capacity, largest):
  """The k-th largest value when ``k`` or ``total - k`` is below ``capacity``.

  One pass computes every column's maximum (``largest``) or minimum. For
  ``k <= capacity`` the k-th largest value lies in one of the ``k`` columns
  with the largest maxima (those ``k`` maxima are ``k`` distinct entries, so
  the k-th largest overall is at least the k-th largest maximum, and every
  larger entry sits in a column whose maximum is larger), so it is the k-th
  largest among the gathered ``capacity`` columns with the largest maxima.
  Symmetrically, the k-th largest is the ``r = total - k + 1``-th smallest,
  found among the columns with the smallest minima. Returns ``(tau, 1)``.
  """
  extremes = []
  for b in blocks:
    view = _block_view(leaves[b.leaf], b)
    extremes.append(jnp.max(view, axis=0) if largest else jnp.min(view, axis=0))
  extremes = jnp.concatenate(extremes)
  _, idx = lax.top_k(extremes if largest else -extremes, capacity)
  cand, real = _gather_columns(leaves, blocks, idx, group)
  # Padding (-FLOAT32_MAX) is never above a real entry, so the r-th smallest
  # of the ``real`` gathered entries is their (real - r + 1)-th largest.
  rank = k if largest else real - (total - k)
  tau, _ = _loop_select(
    [cand.reshape(-1)], rank, capacity * group, min(_DEFAULT_SAMPLE, 1024), 128, 0
  )
  # The search may return any value between the k-th and (k+1)-th gathered
  # entries, but entries that were not gathered can lie in that gap: snap to
  # the k-th value itself.
  return jnp.min(jnp.where(cand >= tau, cand, jnp.inf)), jnp.int32(1)


class _Block(NamedTuple):
  """A static view of part of one leaf as a ``(groups, columns)`` array.

  Entries ``start .. start + groups * columns`` of the flattened leaf, row
  major: column ``j`` holds the ``groups`` entries ``start + g * columns + j``
  (strided). Per-column counts are then a sum over axis 0, which XLA's CPU
  backend vectorises as well as a plain sum (a sum over the last axis of
  short rows was 2-4x slower, and erratically so across row widths).
  """

  leaf: int
  start: int
  groups: int
  columns: int


def _plan_blocks(sizes: Sequence[int], group: int) -> list[_Block]:
  """Splits every leaf into ``(groups, columns)`` blocks with ``groups <= group``.

  A leaf of at most ``group`` entries is one column. A larger leaf is one
  block when ``n`` has a divisor in ``[group / 4, group]`` (always for
  Transformer weight shapes: a free reshape); otherwise a ``(group, n //
  group)`` block plus a one-column block of the ``n % group`` entries left
  over. Every column holds at most ``group`` entries, so its float32 count
  is exact.
  """
  blocks = []
  for i, n in enumerate(sizes):
    if n <= group:
      blocks.append(_Block(i, 0, n, 1))
      continue
    divisor = next((g for g in range(group, max(1, group // 4) - 1, -1) if n % g == 0), None)
    if divisor is not None:
      blocks.append(_Block(i, 0, divisor, n // divisor))
      continue
    columns = n // group
    blocks.append(_Block(i, 0, group, columns))
    blocks.append(_Block(i, columns * group, n % group, 1))
  return blocks


def _block_view(leaf: jax.Array, block: _Block) -> jax.Array:
  flat = leaf.reshape(-1)
  size = block.groups * block.columns
  if size != flat.shape[0]:
    flat = flat[block.start : block.start + size]
  return flat.reshape(block.groups, block.columns)


def _column_counts(leaves, blocks, u):
  """Per-column ``#{s > u}`` of every block, concatenated, and their int32 total.

  One pass over the scores; the column counts (``D / group`` floats) are what
  let the fast path find the columns that hold the candidates afterwards.
  """
  counts, total = [], jnp.zeros((), jnp.int32)
  for b in blocks:
    per_column = jnp.sum(_indicator(leaves[b.leaf], b, u), axis=0)
    # Without the barrier XLA folds the total into a second full reduction of
    # the indicator, which then gets materialised (a copy of the scores).
    per_column = lax.optimization_barrier(per_column)
    counts.append(per_column)
    total = total + jnp.sum(per_column.astype(jnp.int32))
  return jnp.concatenate(counts), total


def _gather_columns(leaves, blocks, idx, group):
  """Columns ``idx`` (global, block-major ids) as a ``(len(idx), group)`` array,
  short columns padded with ``-FLOAT32_MAX`` (never counted by a probe), and
  the number of real (unpadded) entries gathered.

  Every block gathers every slot and keeps its own: ``blocks x len(idx) x
  group`` reads, but no copy of the scores.
  """
  cand = jnp.full((idx.shape[0], group), -_FLOAT32_MAX, jnp.float32)
  real = jnp.zeros((), jnp.int32)
  offset = 0
  for b in blocks:
    view = _block_view(leaves[b.leaf], b)
    local = jnp.clip(idx - offset, 0, b.columns - 1)
    mine = (idx >= offset) & (idx < offset + b.columns)
    cols = view[:, local].T  # (slots, groups)
    if b.groups < group:
      cols = jnp.pad(cols, ((0, 0), (0, group - b.groups)), constant_values=-_FLOAT32_MAX)
    cand = jnp.where(mine[:, None], cols, cand)
    real = real + jnp.sum(mine.astype(jnp.int32)) * b.groups
    offset += b.columns
  return cand, real


def _key_secant(ka, ca, kb, cb, target):
  """Key where the count, linear in the key between ``(ka, ca)`` and
  ``(kb, cb)``, equals ``target`` (counts decrease with the key); may
  extrapolate. Keys are roughly logarithmic in the value, which suits
  heavy-tailed scores, and exactly linear within a binade. The offset from
  ``ka`` is rounded in float32 and added in int32, so nearby keys stay exact.
  """
  dc = (ca - cb).astype(jnp.float32)
  safe = jnp.where(dc != 0, dc, 1.0)
  frac = jnp.where(dc != 0, (ca.astype(jnp.float32) - target) / safe, 0.5)
  step = jnp.round(frac * (kb.astype(jnp.float32) - ka.astype(jnp.float32)))
  # Small steps in exact int32 (|ka| < 2**31 - 2**27, so no overflow); large
  # ones in float32, where a few keys of rounding do not matter.
  near = ka + jnp.clip(step, -(2.0**27), 2.0**27).astype(jnp.int32)
  far = jnp.clip(ka.astype(jnp.float32) + step, -_MAX_KEY, _MAX_KEY).astype(jnp.int32)
  key = jnp.where(jnp.abs(step) < 2.0**27, near, far)
  return jnp.clip(key, -_MAX_KEY, _MAX_KEY)


def _four_probe_select(leaves, k, total, sample_size, seed, group, capacity):
  """Sample, four to six counting passes, then an exact finish on a few
  gathered columns.

  All probes are canonical values ``u`` and count ``C(u) = #{s > u}``.

  1. A sorted random sample gives a first estimate ``u1`` of the k-th value.
  2. Pass 1 counts ``C(u1)`` exactly; the sample, read at a rank shifted by
     the observed error, gives ``u2`` (typically within ~5% of the first
     error, since it only relies on the sample's local density).
  3. Pass 3 probes the secant of passes 1-2; pass 4 the secant of pass 3 and
     the nearer earlier probe, shifted by a margin of ``3 sqrt(error) + 16``
     entries to the far side of the k-th value, so that passes 3 and 4
     bracket it: ``C(u_lo) >= k > C(u_hi)``. Passes 3 and 4 also return
     per-column counts (each leaf viewed as ``group`` rows; a column is
     ``group`` strided scores).
  4. Passes 5 and 6 run (each under a ``lax.cond``) only while no two
     column-counted passes bracket the k-th value within ``capacity``
     columns: a secant of the two probes nearest to ``k``, aimed past it from
     the nearest by the same margin (plus a quarter of its error when the
     two do not bracket ``k``, as extrapolation is less certain).
  5. The columns whose counts differ hold every candidate
     ``u_lo < s <= u_hi``; up to ``capacity`` of them are gathered and the
     general search finds
     the ``(k - C(u_hi))``-th largest candidate among them (at most
     ``capacity * group`` values, so its passes are cheap).

  The passes are unrolled at the top level of the computation: inside a
  ``lax.while_loop`` the same reductions measured ~2x slower on CPU.

  Returns ``(tau, ok, bracket, passes)``: ``ok`` is False (and ``tau``
  meaningless) when no two column-counted passes bracket the k-th value
  within ``capacity`` columns (heavy ties, ``k`` at the very ends, odd
  distributions); ``bracket = (lo_key, hi_key, G(lo_key), G(hi_key))`` is
  the tightest bracket of all passes, in the key form of
  :func:`_loop_select`, to warm-start the fallback; ``passes`` counts the
  full passes made (4 to 6).
  """
  blocks = _plan_blocks([int(x.size) for x in leaves], group)
  sample = _to_key(jnp.sort(_sample(leaves, sample_size, seed))[::-1])  # descending
  s = sample.shape[0]
  kf = k.astype(jnp.float32)
  per_score = s / total  # sample entries per score

  def quantile(j):  # key of the descending sample at fractional index j
    j = jnp.clip(j, 0.0, s - 1.0)
    j0 = jnp.floor(j)
    a = sample[j0.astype(jnp.int32)]
    b = sample[jnp.minimum(j0 + 1, s - 1).astype(jnp.int32)]
    return a + jnp.round((b - a).astype(jnp.float32) * (j - j0)).astype(jnp.int32)

  def value(key):
    return _from_key(jnp.clip(key, -_MAX_KEY, _MAX_KEY))

  j1 = kf * per_score - 0.5
  k1 = quantile(j1)
  c1 = _count_greater(leaves, value(k1))
  k2 = quantile(j1 - (c1 - k).astype(jnp.float32) * per_score)
  c2 = _count_greater(leaves, value(k2))
  k3 = _key_secant(k1, c1, k2, c2, kf)
  cc3, c3 = _column_counts(leaves, blocks, value(k3))
  near_2 = jnp.abs(c2 - k) <= jnp.abs(c1 - k)
  ka, ca = jnp.where(near_2, k2, k1), jnp.where(near_2, c2, c1)
  margin = 3.0 * jnp.sqrt(jnp.abs(c3 - k).astype(jnp.float32)) + 16.0
  k4 = _key_secant(k3, c3, ka, ca, jnp.where(c3 >= k, kf - margin, kf + margin))
  cc4, c4 = _column_counts(leaves, blocks, value(k4))

  # Passes 5 and 6, each only when the column-counted passes so far do not
  # bracket the k-th value closely enough (heavy-tailed scores, where the
  # secant of passes 1-2 is poor): a secant of the two passes nearest to k,
  # aimed past k (beyond the nearest pass) so that the two bracket it.
  def tight_bracket(col):
    keys, counts, col_counts = (jnp.stack(x) for x in zip(*col))
    is_lo = counts >= k
    lo = jnp.argmax(jnp.where(is_lo, keys, -_MAX_KEY - 1))
    hi = jnp.argmin(jnp.where(is_lo, _MAX_KEY + 2, keys))
    diff = col_counts[lo] - col_counts[hi]  # candidates per column
    ok = jnp.any(is_lo) & ~jnp.all(is_lo) & (k >= 1)
    ok &= jnp.sum(diff > 0) <= capacity
    return ok, keys[lo], keys[hi], counts[hi], diff

  def extra_pass(probes):
    keys, counts = jnp.stack([p[0] for p in probes]), jnp.stack([p[1] for p in probes])
    err = jnp.abs(counts - k)
    order = jnp.argsort(err)
    kn, cn, ko, co = keys[order[0]], counts[order[0]], keys[order[1]], counts[order[1]]
    brackets = (cn >= k) != (co >= k)
    # Extrapolating (no bracket yet) is less certain: aim further past k.
    margin = (
      3.0 * jnp.sqrt(err[order[0]].astype(jnp.float32))
      + 16.0
      + jnp.where(brackets, 0.0, 0.25 * err[order[0]].astype(jnp.float32))
    )
    key = _key_secant(kn, cn, ko, co, jnp.where(cn >= k, kf - margin, kf + margin))
    cc, c = _column_counts(leaves, blocks, value(key))
    return key, c, cc

  probes = [(k1, c1), (k2, c2), (k3, c3), (k4, c4)]
  col = [(k3, c3, cc3), (k4, c4, cc4)]
  passes = jnp.int32(4)
  for _ in range(_EXTRA_PASSES):
    ok = tight_bracket(col)[0]
    # Skipped, the extra pass repeats pass 3 (which changes no bracket).
    new = lax.cond(ok, lambda: (k3, c3, cc3), lambda p=tuple(probes): extra_pass(p))
    passes += jnp.where(ok, 0, 1)
    probes.append(new[:2])
    col.append(new)
  ok, key_lo, key_hi, c_hi, diff = tight_bracket(col)
  u_lo, u_hi = value(key_lo), value(key_hi)

  _, idx = lax.top_k(diff, capacity)
  cand, _ = _gather_columns(leaves, blocks, idx, group)
  cand = jnp.where((cand > u_lo) & (cand <= u_hi), cand, -_FLOAT32_MAX)
  # The k-th largest overall is the r-th largest candidate.
  r = k - c_hi
  tau, _ = _loop_select([cand.reshape(-1)], r, capacity * group, min(sample_size, 1024), 128, seed)
  # With r equal to the number of candidates the search may return a value
  # below u_lo (the padding is -FLOAT32_MAX); nothing lies in between.
  tau = jnp.maximum(tau, _from_key(_to_key(u_lo) + 1))

  # Tightest bracket of all passes, as keys of G(key) = #{s >= value(key)}:
  # C(value(key)) = G(key + 1).
  keys = jnp.stack([p[0] for p in probes]) + 1
  counts = jnp.stack([p[1] for p in probes])
  is_lo = counts >= k
  lo = jnp.argmax(jnp.where(is_lo, keys, -_MAX_KEY - 1))
  hi = jnp.argmin(jnp.where(is_lo, _MAX_KEY + 2, keys))
  bracket = (
    jnp.where(jnp.any(is_lo), keys[lo], -_MAX_KEY),
    jnp.where(jnp.all(is_lo), _MAX_KEY + 1, keys[hi]),
    jnp.where(jnp.any(is_lo), counts[lo], total),
    jnp.where(jnp.all(is_lo), 0, counts[hi]),
  )
  return tau, ok, bracket, passes


def _loop_select(leaves, k, total, sample_size, max_passes, seed, bracket=None):
  """General counting select: works for any input, in 9-40 passes.

  Keeps a bracket ``lo < hi`` of order-preserving integer keys with
  ``G(lo) >= k > G(hi)``: the first two probes are sample quantiles around
  ``k / D``, later ones interpolate the counts (alternately just below and
  just above the estimate), and a probe bisects the key range whenever
  interpolation stops paying (ties, odd distributions). ``bracket`` (keys
  ``lo, hi`` and their counts) warm-starts the search, skipping the sample.
  Returns ``(tau, passes)``.
  """

  sample = jnp.sort(_sample(leaves, sample_size, seed))[::-1]  # descending
  s = sample.shape[0]
  # Rank of the k-th largest within the sample, with a binomial margin.
  rank = k.astype(jnp.float32) * (s / total)
  spread = 3.0 * jnp.sqrt(rank * (1.0 - rank / s)) + 2.0
  below = _to_key(sample[jnp.clip(jnp.ceil(rank + spread), 0, s - 1).astype(jnp.int32)])
  above = _to_key(sample[jnp.clip(jnp.floor(rank - spread), 0, s - 1).astype(jnp.int32)])

  # Bracket of keys with G(lo) >= k > G(hi).
  lo0 = jnp.int32(-_MAX_KEY)
  hi0 = jnp.int32(_MAX_KEY + 1)

  def done(state):
    lo, hi, count_lo, _, passes, _, _ = state
    return (count_lo == k) | (lo + 1 >= hi) | (passes >= max_passes)

  def probe_key(state):
    lo, hi, count_lo, count_hi, passes, _, entries_two_ago = state
    entries = count_lo - count_hi  # entries with a key in [lo, hi)
    n = entries.astype(jnp.float32)
    width = hi.astype(jnp.float32) - lo.astype(jnp.float32)
    # Fraction of the bracket (from lo) where G crosses k, if locally uniform,
    # and a one-sigma margin, alternately below and above the estimate so that
    # both ends of the bracket move.
    target = (count_lo - k).astype(jnp.float32) / n
    margin = jnp.sqrt(n) / n
    side = jnp.where(passes % 2 == 0, -1.0, 1.0)
    # Interpolation that has not halved the bracket in two passes is not
    # paying off (ties, odd distributions): bisect the key range instead.
    stalled = (passes >= 4) & (entries * 2 > entries_two_ago)
    fraction = jnp.where(stalled, 0.5, target + side * margin)
    delta = jnp.clip(jnp.round(fraction * width), 1.0, 2.0**31 - 1)
    interpolated = lo + delta.astype(jnp.int32)
    key = jnp.where(passes == 0, below, jnp.where(passes == 1, above, interpolated))
    return jnp.clip(key, lo + 1, hi - 1)

  def step(state):
    lo, hi, count_lo, count_hi, passes, entries_prev, _ = state
    t = probe_key(state)
    count_t = _count_at_least(leaves, t)
    keep_up = count_t >= k
    new_lo = jnp.where(keep_up, t, lo)
    new_hi = jnp.where(keep_up, hi, t)
    new_count_lo = jnp.where(keep_up, count_t, count_lo)
    new_count_hi = jnp.where(keep_up, count_hi, count_t)
    return (
      new_lo,
      new_hi,
      new_count_lo,
      new_count_hi,
      passes + 1,
      count_lo - count_hi,
      entries_prev,
    )

  init = (
    lo0,
    hi0,
    jnp.int32(total),
    jnp.int32(0),
    jnp.int32(0),
    jnp.int32(total),
    jnp.int32(total),
  )
  first = 0
  if bracket is not None:
    # Start after the two sample probes, straight into interpolation.
    first = 2
    lo_key, hi_key, count_lo, count_hi = bracket
    init = (
      lo_key,
      hi_key,
      count_lo,
      count_hi,
      jnp.int32(first),
      count_lo - count_hi,
      jnp.int32(total),
    )
  lo, _, _, _, passes, _, _ = lax.while_loop(lambda st: ~done(st), step, init)
  return _from_key(lo), passes - first


def topk_masks(leaves: Sequence[jax.Array], k: jax.typing.ArrayLike, **kwargs) -> list[jax.Array]:
  """Boolean masks of the global top-``k`` (ties at the k-th value kept)."""
  leaves = [canonicalize_scores(leaf) for leaf in leaves]
  tau = kth_largest_threshold(leaves, k, **kwargs)
  return [leaf >= tau for leaf in leaves]


def sort_reference_threshold(leaves: Sequence[jax.Array], k: int) -> np.ndarray:
  """Reference: the k-th largest value by sorting the concatenated scores.

  This is what the official code does (``torch.topk(flat, k)[0][-1]``). It is
  kept for tests; it is slow and needs a copy of every score.
  """
  flat = np.concatenate([np.asarray(leaf, np.float32).reshape(-1) for leaf in leaves])
  if k <= 0:
    return np.float32(np.inf)
  k = min(k, flat.size)
  return np.sort(flat)[::-1][k - 1]
