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

Fast path (inputs of at least ``2**18`` scores), four passes, unrolled:

1. a sorted random sample of ``2**14`` scores gives a first estimate; pass 1
   counts it exactly and pass 2 corrects it with the sample's local density;
2. pass 3 probes the secant of passes 1-2 (in order-preserving integer key
   space, roughly logarithmic in the value); pass 4 probes the next secant
   shifted by a safety margin to the far side of the k-th value, so that
   passes 3-4 bracket it. Passes 3-4 also return per-row counts (rows of 128
   consecutive scores of a leaf);
3. the rows whose counts differ hold every candidate in the bracket (a few
   hundred at BERT-base size); up to 1024 of them are gathered and the exact
   answer is found among those few values.

When passes 3-4 do not bracket the answer within 1024 rows (heavy ties, ``k``
at the very ends, odd distributions) the general search below resumes from
the tightest bracket the four passes found. It keeps ``lo < hi`` keys with
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
see :func:`canonicalize_scores`), with partial sums kept below :math:`2^{24}`
so they are exact integers. Each leaf's reduction sits behind an
``optimization_barrier`` so that XLA cannot share one materialised broadcast
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
# Partial sums of 0/1 values stay exact integers in float32 up to 2**24.
_EXACT_CHUNK = 1 << 24
_DEFAULT_SAMPLE = 1 << 14
# Fast path: row width of the per-row counts, how many candidate rows may be
# gathered for the exact finish, and the input size from which it pays.
_ROW = 128
_ROW_CAPACITY = 1024
_FAST_MIN = 1 << 18
_FAST_PASSES = 4


def canonicalize_scores(scores: jax.Array) -> jax.Array:
  """Maps scores onto values the counting select handles exactly.

  NaN becomes 0, infinities become the largest finite float32, and values of
  magnitude below ``1e-30`` become 0. Apply it once where scores are produced;
  the resulting order is the same as the input's except among those tiny
  values, which are all tied at zero.
  """
  scores = jnp.asarray(scores, jnp.float32)
  scores = jnp.nan_to_num(scores, nan=0.0, posinf=_FLOAT32_MAX,
                          neginf=-_FLOAT32_MAX)
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
_SCALE = np.float32(2.0 ** 124)


def _indicator_sum(leaf, u, take, axis=None):
  """Sums the exact 0/1 indicator ``s > u`` over ``take(leaf)``.

  ``lax.optimization_barrier`` gives every leaf its own copy of the scalars:
  without it XLA shares one broadcast of ``u`` (and of the constants) between
  all leaves of the same shape and materialises it as a full-size array, which
  made every probe 3-5x slower than a plain ``jnp.sum``.
  """
  leaf, u, scale, zero, one = lax.optimization_barrier(
      (leaf, u, _SCALE, np.float32(0), np.float32(1)))
  x = take(leaf)
  return jnp.sum(jnp.minimum(jnp.maximum(x - u, zero) * scale, one), axis=axis)


def _count_greater(leaves: Sequence[jax.Array], u: jax.Array) -> jax.Array:
  """Exact ``#{s > u}`` over all leaves, as int32, for canonical s and u.

  Partial sums of 0/1 values are exact integers in float32 below 2**24, so
  each leaf is reduced in chunks of at most that many entries.
  """
  total = jnp.zeros((), jnp.int32)
  u = jnp.asarray(u, jnp.float32)
  for leaf in leaves:
    n = int(leaf.size)
    for start in range(0, n, _EXACT_CHUNK):
      stop = min(n, start + _EXACT_CHUNK)
      take = lambda x, a=start, b=stop: x.reshape(-1)[a:b]
      total = total + _indicator_sum(leaf, u, take).astype(jnp.int32)
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
    idx = np.sort(rng.integers(0, int(n), size=take)) if take < n \
        else np.arange(int(n))
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
  return threshold_and_passes(leaves, k, sample_size=sample_size,
                              max_passes=max_passes, seed=seed)[0]


def threshold_and_passes(
    leaves: Sequence[jax.Array],
    k: jax.typing.ArrayLike,
    *,
    sample_size: int = _DEFAULT_SAMPLE,
    max_passes: int = 128,
    seed: int = 0,
    row: int = _ROW,
    row_capacity: int = _ROW_CAPACITY,
    fast_min: int = _FAST_MIN,
) -> tuple[jax.Array, jax.Array]:
  """:func:`kth_largest_threshold` plus the number of full counting passes.

  Inputs of at least ``fast_min`` scores take the four-probe path
  (:func:`_four_probe_select`), which falls back to the general search
  (:func:`_loop_select`) when it cannot prove its answer; smaller inputs use
  the general search directly. ``row`` and ``row_capacity`` size the
  candidate gather of the fast path (exposed for tests and benchmarks).
  """
  leaves = [jnp.asarray(leaf, jnp.float32) for leaf in leaves]
  total = sum(int(leaf.size) for leaf in leaves)
  if total == 0:
    raise ValueError("kth_largest_threshold needs at least one score.")
  if total >= 2**31:
    raise ValueError(
        f"kth_largest_threshold supports fewer than 2**31 scores, got {total}.")
  k = jnp.clip(jnp.asarray(k, jnp.int32), 0, total)
  if total < fast_min:
    tau, passes = _loop_select(leaves, k, total, sample_size, max_passes, seed)
  else:
    fast_tau, ok, bracket = _four_probe_select(
        leaves, k, total, sample_size, seed, row, row_capacity)
    # The fallback runs only when the fast path failed (a ``cond``, not both),
    # and resumes from the tightest bracket the four passes found.
    tau, extra = lax.cond(
        ok, lambda: (fast_tau, jnp.int32(0)),
        lambda: _loop_select(leaves, k, total, sample_size, max_passes, seed,
                             bracket))
    passes = _FAST_PASSES + extra
  return jnp.where(k <= 0, jnp.float32(jnp.inf), tau), passes


class _Block(NamedTuple):
  """A static view of part of one leaf as rows of ``row`` scores."""
  leaf: int
  start: int  # flat offset of the first entry in the leaf
  rows: int
  tail: int   # 0: ``rows`` full rows; else one row of ``tail`` entries, padded


def _plan_blocks(sizes: Sequence[int], row: int) -> list[_Block]:
  blocks = []
  max_rows = max(1, _EXACT_CHUNK // row)  # keeps every block's sum exact
  for i, n in enumerate(sizes):
    full = n // row
    for r0 in range(0, full, max_rows):
      blocks.append(_Block(i, r0 * row, min(max_rows, full - r0), 0))
    if n % row:
      blocks.append(_Block(i, full * row, 1, n % row))
  return blocks


def _block_rows(leaf: jax.Array, block: _Block, row: int) -> jax.Array:
  """The block as a ``(rows, row)`` array (a fused slice; the tail is padded
  with ``-FLOAT32_MAX``, which no probe ever counts)."""
  flat = leaf.reshape(-1)
  if block.tail:
    part = flat[block.start:block.start + block.tail]
    return jnp.pad(part, (0, row - block.tail),
                   constant_values=-_FLOAT32_MAX)[None]
  return flat[block.start:block.start + block.rows * row].reshape(block.rows, row)


def _row_counts(leaves, blocks, row, u):
  """Per-row ``#{s > u}`` of every block, concatenated, and their int32 total.

  One pass over the scores; the row counts (``D / row`` floats) are what let
  the fast path find the rows that hold the candidates afterwards.
  """
  counts, total = [], jnp.zeros((), jnp.int32)
  for b in blocks:
    take = lambda x, b=b: _block_rows(x, b, row)
    per_row = _indicator_sum(leaves[b.leaf], u, take, axis=1)
    # Without the barrier XLA folds this sum into a second full reduction of
    # the indicator, which then gets materialised (a copy of the scores).
    per_row = lax.optimization_barrier(per_row)
    counts.append(per_row)
    total = total + jnp.sum(per_row).astype(jnp.int32)
  return jnp.concatenate(counts), total


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
  near = ka + jnp.clip(step, -2.0**27, 2.0**27).astype(jnp.int32)
  far = jnp.clip(ka.astype(jnp.float32) + step, -_MAX_KEY, _MAX_KEY).astype(jnp.int32)
  key = jnp.where(jnp.abs(step) < 2.0**27, near, far)
  return jnp.clip(key, -_MAX_KEY, _MAX_KEY)


def _four_probe_select(leaves, k, total, sample_size, seed, row, capacity):
  """Sample, four counting passes, then an exact finish on a few gathered rows.

  All probes are canonical values ``u`` and count ``C(u) = #{s > u}``.

  1. A sorted random sample gives a first estimate ``u1`` of the k-th value.
  2. Pass 1 counts ``C(u1)`` exactly; the sample, read at a rank shifted by
     the observed error, gives ``u2`` (typically within ~5% of the first
     error, since it only relies on the sample's local density).
  3. Pass 3 probes the secant of passes 1-2; pass 4 the secant of pass 3 and
     the nearer earlier probe, shifted by a margin of ``3 sqrt(error) + 16``
     entries to the far side of the k-th value, so that passes 3 and 4
     bracket it: ``C(u_lo) >= k > C(u_hi)``. Passes 3 and 4 also return
     per-row counts (rows of ``row`` consecutive scores of a leaf).
  4. The rows whose counts differ hold every candidate ``u_lo < s <= u_hi``;
     up to ``capacity`` of them are gathered and the general search finds
     the ``(k - C(u_hi))``-th largest candidate among them (at most
     ``capacity * row`` values, so its passes are cheap).

  The passes are unrolled at the top level of the computation: inside a
  ``lax.while_loop`` the same reductions measured ~2x slower on CPU.

  Returns ``(tau, ok, bracket)``: ``ok`` is False (and ``tau`` meaningless)
  when passes 3-4 do not bracket the k-th value or the bracket spans more
  than ``capacity`` rows (heavy ties, ``k`` at the very ends, odd
  distributions); ``bracket = (lo_key, hi_key, G(lo_key), G(hi_key))`` is
  the tightest bracket of all four passes, in the key form of
  :func:`_loop_select`, to warm-start the fallback.
  """
  blocks = _plan_blocks([int(x.size) for x in leaves], row)
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
  rc3, c3 = _row_counts(leaves, blocks, row, value(k3))
  near_2 = jnp.abs(c2 - k) <= jnp.abs(c1 - k)
  ka, ca = jnp.where(near_2, k2, k1), jnp.where(near_2, c2, c1)
  margin = 3.0 * jnp.sqrt(jnp.abs(c3 - k).astype(jnp.float32)) + 16.0
  k4 = _key_secant(k3, c3, ka, ca, jnp.where(c3 >= k, kf - margin, kf + margin))
  rc4, c4 = _row_counts(leaves, blocks, row, value(k4))

  # Passes 3 and 4 must bracket the k-th value.
  lo_is_3 = c3 >= k
  ok = (lo_is_3 != (c4 >= k)) & (k >= 1)
  u_lo = value(jnp.where(lo_is_3, k3, k4))
  u_hi = value(jnp.where(lo_is_3, k4, k3))
  c_hi = jnp.where(lo_is_3, c4, c3)
  diff = jnp.where(lo_is_3, rc3 - rc4, rc4 - rc3)  # candidates per row
  ok &= jnp.sum(diff > 0) <= capacity

  # Gather the candidate rows. Row ids are global (block-major); every block
  # gathers all slots and keeps its own: blocks x capacity x row reads (a few
  # ms at BERT-base size), but no copy of the scores.
  capacity = min(capacity, sum(b.rows for b in blocks))
  _, idx = lax.top_k(diff, capacity)
  cand = jnp.full((capacity, row), -_FLOAT32_MAX, jnp.float32)
  offset = 0
  for b in blocks:
    rows = _block_rows(leaves[b.leaf], b, row)
    local = jnp.clip(idx - offset, 0, b.rows - 1)
    mine = (idx >= offset) & (idx < offset + b.rows)
    cand = jnp.where(mine[:, None], rows[local], cand)
    offset += b.rows
  cand = jnp.where((cand > u_lo) & (cand <= u_hi), cand, -_FLOAT32_MAX)
  # The k-th largest overall is the r-th largest candidate.
  r = k - c_hi
  tau, _ = _loop_select([cand.reshape(-1)], r, capacity * row,
                        min(sample_size, 1024), 128, seed)
  # With r equal to the number of candidates the search may return a value
  # below u_lo (the padding is -FLOAT32_MAX); nothing lies in between.
  tau = jnp.maximum(tau, _from_key(_to_key(u_lo) + 1))

  # Tightest bracket of all passes, as keys of G(key) = #{s >= value(key)}:
  # C(value(key)) = G(key + 1).
  keys = jnp.stack([k1, k2, k3, k4]) + 1
  counts = jnp.stack([c1, c2, c3, c4])
  is_lo = counts >= k
  lo = jnp.argmax(jnp.where(is_lo, keys, -_MAX_KEY - 1))
  hi = jnp.argmin(jnp.where(is_lo, _MAX_KEY + 2, keys))
  bracket = (
      jnp.where(jnp.any(is_lo), keys[lo], -_MAX_KEY),
      jnp.where(jnp.all(is_lo), _MAX_KEY + 1, keys[hi]),
      jnp.where(jnp.any(is_lo), counts[lo], total),
      jnp.where(jnp.all(is_lo), 0, counts[hi]),
  )
  return tau, ok, bracket


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
    return (new_lo, new_hi, new_count_lo, new_count_hi, passes + 1,
            count_lo - count_hi, entries_prev)

  init = (lo0, hi0, jnp.int32(total), jnp.int32(0), jnp.int32(0),
          jnp.int32(total), jnp.int32(total))
  first = 0
  if bracket is not None:
    # Start after the two sample probes, straight into interpolation.
    first = 2
    lo_key, hi_key, count_lo, count_hi = bracket
    init = (lo_key, hi_key, count_lo, count_hi, jnp.int32(first),
            count_lo - count_hi, jnp.int32(total))
  lo, _, _, _, passes, _, _ = lax.while_loop(lambda st: ~done(st), step, init)
  return _from_key(lo), passes - first


def topk_masks(
    leaves: Sequence[jax.Array], k: jax.typing.ArrayLike, **kwargs
) -> list[jax.Array]:
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
