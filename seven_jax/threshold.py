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
turns into a per-shard count and one small all-reduce (see
``tests/test_threshold_sharding.py``, which checks the compiled HLO).

Fast path (inputs of at least ``2**18`` scores), four passes (rarely up to
nine), unrolled:

1. a sorted random sample of ``2**14`` scores gives a first estimate (or, with
   ``hint``, the previous step's threshold is the first probe); pass 1 counts
   it exactly and pass 2 corrects it with the sample's local density;
2. pass 3 probes the secant of passes 1-2 (in order-preserving integer key
   space, roughly logarithmic in the value); pass 4 probes the next secant
   shifted by a safety margin to the far side of the k-th value, so that
   passes 3-4 bracket it. Every pass also returns per-column counts (each
   leaf seen as a ``(256, n / 256)`` array); passes 3-4 (and, with a hint,
   2-4) run under a ``lax.cond`` only while the passes so far do not bracket
   the k-th value closely enough, up to two more such passes aim past the
   k-th value from the nearest probe (heavy-tailed scores), and up to three
   more read the sample exactly and aim past it from there (clustered scores,
   such as low-precision accumulated scores);
3. the columns whose counts differ between the tightest bracketing pair hold
   every candidate (a few hundred at BERT-base size). Every block gathers its
   own candidate columns into a small static budget of slots (about twice its
   share of 1024); only when one block holds more than its budget does a
   general gather of 1024 columns run. The exact answer is found among those
   few values by counting alone (no sample, no reshape: it stays
   sharding-friendly).

When nine passes do not bracket the answer within 1024 columns (heavy ties,
``k`` at the very ends, odd distributions) the general search below resumes
from the tightest bracket the passes found. It keeps ``lo < hi`` keys with
``G(lo) >= k > G(hi)`` (``G(key) = #{s >= value(key)}``), interpolates the
counts inside the bracket (alternating just below and above the estimate) and
bisects when interpolation stops paying, so it terminates for any input.

The search stops as soon as ``G(lo) == k`` (then ``{s >= lo}`` is exactly the
sorted top-k) or the bracket is one key wide (ties at the k-th value: then
``tau`` *is* the k-th value and ``G(tau) > k``). :func:`threshold_stats`
returns ``G(tau)`` too, so that callers who want exactly ``k`` entries
(:func:`seven_jax.selection.select_masks` with ``ties="exact"``) know when a
tie-break is needed without another pass.

Exactness and speed of the counts. XLA on CPU vectorises float reductions far
better than integer or boolean ones, so ``C`` is computed in float32 with the
division-free indicator ``min(max(s - u, 0), 2**-123)`` (three operations
per score; column sums are scaled by ``2**123`` afterwards), exact for
*canonical* scores (finite, and either 0 or at least ``1e-30`` in magnitude;
see :func:`canonicalize_scores`). Every leaf is reduced as a ``(groups,
columns)`` array with at most 256 groups, first over the groups, so each
column sum is an exact float32 integer; columns are added in int32 (also with
``jax_enable_x64``). On CPU each leaf's reduction sits behind an
``optimization_barrier`` so that XLA cannot share one materialised broadcast
of ``u`` between all leaves of the same shape (that sharing made every pass
3-5x slower than a plain ``jnp.sum``). The barriers are a CPU workaround:
``barriers=False`` (or the module setting :data:`USE_BARRIERS`) gives the
plain-XLA program, which is what accelerators should be benchmarked with too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

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
  "threshold_stats",
  "ThresholdStats",
  "USE_BARRIERS",
  "count_greater",
  "row_counts_equal",
]

TINY = np.float32(1e-30)
"""Scores of smaller magnitude are treated as exactly zero."""

USE_BARRIERS: bool | None = None
"""Default of ``barriers=`` in :func:`kth_largest_threshold`: ``None`` means
"on for the CPU backend, off elsewhere"; ``True``/``False`` force it. The
optimization barriers only stop XLA's CPU backend from sharing broadcasts
between leaves (see the module doc); without them the program is plain XLA."""

_FLOAT32_MAX = np.float32(np.finfo(np.float32).max)
# Integer keys: canonical floats mapped, in order, onto a contiguous int32 range.
# 0.0 -> 0, +TINY -> 1, ..., +FLOAT32_MAX -> _MAX_KEY, +inf -> _MAX_KEY + 1.
_TINY_BITS = int(np.array(TINY, np.float32).view(np.int32))
_MAX_KEY = int(np.array(_FLOAT32_MAX, np.float32).view(np.int32)) - _TINY_BITS + 1
_DEFAULT_SAMPLE = 1 << 14
# The fast path reads a sample this many times larger by counting (its sorted
# strided sub-sample has ``sample_size`` entries); regula falsi steps per read.
_SAMPLE_BOOST = 16
_QUANTILE_STEPS = 5
# Fast path: entries per column of the per-column counts, how many candidate
# columns may be gathered for the exact finish (capacity x group values), and
# the input size from which it pays.
_GROUP = 256
_CAPACITY = 1024
_FAST_MIN = 1 << 18
# Conditional column-counted passes after the four (run only when needed).
_EXTRA_PASSES = 2
# Then sample-guided conditional passes (clustered scores, see _four_probe_select).
_GUIDED_PASSES = 3
# Per-block gather budget: this many times the block's share of ``capacity``
# slots, at least _MIN_BUDGET (candidates spread evenly over the columns, so
# a block rarely holds more than twice its share).
_BUDGET_SLACK = 2.0
_MIN_BUDGET = 16


def canonicalize_scores(scores: jax.Array) -> jax.Array:
  """Maps scores onto float32 values the counting select handles exactly.

  NaN becomes 0, infinities (also float64 values beyond the float32 range)
  become the largest finite float32, and values of magnitude below ``1e-30``
  become 0. Apply it once where scores are produced; the resulting order is
  the same as the input's except among those tiny values, which are all tied
  at zero, and among float64 values that round to the same float32.
  """
  scores = jnp.asarray(scores)
  if scores.dtype != jnp.float32:
    scores = scores.astype(jnp.float32)
  # Five operations (the same values as ``nan_to_num`` then the tiny test,
  # which took nine): NaN fails the test (-> 0), infinities pass it and are
  # clipped. The score fusion of every pruning step runs this per weight.
  finite = jnp.clip(scores, -_FLOAT32_MAX, _FLOAT32_MAX)
  return jnp.where(jnp.abs(scores) >= TINY, finite, jnp.float32(0.0))


def _to_key(x: jax.Array) -> jax.Array:
  """Order-preserving map from canonical float32 values to int32 keys."""
  bits = lax.bitcast_convert_type(jnp.abs(x).astype(jnp.float32), jnp.int32)
  magnitude = jnp.where(bits == 0, 0, bits - (_TINY_BITS - 1))
  return jnp.where(x < 0, -magnitude, magnitude).astype(jnp.int32)


def _from_key(key: jax.Array) -> jax.Array:
  """Inverse of :func:`_to_key`; ``_MAX_KEY + 1`` maps to ``+inf``."""
  magnitude = jnp.abs(key).astype(jnp.int32)
  bits = jnp.where(magnitude == 0, 0, magnitude + (_TINY_BITS - 1)).astype(jnp.int32)
  value = lax.bitcast_convert_type(bits, jnp.float32)
  return jnp.where(key < 0, -value, value)


def _i32(x) -> jax.Array:
  return jnp.asarray(x, jnp.int32)


def _isum(x, axis=None) -> jax.Array:
  """int32 sum (``jnp.sum`` of int32 is int64 under ``jax_enable_x64``)."""
  return jnp.sum(x, axis=axis, dtype=jnp.int32)


# Exact indicator of ``s > u`` for canonical s and u, in float arithmetic:
# ``min(max(s - u, 0), 2**-123)``. For distinct canonical values
# ``|s - u| >= 2**-123`` (a multiple of the ulp of 1e-30), which stays a normal
# float after rounding (no flush-to-zero), so the indicator is exactly
# ``2**-123`` when ``s > u`` (overflow to +inf is fine) and exactly 0 when
# ``s <= u``. Column sums of at most 256 such units are exact (normal floats),
# and scaling them by ``2**123`` gives the counts. Three operations per score:
# one fewer than the earlier ``min(max(s - u, 0) * 2**124, 1)`` (9% faster per
# pass on this CPU), no division (a ratio form was ~2x slower).
_UNIT = np.float32(2.0**-123)
_PER_UNIT = np.float32(2.0**123)
# Scale of the arithmetic ``s < t`` indicator of :func:`_snap`.
_SCALE = np.float32(2.0**124)


class _Block(NamedTuple):
  """A static view of part of one leaf as a ``(groups, columns)`` array.

  Entries ``start .. start + groups * columns`` of the flattened leaf, row
  major: column ``j`` holds the ``groups`` entries ``start + g * columns + j``
  (strided). Per-column counts are then a sum over axis 0, which XLA's CPU
  backend vectorises as well as a plain sum (a sum over the last axis of
  short rows was 2-4x slower, and erratically so across row widths). For a
  leaf sharded along its first axis the view is sharded along ``groups``, so
  the per-column sums are per-shard partial sums plus one all-reduce.
  """

  leaf: int
  start: int
  groups: int
  columns: int


class _Plan(NamedTuple):
  """Static layout of one call: blocks, gather sizes, barrier switch."""

  blocks: tuple
  group: int
  capacity: int
  budgets: tuple  # gather slots per block
  barriers: bool
  offsets: tuple  # first column of every block in the concatenated counts, and the total


def _make_plan(sizes, group, capacity, barriers) -> _Plan:
  blocks = tuple(_plan_blocks(sizes, group))
  columns = sum(b.columns for b in blocks)
  capacity = min(capacity, columns)
  budgets = tuple(
    min(b.columns, max(_MIN_BUDGET, math.ceil(_BUDGET_SLACK * capacity * b.columns / columns)))
    for b in blocks
  )
  offsets = tuple(int(x) for x in np.cumsum([0] + [b.columns for b in blocks]))
  return _Plan(blocks, group, capacity, budgets, bool(barriers), offsets)


def _indicator(leaf: jax.Array, block: _Block, u: jax.Array, barriers: bool) -> jax.Array:
  """The exact indicator ``s > u`` over one block, as a float32 ``(groups,
  columns)`` array of ``0`` and ``_UNIT`` (fused into the reduction that
  consumes it; :func:`_column_sums` turns it into counts).

  With ``barriers``, ``lax.optimization_barrier`` gives every block its own
  copy of the scalars: without it XLA's CPU backend shares one broadcast of
  ``u`` (and of the constants) between all leaves of the same shape and
  materialises it as a full-size array, which made every probe 3-5x slower
  than a plain ``jnp.sum``. The barrier goes after the reshape when the block
  is the whole leaf (a free view; measured 1.5x faster than reshaping behind
  the barrier) and before the slice otherwise (a barrier after a slice would
  materialise it).
  """
  consts = (np.float32(0), _UNIT)
  if not barriers:
    x, (zero, unit) = _block_view(leaf, block), consts
  elif block.groups * block.columns == leaf.size:
    x, u, (zero, unit) = lax.optimization_barrier((_block_view(leaf, block), u, consts))
  else:
    leaf, u, (zero, unit) = lax.optimization_barrier((leaf, u, consts))
    x = _block_view(leaf, block)
  return jnp.minimum(jnp.maximum(x - u, zero), unit)


def _column_sums(indicator: jax.Array) -> jax.Array:
  """Per-column counts (float32 integers) of an :func:`_indicator` block: sums
  of at most 256 multiples of ``_UNIT`` are exact, and so is their scaling."""
  return jnp.sum(indicator, axis=0) * _PER_UNIT


def _count_above(values: jax.Array, key: jax.Array) -> jax.Array:
  """``#{values > value(key)}`` of canonical float32 values (the threshold's
  sample), as a float32. Keys one past the ends of the key range map to
  ``-inf`` and ``+inf``, which count everything and nothing.

  Below ``2**24`` values it is the sum of one whole-array :func:`_indicator`
  (exact: every partial sum is an integer multiple of ``_UNIT`` below
  ``2**24`` of them); beyond, :func:`_count_greater`'s blocks. A
  compare-and-select indicator would be materialised before its sum on XLA's
  CPU backend (its reductions fuse only float ``sub``/``min``/``max``-like
  producers): a 1 MB temporary per count at MiniLM size, ~13 counts per read
  of the sample; this is one fused pass (13 counts: 1.09 -> 0.78 ms in
  isolation)."""
  u = _from_key(jnp.clip(key, -_MAX_KEY - 1, _MAX_KEY + 1))
  if values.size >= 1 << 24:
    return _count_greater([values], u).astype(jnp.float32)
  whole = _Block(0, 0, 1, int(values.size))
  return jnp.sum(_indicator(values, whole, u, barriers=True), dtype=jnp.float32) * _PER_UNIT


def _count_greater(
  leaves: Sequence[jax.Array], u: jax.Array, barriers: bool = True, group: int = _GROUP
) -> jax.Array:
  """Exact ``#{s > u}`` over all leaves, as int32, for canonical s and u.

  Each leaf is reduced as ``(groups, columns)`` blocks, first over the
  groups: every column sum is at most ``groups`` (an exact float32 integer),
  and columns are added in int32, so counts are exact at any leaf size.
  """
  u = jnp.asarray(u, jnp.float32)
  total = _i32(0)
  for b in _plan_blocks([int(leaf.size) for leaf in leaves], group):
    per_column = _column_sums(_indicator(leaves[b.leaf], b, u, barriers))
    total = total + _isum(per_column.astype(jnp.int32))
  return total


def count_greater(leaves: Sequence[jax.Array], u, *, barriers: bool | None = None) -> jax.Array:
  """Exact ``#{s > u}`` over canonical float32 ``leaves`` (int32), one fused
  pass: the counting pass of the threshold search."""
  return _count_greater(list(leaves), jnp.asarray(u, jnp.float32), _barriers(barriers))


def row_counts_equal(rows: jax.Array, value, *, barriers: bool | None = None) -> jax.Array:
  """Per-row ``#{s == value}`` (int32) of a canonical float32 ``(rows, columns)``
  array, for a canonical ``value``.

  Canonical values that differ do so by at least ``2**-123`` (the spacing of
  floats at :data:`TINY`), so ``min(|s - value| * 2**123, 1)`` is exactly 0
  for ties and 1 otherwise, and a row holds ``columns`` minus its sum: float
  arithmetic that fuses into the row sums (one pass). A compare-and-select
  indicator (``where(s == value, 1, 0)``) is materialised before its sum on
  XLA's CPU backend: a score-sized temporary written and read again. Rows of
  ``2**24`` or more entries, whose float32 sums need not be exact integers,
  are counted in int32 instead.
  """
  value = jnp.asarray(value, jnp.float32)
  if rows.shape[1] >= 1 << 24:
    return _isum(rows == value, axis=1)
  consts = (_PER_UNIT, np.float32(1))
  if _barriers(barriers):  # as in _indicator: no shared materialised broadcasts
    rows, value, consts = lax.optimization_barrier((rows, value, consts))
  scale, one = consts
  differ = jnp.sum(jnp.minimum(jnp.abs(rows - value) * scale, one), axis=1)
  return np.int32(rows.shape[1]) - differ.astype(jnp.int32)


def _count_at_least(leaves, key, barriers=True, group=_GROUP) -> jax.Array:
  """``G(key) = #{s >= value(key)}``; no canonical value lies between keys."""
  return _count_greater(leaves, _from_key(key - 1), barriers, group)


def _sample(leaves: Sequence[jax.Array], size: int, seed: int) -> jax.Array:
  """A fixed pseudo-random sample, allocated to leaves by their size.

  Indices are static (shapes are static): a gather of a few scores per leaf
  with constant indices, which XLA's SPMD partitioner turns into per-shard
  gathers and one small all-reduce of the sample (no copy of the scores).
  """
  sizes = np.array([leaf.size for leaf in leaves], np.int64)
  total = int(sizes.sum())
  rng = np.random.default_rng(seed)
  parts = []
  for leaf, n in zip(leaves, sizes):
    if n == 0:
      continue
    take = int(min(n, max(1, round(size * n / total))))
    # (With replacement: choice without replacement permutes all n at trace time.)
    idx = np.sort(rng.integers(0, int(n), size=take)) if take < n else np.arange(int(n))
    parts.append(leaf.reshape(-1)[jnp.asarray(idx, jnp.int32)])
  return jnp.concatenate(parts)


class ThresholdStats(NamedTuple):
  """What :func:`threshold_stats` found.

  ``tau``: float32 threshold, ``{s >= tau}`` is the sorted top-``k`` with every
  tie at the k-th value kept. ``kept``: ``#{s >= tau}`` (int32) when the search
  knows it without another pass, else ``-1``; ``kept > k`` means ``tau`` is
  exactly the k-th value and ``kept - k`` entries tied with it are beyond the
  budget. ``passes``: full counting passes over the scores.
  """

  tau: jax.Array
  kept: jax.Array
  passes: jax.Array


def kth_largest_threshold(
  leaves: Sequence[jax.Array],
  k: jax.typing.ArrayLike,
  *,
  hint: jax.typing.ArrayLike | None = None,
  sample_size: int = _DEFAULT_SAMPLE,
  max_passes: int = 128,
  seed: int = 0,
  barriers: bool | None = None,
  **layout,
) -> jax.Array:
  """Threshold whose mask ``s >= tau`` equals the sorted top-``k`` mask.

  Args:
    leaves: score arrays of any shapes, already canonical (see
      :func:`canonicalize_scores`; float64 scores are cast to float32). They
      are never concatenated; they may be sharded (``jax.sharding``, ``Auto``
      or ``Explicit`` axes).
    k: number of entries to keep (may be traced). ``k <= 0`` gives ``+inf``
      (keep nothing); ``k >= D`` keeps everything.
    hint: warm start, e.g. the previous step's ``tau`` (may be traced). Its
      first pass counts at the hint instead of a sample estimate and the
      later passes run only while needed; ``None``, NaN or ``+-inf`` take the
      cold path. The result is identical to the cold path's for any hint.
    sample_size: size of the random sample that seeds the search.
    max_passes: safety cap on counting passes of the fallback search; its
      bisection guarantees convergence well before it (about 3 probes per bit
      of the 32-bit key range in the worst case).
    seed: seed of the (static) sample positions.
    barriers: CPU-tuned optimization barriers on (True) or plain XLA
      (False); ``None`` uses :data:`USE_BARRIERS`.
    **layout: ``group``, ``capacity``, ``fast_min`` of :func:`threshold_stats`.

  Returns:
    A float32 scalar ``tau``. ``[s >= tau for s in leaves]`` keeps the same
    entries as ``s >= sort(concat(leaves))[::-1][k - 1]``; in particular every
    entry tied with the k-th largest value is kept, as in the official code.
    For ``1 <= k <= D``, ``tau`` is the k-th largest score itself, whatever
    the path (cold, warm or fallback).
  """
  return threshold_stats(
    leaves,
    k,
    hint=hint,
    sample_size=sample_size,
    max_passes=max_passes,
    seed=seed,
    barriers=barriers,
    **layout,
  ).tau


def threshold_and_passes(leaves, k, **kwargs) -> tuple[jax.Array, jax.Array]:
  """:func:`kth_largest_threshold` plus the number of full counting passes
  (same arguments as :func:`threshold_stats`)."""
  st = threshold_stats(leaves, k, **kwargs)
  return st.tau, st.passes


def _barriers(barriers: bool | None) -> bool:
  """``barriers`` itself, or (``None``) :data:`USE_BARRIERS`, whose ``None``
  means "on for the CPU backend"."""
  if barriers is not None:
    return bool(barriers)
  if USE_BARRIERS is not None:
    return bool(USE_BARRIERS)
  return jax.default_backend() == "cpu"


def _explicit_axes(leaves):
  """Mesh and axis names of explicitly sharded leaves (sharding in types)."""
  for leaf in jax.tree.leaves(leaves):
    sharding = jax.typeof(leaf).sharding
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or getattr(mesh, "empty", True):
      continue
    names = tuple(
      n for n, t in zip(mesh.axis_names, mesh.axis_types) if t == jax.sharding.AxisType.Explicit
    )
    if names:
      return mesh, names
  return None, ()


def run_in_auto_axes(fn, leaves, out_sharding):
  """Runs ``fn(leaves)`` with explicit mesh axes switched to ``Auto``.

  The search reshapes and gathers small pieces of the scores; with explicit
  sharding in types JAX would ask for an output sharding at each of them.
  Inside ``auto_axes`` XLA's partitioner places them (and keeps the counts as
  per-shard reductions plus all-reduces). ``out_sharding`` gives the
  partition specs of the results. Without explicit axes it is ``fn(leaves)``.
  """
  mesh, names = _explicit_axes(leaves)
  if not names:
    return fn(leaves)
  with jax.sharding.use_abstract_mesh(mesh):
    return jax.sharding.auto_axes(fn, axes=names, out_sharding=out_sharding)(leaves)


def threshold_stats(
  leaves: Sequence[jax.Array],
  k: jax.typing.ArrayLike,
  *,
  hint: jax.typing.ArrayLike | None = None,
  sample_size: int = _DEFAULT_SAMPLE,
  max_passes: int = 128,
  seed: int = 0,
  barriers: bool | None = None,
  group: int = _GROUP,
  capacity: int = _CAPACITY,
  fast_min: int = _FAST_MIN,
) -> ThresholdStats:
  """:func:`kth_largest_threshold` with ``#{s >= tau}`` and the pass count.

  Inputs of at least ``fast_min`` scores take the four-probe path
  (:func:`_four_probe_select`), which falls back to the general search
  (:func:`_loop_select`) when it cannot prove its answer; smaller inputs use
  the general search directly. ``group`` and ``capacity`` size the
  candidate gather of the fast path (exposed for tests and benchmarks).
  Zero-size leaves are ignored.
  """
  leaves = [jnp.asarray(leaf) for leaf in leaves]
  leaves = [x if x.dtype == jnp.float32 else x.astype(jnp.float32) for x in leaves]
  leaves = [x for x in leaves if x.size]
  total = sum(int(leaf.size) for leaf in leaves)
  if total == 0:
    raise ValueError("kth_largest_threshold needs at least one score (all leaves are empty).")
  if total >= 2**31:
    raise ValueError(f"kth_largest_threshold supports fewer than 2**31 scores, got {total}.")
  barriers = _barriers(barriers)
  k = jnp.clip(jnp.asarray(k).astype(jnp.int32), 0, total)
  if hint is not None:
    hint = jnp.asarray(hint, jnp.float32)

  def search(args):
    leaves, k, hint = args
    return _search(
      leaves, k, hint, total, sample_size, max_passes, seed, barriers, group, capacity, fast_min
    )

  # Everything traced goes in as an argument (nothing closed over), so that
  # it can switch to Auto axes under explicit sharding.
  tau, kept, passes = run_in_auto_axes(
    search, (leaves, k, hint), (jax.sharding.PartitionSpec(),) * 3
  )
  return ThresholdStats(tau, kept, passes)


def _search(leaves, k, hint, total, sample_size, max_passes, seed, barriers, group, capacity, fm):
  if total < fm:
    lo, count_lo, passes = _loop_select(
      leaves, k, total, sample_size, max_passes, seed, barriers=barriers
    )
    return _finalize(k, _snap(leaves, _from_key(lo), barriers), count_lo, passes + 1)

  plan = _make_plan([int(x.size) for x in leaves], group, capacity, barriers)
  capacity = plan.capacity

  def middle():
    fast_tau, fast_kept, ok, bracket, fast_passes = _four_probe_select(
      leaves, k, total, sample_size, seed, plan, hint
    )

    # The fallback runs only when the fast path failed (a ``cond``, not both),
    # and resumes from the tightest bracket the passes found.
    def fallback():
      lo, count_lo, extra = _loop_select(
        leaves, k, total, sample_size, max_passes, seed, bracket, barriers=barriers
      )
      return _snap(leaves, _from_key(lo), barriers), count_lo, extra + 1

    tau, kept, extra = lax.cond(ok, lambda: (fast_tau, fast_kept, _i32(0)), fallback)
    return tau, kept, fast_passes + extra

  # Near either end (keep at most ``capacity``, or drop fewer than
  # ``capacity``: the first steps of every pruning window) a sample cannot
  # resolve the k-th value, but one pass of per-column extremes finds it.
  branch = jnp.where(k <= capacity, 0, jnp.where(total - k < capacity, 1, 2))
  tau, kept, passes = lax.switch(
    branch,
    [
      lambda: _extreme_select(leaves, plan, k, total, True),
      lambda: _extreme_select(leaves, plan, k, total, False),
      middle,
    ],
  )
  return _finalize(k, tau, kept, passes)


def _snap(leaves, tau, barriers=True):
  """The smallest score ``>= tau`` (one pass): the k-th largest value itself,
  so that every path (cold, warm, fallback) returns the same ``tau``.

  Reduced like the counts (``(groups, columns)`` views, first over the
  groups, scalars behind a barrier on CPU): a whole-leaf ``min`` of a select
  was not fused on XLA's CPU backend and materialised a copy of every score.
  """
  out = []
  for b in _plan_blocks([int(x.size) for x in leaves], _GROUP):
    view, t = _block_view(leaves[b.leaf], b), tau
    consts = (_SCALE, np.float32(0), np.float32(1), _FLOAT32_MAX)
    if barriers:
      # The constants go behind the barrier too (as in _indicator): else XLA's
      # CPU backend materialises one block-sized broadcast of each constant
      # per leaf shape (the score-sized scratch of the compiled threshold).
      view, t, consts = lax.optimization_barrier((view, t, consts))
    scale, zero, one, big = consts
    # Arithmetic instead of a select: m = [s < t] from the exact indicator,
    # then (1 - m) s + m FLOAT32_MAX (canonical s, so no overflow).
    m = jnp.minimum(jnp.maximum(t - view, zero) * scale, one)
    out.append(jnp.min(jnp.min((one - m) * view + m * big, axis=0)))
  return jnp.min(jnp.stack(out))


def _finalize(k, tau, kept, passes):
  tau = jnp.where(k <= 0, jnp.float32(jnp.inf), tau)
  kept = jnp.where(k <= 0, _i32(0), kept)
  return tau, _i32(kept), _i32(passes)


def _extreme_select(leaves, plan, k, total, largest):
  """The k-th largest value when ``k`` or ``total - k`` is below ``capacity``.

  One pass computes every column's maximum (``largest``) or minimum. For
  ``k <= capacity`` the k-th largest value lies in one of the ``k`` columns
  with the largest maxima (those ``k`` maxima are ``k`` distinct entries, so
  the k-th largest overall is at least the k-th largest maximum, and every
  larger entry sits in a column whose maximum is larger), so it is the k-th
  largest among the gathered ``capacity`` columns with the largest maxima.
  Symmetrically, the k-th largest is the ``r = total - k + 1``-th smallest,
  found among the columns with the smallest minima. Returns ``(tau, kept,
  1)`` with ``kept = #{s >= tau}`` when no column left out can hold a tie
  with ``tau``, else ``-1``.
  """
  extremes = []
  for b in plan.blocks:
    view = _block_view(leaves[b.leaf], b)
    extremes.append(jnp.max(view, axis=0) if largest else jnp.min(view, axis=0))
  extremes = jnp.concatenate(extremes)
  top, idx = lax.top_k(extremes if largest else -extremes, plan.capacity)
  cand, real = _gather_columns(leaves, plan.blocks, idx, plan.group)
  # Padding (-FLOAT32_MAX) is never above a real entry, so the r-th smallest
  # of the ``real`` gathered entries is their (real - r + 1)-th largest.
  rank = k if largest else real - (total - k)
  slots = int(cand.size)
  lo, _, _ = _loop_select(
    [cand],
    rank,
    slots,
    0,
    128,
    0,
    (_i32(-_MAX_KEY), _i32(_MAX_KEY + 1), _i32(slots), _i32(0)),
    barriers=False,
  )
  # The search may return any value between the k-th and (k+1)-th gathered
  # entries, but entries that were not gathered can lie in that gap: snap to
  # the k-th value itself.
  tau = jnp.min(jnp.where(cand >= _from_key(lo), cand, jnp.inf))
  # Columns left out have maxima <= the last gathered maximum (minima >= the
  # last gathered minimum): they cannot hold an entry tied with tau unless
  # tau equals that bound.
  bound = top[-1] if largest else -top[-1]
  if largest:
    kept = jnp.where(tau > bound, _isum(cand >= tau), -1)
  else:
    # Every entry outside the gathered columns is >= bound > tau, so the
    # entries below tau are the gathered ones (less the padding).
    padding = jnp.where(tau > -_FLOAT32_MAX, slots - real, 0)
    kept = jnp.where(tau < bound, total - (_isum(cand < tau) - padding), -1)
  return tau, _i32(kept), _i32(1)


def _plan_blocks(sizes: Sequence[int], group: int) -> list[_Block]:
  """Splits every leaf into ``(groups, columns)`` blocks with ``groups <= group``.

  A leaf of at most ``group`` entries is one column. A larger leaf is one
  block when ``n`` has a divisor in ``[group / 4, group]`` (always for
  Transformer weight shapes: a free reshape); otherwise a ``(group, n //
  group)`` block plus a one-column block of the ``n % group`` entries left
  over. Every column holds at most ``group`` entries, so its float32 count
  is exact. Empty leaves get no block.
  """
  blocks = []
  for i, n in enumerate(sizes):
    if n == 0:
      continue
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


def _column_counts(leaves, plan: _Plan, u):
  """Per-column ``#{s > u}`` of every block, concatenated in block order (one
  float32 vector of ``plan.offsets[-1]`` entries), and their int32 total.

  One pass over the scores; the column counts (``D / group`` floats) are what
  let the fast path find the columns that hold the candidates afterwards.
  Kept as one vector, the bookkeeping of every later step (the total here,
  the bracket's differences and per-block widths) is a few small operations
  instead of a few per block: about half the operations a threshold executes
  at MiniLM size (37 leaves). On a 2-core CPU they overlap the passes, so the
  wall time there did not change; an accelerator pays per launch.
  """
  counts = []
  for b in plan.blocks:
    counts.append(_column_sums(_indicator(leaves[b.leaf], b, u, plan.barriers)))
  if plan.barriers:
    # Without the barrier XLA folds the total into a second full reduction
    # of the indicator, which then gets materialised (a copy of the scores).
    counts = lax.optimization_barrier(counts)
  counts = jnp.concatenate(counts)
  return counts, _isum(counts.astype(jnp.int32))


def _block_sums(x: jax.Array, plan: _Plan) -> jax.Array:
  """Per-block sums of a vector laid out like :func:`_column_counts`' one.

  Blocks of the same width are read with one static gather into a ``(blocks,
  width)`` array and summed along the width: a reduction per distinct width
  (three for a Transformer's leaves), not one per block. (A prefix sum,
  ``cumsum``, lowers to a tree of ``reduce_window`` ops on CPU, ~0.7 ms at
  MiniLM size, as slow as the per-block reductions it was to replace.)
  """
  widths = sorted({b.columns for b in plan.blocks})
  sums, order = [], []
  for w in widths:
    ids = [i for i, b in enumerate(plan.blocks) if b.columns == w]
    idx = np.asarray([plan.offsets[i] for i in ids], np.int32)[:, None] + np.arange(
      w, dtype=np.int32
    )
    sums.append(jnp.sum(x[idx], axis=1))
    order.extend(ids)
  return jnp.concatenate(sums)[np.argsort(np.asarray(order))]


def _gather_columns(leaves, blocks, idx, group):
  """Columns ``idx`` (global, block-major ids) as a ``(group, len(idx))`` array,
  short columns padded with ``-FLOAT32_MAX`` (never counted by a probe), and
  the number of real (unpadded) entries gathered.

  Every block gathers every slot and keeps its own: ``blocks x len(idx) x
  group`` reads, but no copy of the scores. The general (slow) gather: the
  fast path uses :func:`_gather_own_columns` first. The result keeps the
  views' layout (groups first, no transpose), so a leaf sharded along its
  first axis gives candidates sharded the same way (no all-gather).
  """
  cand = jnp.full((group, idx.shape[0]), -_FLOAT32_MAX, jnp.float32)
  real = _i32(0)
  offset = 0
  for b in blocks:
    view = _block_view(leaves[b.leaf], b)
    local = jnp.clip(idx - offset, 0, b.columns - 1)
    mine = (idx >= offset) & (idx < offset + b.columns)
    cols = view[:, local]  # (groups, slots)
    if b.groups < group:
      cols = jnp.pad(cols, ((0, group - b.groups), (0, 0)), constant_values=-_FLOAT32_MAX)
    cand = jnp.where(mine[None, :], cols, cand)
    real = real + _isum(mine.astype(jnp.int32)) * b.groups
    offset += b.columns
  return cand, real


def _gather_own_columns(leaves, plan: _Plan, diff):
  """Each block's candidate columns (``diff > 0``; ``diff`` laid out like
  :func:`_column_counts`' vector) into its own budget of slots, unused slots
  repeated (their entries are masked out by the caller's bracket test).

  ``blocks x budget x group`` reads in all (about twice the candidate
  columns), instead of ``blocks x capacity x group`` for the general gather.
  Blocks with the same number of groups are concatenated along the columns
  (usually all of them: one ``(group, slots)`` array), so that the exact
  finish counts them in one reduction per probe; the groups axis is kept, so
  a leaf sharded along its first axis gives candidates sharded the same way.
  """
  out = {}
  for b, budget, start in zip(plan.blocks, plan.budgets, plan.offsets):
    mine = diff[start : start + b.columns]
    _, local = lax.top_k(mine, budget)
    view = _block_view(leaves[b.leaf], b)
    cols = view[:, local]  # (groups, budget)
    out.setdefault(b.groups, []).append(jnp.where((mine[local] > 0)[None, :], cols, -_FLOAT32_MAX))
  return [jnp.concatenate(parts, axis=1) for parts in out.values()]


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
  return jnp.clip(key, -_MAX_KEY, _MAX_KEY).astype(jnp.int32)


def _sample_quantile(sample, values, sub, stride, j, steps=_QUANTILE_STEPS):
  """Key of the descending ``sample`` (keys of the canonical float32
  ``values``) at fractional index ``j``: the key with ``j + 0.5`` sample
  entries above it, without sorting ``sample``.

  ``sub`` is ``sort(sample[::stride])`` descending. Its rank of the target
  wanders by ~``sqrt(js (1 - js / m))`` sub-sample entries, so a bracket of
  four of those (plus two entries) holds the target but 1 in ~10^4; inside
  it, Illinois regula falsi steps on ``f(x) = #{sample > x} - (j + 0.5)``
  (each one count over the sample) close in on the target.

  Every reduction over the sample is a float32 one (counts by
  :func:`_count_above`, extremes over the keys' float values, which have the
  same order): XLA's CPU backend rewrites an int32 reduction of ``2**18``
  entries into a materialised indicator and a tree of four
  ``reduce_window`` ops, and a read's ~13 such reductions took ~2.5 ms at
  MiniLM size, almost a full counting pass.
  """
  s, m = sample.shape[0], sub.shape[0]
  t = jnp.clip(j, 0.0, s - 1.0) + 0.5
  js = t / stride - 0.5
  half = 4.0 * jnp.sqrt(jnp.clip(js, 1.0, m) * (1.0 - jnp.clip(js, 0.0, m - 1.0) / m)) + 2.0
  i_hi, i_lo = jnp.floor(js - half), jnp.ceil(js + half)
  # Past the sub-sample's ends the sample's own extremes bound the target.
  top, bottom = _to_key(jnp.max(values)), _to_key(jnp.min(values))
  hi = jnp.where(i_hi < 0, top, sub[jnp.clip(i_hi, 0, m - 1).astype(jnp.int32)])
  lo = jnp.where(i_lo > m - 1, bottom - 1, sub[jnp.clip(i_lo, 0, m - 1).astype(jnp.int32)])

  def f(x):
    return _count_above(values, x) - t

  def secant(hi, lo, f_hi, f_lo):  # f_hi <= 0 < f_lo inside the bracket
    frac = jnp.clip(-f_hi / jnp.maximum(f_lo - f_hi, 1e-3), 0.0, 1.0)
    return hi - jnp.round((hi - lo).astype(jnp.float32) * frac).astype(jnp.int32)

  def snap(x, hi, lo):
    # Out of an empty stretch of keys: a secant that lands in a gap of the
    # scores (pruned weights at 0, the survivors all above the last
    # threshold) stays there, where f is flat, and the read never converges.
    # There, i.e. when the next sample entry up is over 1/8 of the bracket
    # away, the probe moves up to that entry; elsewhere it stays put (moving
    # every probe cost the read its ~1.5-entry precision).
    up = jnp.minimum(_to_key(jnp.min(jnp.where(sample >= x, values, jnp.inf))), hi)
    far = up.astype(jnp.float32) - x.astype(jnp.float32) > 0.125 * (
      hi.astype(jnp.float32) - lo.astype(jnp.float32)
    )
    return jnp.where(far, up, x)

  f_hi, f_lo = f(hi), f(lo)
  side = jnp.int32(0)  # which end moved last: +1 upper, -1 lower
  for _ in range(steps):
    x = snap(secant(hi, lo, f_hi, f_lo), hi, lo)
    fx = f(x)
    up = fx <= 0  # too few above x: x is the new upper end
    # An end kept twice in a row has its f halved, so it stops pinning x.
    f_lo = jnp.where(up, jnp.where(side > 0, 0.5 * f_lo, f_lo), fx)
    f_hi = jnp.where(up, fx, jnp.where(side < 0, 0.5 * f_hi, f_hi))
    hi, lo = jnp.where(up, x, hi), jnp.where(up, lo, x)
    side = jnp.where(up, 1, -1)
  return snap(secant(hi, lo, f_hi, f_lo), hi, lo)


def _four_probe_select(leaves, k, total, sample_size, seed, plan: _Plan, hint=None):
  """Sample, two to nine counting passes, then an exact finish on a few
  gathered columns.

  All probes are canonical values ``u`` and count ``C(u) = #{s > u}``, with
  per-column counts.

  1. A random sample (``_SAMPLE_BOOST x sample_size`` entries, read by
     counting: :func:`_sample_quantile`) gives a first estimate ``u1`` of the k-th value
     (with a finite ``hint``: ``u1`` just below the hint).
  2. Pass 1 counts ``C(u1)`` exactly; the sample, read at a rank shifted by
     the observed error, gives ``u2`` (typically within ~5% of the first
     error, since it only relies on the sample's local density). With a hint
     ``u2`` is aimed past the k-th value by a margin, so that passes 1-2 may
     already bracket it.
  3. Pass 3 probes the secant of passes 1-2; pass 4 the secant of pass 3 and
     the nearer earlier probe, shifted by a margin of ``3 sqrt(error) + 16``
     entries to the far side of the k-th value, so that passes 3 and 4
     bracket it: ``C(u_lo) >= k > C(u_hi)``.
  4. Passes 5 and 6 (each under a ``lax.cond``) run only while no two
     passes bracket the k-th value within the gather's budget: a secant of
     the two probes nearest to ``k``, aimed past it from the nearest by the
     same margin (plus a quarter of its error when the two do not bracket
     ``k``, as extrapolation is less certain). Passes 7-9, likewise
     conditional, read the sample exactly from the nearest probe
     (``guided``), for scores on which every secant lands in an empty gap.
     With a hint, passes 2-4 are conditional in the same way.
  5. The columns whose counts differ hold every candidate
     ``u_lo < s <= u_hi``; every block gathers its own into its budget (or,
     when a block has more, the general gather takes up to ``capacity``), and
     a counting search started from the bracket finds the ``(k -
     C(u_hi))``-th largest candidate among them.

  The passes are unrolled at the top level of the computation: inside a
  ``lax.while_loop`` the same reductions measured ~2x slower on CPU.

  Returns ``(tau, kept, ok, bracket, passes)``: ``ok`` is False (and ``tau``
  meaningless) when no two passes bracket the k-th value within
  ``capacity`` columns (heavy ties, ``k`` at the very ends, odd
  distributions); ``bracket = (lo_key, hi_key, G(lo_key), G(hi_key))`` is
  the tightest bracket of all passes, in the key form of
  :func:`_loop_select`, to warm-start the fallback; ``passes`` counts the
  full passes made.
  """
  blocks, capacity = plan.blocks, plan.capacity
  # A large unsorted sample (its gather is cheap, a sort of it is not on
  # XLA:CPU) read by counting, seeded by a sorted strided sub-sample.
  sample_values = _sample(leaves, sample_size * _SAMPLE_BOOST, seed)
  sample = _to_key(sample_values)
  s = sample.shape[0]
  stride = max(1, s // sample_size)
  sub = jnp.sort(sample[::stride])[::-1]  # descending
  kf = k.astype(jnp.float32)
  per_score = s / total  # sample entries per score

  def above(key):  # sample entries strictly above key, as float32
    return _count_above(sample_values, key)

  def quantile(j):
    return _sample_quantile(sample, sample_values, sub, stride, j)

  def value(key):
    return _from_key(jnp.clip(key, -_MAX_KEY, _MAX_KEY))

  def counted(key):
    cc, c = _column_counts(leaves, plan, value(key))
    return key, c, cc

  budgets = np.asarray(plan.budgets, np.float32)

  def tight_bracket(col):
    """Tightest bracketing pair of column-counted passes, whether every
    block's candidate columns fit its gather budget (``own``) or at least
    the general gather's capacity (``ok``), and whether any pair brackets k."""
    keys = jnp.stack([p[0] for p in col])
    counts = jnp.stack([p[1] for p in col])
    is_lo = counts >= k
    lo = jnp.argmax(jnp.where(is_lo, keys, -_MAX_KEY - 1))
    hi = jnp.argmin(jnp.where(is_lo, _MAX_KEY + 2, keys))
    columns = jnp.stack([p[2] for p in col])
    diff = columns[lo] - columns[hi]
    brackets = jnp.any(is_lo) & ~jnp.all(is_lo) & (k >= 1)
    wide = _block_sums((diff > 0).astype(jnp.float32), plan)
    own = brackets & jnp.all(wide <= budgets)
    # Either gather proves the answer: every block within its own budget, or
    # all candidate columns within the general gather's capacity.
    ok = own | (brackets & (jnp.sum(wide) <= capacity))
    return ok, own, keys[lo], keys[hi], counts[hi], diff, brackets

  def aim(probes, extrapolation):
    """Secant of the two probes nearest to k, aimed past k from the nearest."""
    keys, counts = jnp.stack([p[0] for p in probes]), jnp.stack([p[1] for p in probes])
    err = jnp.abs(counts - k)
    order = jnp.argsort(err)
    kn, cn, ko, co = keys[order[0]], counts[order[0]], keys[order[1]], counts[order[1]]
    brackets = (cn >= k) != (co >= k)
    e0 = err[order[0]].astype(jnp.float32)
    margin = 3.0 * jnp.sqrt(e0) + 16.0 + jnp.where(brackets, 0.0, extrapolation * e0)
    return _key_secant(kn, cn, ko, co, jnp.where(cn >= k, kf - margin, kf + margin))

  def sample_rank_key(j):
    """Key of the ``(j + 1)``-th largest sample entry, exactly (a counting
    search over the sample alone, paid only in guided passes)."""
    r = jnp.clip(j, 0, s - 1).astype(jnp.int32) + 1
    init = (_i32(-_MAX_KEY), _i32(_MAX_KEY + 1), _i32(s), _i32(0))
    # At most 32 counts of the sample (a tenth of a pass each at MiniLM size);
    # a read that has not converged still lies inside its bracket.
    lo, _, _ = _loop_select([sample_values], r, s, 0, 32, 0, init, barriers=False)
    return jnp.min(jnp.where(sample >= lo, sample, _MAX_KEY + 1))

  def guided(probes):
    """The sample, read exactly, from the probe nearest to k and aimed past k.

    Clustered scores (bfloat16-stored scores plus a small float32 increment:
    ~10,000 entries at every bfloat16 value, empty gaps between) defeat the
    secants, which assume counts linear in the key, and the sample-quantile
    read, whose few regula falsi steps stall in the gaps. The sample itself
    does not mind: ``k - C`` more entries above the nearest probe are about
    ``(k - C) * per_score`` more sample entries above it wherever the
    clusters are; a margin of ``2 sqrt`` of that (plus one entry) puts the
    probe past k. Only these conditional passes pay for the exact read.
    """
    keys, counts = jnp.stack([p[0] for p in probes]), jnp.stack([p[1] for p in probes])
    near = jnp.argmin(jnp.abs(counts - k))
    gap = (kf - counts[near].astype(jnp.float32)) * per_score  # sample entries to go up
    margin = 2.0 * jnp.sqrt(jnp.abs(gap)) + 1.0
    return sample_rank_key(jnp.round(above(keys[near]) + gap + jnp.sign(gap) * margin))

  j1 = kf * per_score - 0.5
  warm = None
  if hint is None:
    k1 = quantile(j1)
  else:
    warm = jnp.isfinite(hint)
    # Just below the hint: C(u1) = G(hint), the number kept by the hint.
    k1 = jnp.where(warm, _to_key(canonicalize_scores(hint)) - 1, quantile(j1))
    # Where the hint sits in the sample (for the density correction).
    j1 = jnp.where(warm, above(k1) - 0.5, j1)
  p1 = counted(k1)
  c1 = p1[1]
  k2 = quantile(j1 - (c1 - k).astype(jnp.float32) * per_score)
  col = [p1]
  passes = _i32(1)

  def one_more(col, key_fn, done):
    """One more column-counted pass unless ``done`` (then pass 1 repeated,
    which changes no bracket), and the passes it made (0 or 1)."""
    new = lax.cond(done, lambda: p1, lambda c=tuple(col): counted(key_fn(c)))
    return new, _i32(jnp.where(done, 0, 1))

  def conditional(key_fn):
    """One more pass unless the passes so far bracket k within budget."""
    nonlocal passes
    new, made = one_more(col, key_fn, tight_bracket(col)[1])
    passes = passes + made
    col.append(new)

  def guided_passes():
    """Up to ``_GUIDED_PASSES`` guided passes, each skipped when the passes
    so far bracket k within budget, when their bracket is one key wide (the
    k-th value is tied: no probe can narrow it, the fallback ends at once) or
    when the last guided read repeated a probed key (a read that points past
    the sample's ends, e.g. k beyond the ties at 0: the next would too)."""
    local, made = list(col), _i32(0)
    for i in range(_GUIDED_PASSES):
      _, own, key_lo, key_hi, _, _, brackets = tight_bracket(local)
      done = own | (brackets & (key_hi - key_lo <= 1))
      if i:
        keys = jnp.stack([p[0] for p in local])
        done = done | jnp.any(keys[:-1] == keys[-1])
      new, n = one_more(local, guided, done)
      local.append(new)
      made = made + n
    return tuple(local[len(col) :]), made

  if warm is None:
    col.append(counted(k2))
    passes = passes + 1
  else:
    # Warm: aim the density-corrected estimate past k so that passes 1-2 may
    # bracket it (the hint is typically a few hundred entries off).
    def k2_warm(c):
      e1 = jnp.abs(c1 - k).astype(jnp.float32)
      margin = 3.0 * jnp.sqrt(e1) + 16.0 + 0.25 * e1
      j = j1 - (c1 - kf + jnp.where(c1 >= k, margin, -margin)) * per_score
      cold = quantile(j1 - (c1 - k).astype(jnp.float32) * per_score)
      # A hint that keeps exactly k: the next key up brackets the ties at it.
      return jnp.where(warm, jnp.where(c1 == k, k1 + 1, quantile(j)), cold)

    conditional(k2_warm)
  p2 = col[-1]
  k3 = _key_secant(k1, c1, p2[0], p2[1], kf)
  if warm is None:
    col.append(counted(k3))
    passes = passes + 1
  else:
    conditional(lambda c: k3)
  conditional(lambda c: aim(c, 0.0))
  for _ in range(_EXTRA_PASSES):
    conditional(lambda c: aim(c, 0.25))
  # Behind one cond: where the passes so far suffice (float32 scores,
  # nearly always) the guided passes cost one bracket test, not three.
  guided_col, made = lax.cond(
    tight_bracket(col)[1], lambda: ((p1,) * _GUIDED_PASSES, _i32(0)), guided_passes
  )
  col.extend(guided_col)
  passes = passes + made

  ok, own, key_lo, key_hi, c_hi, diff, _ = tight_bracket(col)
  u_lo, u_hi = value(key_lo), value(key_hi)
  # The k-th largest overall is the r-th largest candidate u_lo < s <= u_hi.
  r = k - c_hi

  def finish(cands):
    cands = [jnp.where((x > u_lo) & (x <= u_hi), x, -_FLOAT32_MAX) for x in cands]
    n_cand = sum(_isum(x > -_FLOAT32_MAX) for x in cands)
    # Start from the bracket itself: G(key(u_lo) + 1) = every candidate,
    # G(key(u_hi) + 1) = none; counting only, no sample.
    init = (_to_key(u_lo) + 1, _to_key(u_hi) + 1, n_cand, _i32(0))
    lo, count_lo, _ = _loop_select(
      cands, r, sum(int(x.size) for x in cands), 0, 128, seed, init, barriers=False
    )
    # Snap to the r-th largest candidate itself: the k-th largest score.
    tau = _from_key(lo)
    tau = jnp.min(jnp.stack([jnp.min(jnp.where(x >= tau, x, jnp.inf)) for x in cands]))
    return tau, c_hi + count_lo

  def general():
    _, idx = lax.top_k(diff, capacity)
    cand, _ = _gather_columns(leaves, blocks, idx, plan.group)
    return finish([cand])

  tau, kept = lax.cond(own, lambda: finish(_gather_own_columns(leaves, plan, diff)), general)

  # Tightest bracket of all passes, as keys of G(key) = #{s >= value(key)}:
  # C(value(key)) = G(key + 1).
  keys = jnp.stack([p[0] for p in col]) + 1
  counts = jnp.stack([p[1] for p in col])
  is_lo = counts >= k
  lo = jnp.argmax(jnp.where(is_lo, keys, -_MAX_KEY - 1))
  hi = jnp.argmin(jnp.where(is_lo, _MAX_KEY + 2, keys))
  bracket = (
    jnp.where(jnp.any(is_lo), keys[lo], -_MAX_KEY).astype(jnp.int32),
    jnp.where(jnp.all(is_lo), _MAX_KEY + 1, keys[hi]).astype(jnp.int32),
    jnp.where(jnp.any(is_lo), counts[lo], total).astype(jnp.int32),
    jnp.where(jnp.all(is_lo), 0, counts[hi]).astype(jnp.int32),
  )
  return tau, kept, ok, bracket, passes


def _loop_select(leaves, k, total, sample_size, max_passes, seed, bracket=None, *, barriers=True):
  """General counting select: works for any input, in 9-40 passes.

  Keeps a bracket ``lo < hi`` of order-preserving integer keys with
  ``G(lo) >= k > G(hi)``: the first two probes are sample quantiles around
  ``k / D``, later ones interpolate the counts (alternately just below and
  just above the estimate), and a probe bisects the key range whenever
  interpolation stops paying (ties, odd distributions). ``bracket`` (keys
  ``lo, hi`` and their counts) warm-starts the search, skipping the sample.
  Returns ``(lo_key, G(lo_key), passes)``: ``G(lo) == k``, or ``G(lo) > k``
  and ``lo`` is the key of the k-th value (ties).
  """
  k = _i32(k)
  first = 0
  below = above = _i32(0)
  if bracket is None:
    sample = jnp.sort(_sample(leaves, sample_size, seed))[::-1]  # descending
    s = sample.shape[0]
    # Rank of the k-th largest within the sample, with a binomial margin.
    rank = k.astype(jnp.float32) * (s / total)
    spread = 3.0 * jnp.sqrt(rank * (1.0 - rank / s)) + 2.0
    below = _to_key(sample[jnp.clip(jnp.ceil(rank + spread), 0, s - 1).astype(jnp.int32)])
    above = _to_key(sample[jnp.clip(jnp.floor(rank - spread), 0, s - 1).astype(jnp.int32)])
    init = (
      _i32(-_MAX_KEY),
      _i32(_MAX_KEY + 1),
      _i32(total),
      _i32(0),
      _i32(0),
      _i32(total),
      _i32(total),
    )
  else:
    # Start after the two sample probes, straight into interpolation.
    first = 2
    lo_key, hi_key, count_lo, count_hi = (_i32(x) for x in bracket)
    init = (lo_key, hi_key, count_lo, count_hi, _i32(first), count_lo - count_hi, _i32(total))

  def done(state):
    lo, hi, count_lo, _, passes, _, _ = state
    return (count_lo == k) | (lo + 1 >= hi) | (passes >= max_passes + first)

  def probe_key(state):
    lo, hi, count_lo, count_hi, passes, _, entries_two_ago = state
    entries = count_lo - count_hi  # entries with a key in [lo, hi)
    n = jnp.maximum(entries, 1).astype(jnp.float32)
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
    return jnp.clip(key, lo + 1, hi - 1).astype(jnp.int32)

  def step(state):
    lo, hi, count_lo, count_hi, passes, entries_prev, _ = state
    t = probe_key(state)
    count_t = _count_at_least(leaves, t, barriers)
    keep_up = count_t >= k
    return (
      jnp.where(keep_up, t, lo),
      jnp.where(keep_up, hi, t),
      jnp.where(keep_up, count_t, count_lo),
      jnp.where(keep_up, count_hi, count_t),
      passes + 1,
      count_lo - count_hi,
      entries_prev,
    )

  lo, _, count_lo, _, passes, _, _ = lax.while_loop(lambda st: ~done(st), step, init)
  return lo, count_lo, passes - first


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
