"""The counting select against the sort-based reference (what the official code does)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seven_jax import threshold as th

SHAPES = [(30, 40), (7,), (100, 3), (1,), (5, 5, 4)]
# Fixed seeds per score kind (``hash(str)`` is salted per process).
_SEEDS = {
  "signed": 11,
  "nonnegative": 12,
  "tied": 13,
  "constant": 14,
  "zeros_and_tiny": 15,
  "huge_range": 16,
}


def _leaves(rng, kind):
  leaves = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
  if kind == "nonnegative":
    leaves = [np.abs(x) for x in leaves]
  elif kind == "tied":
    leaves = [np.round(np.abs(x) * 2).astype(np.float32) for x in leaves]
  elif kind == "constant":
    leaves = [np.full(s, 0.25, np.float32) for s in SHAPES]
  elif kind == "zeros_and_tiny":
    leaves = [
      np.where(rng.random(s) < 0.5, 0.0, 1e-35 * rng.random(s)).astype(np.float32)
      + (rng.random(s) < 0.1) * 3.0
      for s in SHAPES
    ]
  elif kind == "huge_range":
    leaves = [
      (rng.standard_normal(s) * 10.0 ** rng.integers(-30, 38, s)).astype(np.float32) for s in SHAPES
    ]
  return [th.canonicalize_scores(jnp.asarray(x)) for x in leaves]


@pytest.mark.parametrize(
  "kind", ["signed", "nonnegative", "tied", "constant", "zeros_and_tiny", "huge_range"]
)
def test_same_mask_as_sorting(kind):
  rng = np.random.default_rng(_SEEDS[kind])
  leaves = _leaves(rng, kind)
  total = sum(x.size for x in leaves)
  select = jax.jit(th.kth_largest_threshold)
  for k in [0, 1, 2, total // 3, total // 2, total - 1, total, int(rng.integers(1, total))]:
    tau = select(leaves, jnp.int32(k))
    ref = th.sort_reference_threshold(leaves, k)
    for x in leaves:
      np.testing.assert_array_equal(
        np.asarray(x >= tau), np.asarray(x) >= ref, err_msg=f"{kind}, k={k}"
      )


def test_keeps_exactly_k_without_ties_and_all_ties_with_them():
  rng = np.random.default_rng(1)
  leaves = [jnp.asarray(rng.permutation(1000).reshape(10, 100).astype(np.float32))]
  for k in [1, 10, 999]:
    masks = th.topk_masks(leaves, k)
    assert int(masks[0].sum()) == k
  tied = [jnp.asarray(np.repeat(np.arange(10.0, dtype=np.float32), 10))]
  # The 15th largest is 8.0, and all ten 8.0s are kept, as in the official code.
  assert int(th.topk_masks(tied, 15)[0].sum()) == 20


def test_indicator_counts_are_exact_at_the_edges_of_the_float_range():
  x = jnp.asarray(
    [
      0.0,
      1e-30,
      -1e-30,
      np.nextafter(np.float32(1e-30), np.float32(1)),
      3.0e38,
      -3.0e38,
      np.finfo(np.float32).max,
    ],
    jnp.float32,
  )
  for u in [0.0, 1e-30, -1e-30, 1.0, 3.0e38, -3.0e38]:
    got = int(th._count_greater([x], jnp.float32(u)))
    assert got == int(np.sum(np.asarray(x) > np.float32(u))), u


@pytest.mark.parametrize("barriers", [True, False])
def test_row_counts_equal_are_exact_at_the_edges_of_the_float_range(barriers):
  # Neighbouring canonical values (2**-123 apart at TINY), both signs, zero,
  # the largest floats, and values +-inf: ties counted per row, exactly.
  edge = np.array(
    [0.0, 1e-30, -1e-30, np.nextafter(np.float32(1e-30), np.float32(1)), 3.0e38, -3.0e38, 1.0],
    np.float32,
  )
  edge = np.append(edge, np.finfo(np.float32).max).astype(np.float32)
  rng = np.random.default_rng(3)
  rows = rng.choice(edge, size=(64, 37)).astype(np.float32)
  count = jax.jit(lambda r, v: th.row_counts_equal(r, v, barriers=barriers))
  for v in list(edge) + [np.float32(np.inf), np.float32(-np.inf), np.float32(2.0)]:
    got = np.asarray(count(jnp.asarray(rows), jnp.float32(v)))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, np.sum(rows == v, axis=1), err_msg=str(v))


def test_row_counts_equal_of_rows_beyond_float32_integers():
  # A row of 2**24 + 3 entries, two of them ties: 2**24 + 1 entries differ,
  # an odd count above 2**24 that no float32 can hold, so a float32 row sum
  # cannot give it; such rows take the int32 count.
  n = (1 << 24) + 3
  row = np.full((1, n), 2.0, np.float32)
  row[0, [5, n - 1]] = 0.0
  got = int(jax.jit(th.row_counts_equal)(jnp.asarray(row), jnp.float32(0.0))[0])
  assert got == 2


def test_keys_are_order_preserving_and_invertible():
  values = np.array([-3e38, -1.0, -1e-30, 0.0, 1e-30, 2e-30, 1.0, 3e38], np.float32)
  keys = np.asarray(th._to_key(jnp.asarray(values)))
  assert np.all(np.diff(keys) > 0)
  np.testing.assert_array_equal(np.asarray(th._from_key(jnp.asarray(keys))), values)
  assert int(th._to_key(jnp.float32(1e-30))) == 1


def test_canonicalize_removes_nan_and_inf():
  x = th.canonicalize_scores(jnp.asarray([np.nan, np.inf, -np.inf, 1e-31, 2.0]))
  assert np.all(np.isfinite(np.asarray(x)))
  np.testing.assert_array_equal(np.asarray(x)[[0, 3, 4]], [0.0, 0.0, 2.0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_canonicalize_matches_nan_to_num_then_the_tiny_test_bit_for_bit(dtype):
  # Independent reference: numpy's nan_to_num, then values below 1e-30 in
  # magnitude to +0, compared as bits (so -0.0 vs +0.0 counts), eager and jitted.
  rng = np.random.default_rng(5)
  special = [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30, 9.9e-31, -9.9e-31]
  special += [3.4028235e38, -3.4028235e38, 1e-45, -1e-45, 1.0, -2.5]
  if dtype == np.float64:
    special += [1e39, -1e300, 1e-40]
  x = np.concatenate([special, rng.standard_normal(4000) * np.exp(30 * rng.standard_normal(4000))])
  x = x.astype(dtype)
  ref = np.nan_to_num(
    x.astype(np.float32), nan=0.0, posinf=np.finfo(np.float32).max, neginf=-np.finfo(np.float32).max
  )
  ref = np.where(np.abs(ref) >= np.float32(1e-30), ref, np.float32(0.0)).astype(np.float32)
  for fn in (th.canonicalize_scores, jax.jit(th.canonicalize_scores)):
    got = np.asarray(fn(jnp.asarray(x)))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.int32), ref.view(np.int32))


def test_large_leaf_counts_beyond_float32_integer_range():
  # 2**24 + 10 entries: partial sums must stay exact.
  n = (1 << 24) + 10
  x = jnp.ones((n,), jnp.float32)
  assert int(th._count_greater([x], jnp.float32(0.5))) == n
  # The sample's count at this size takes the blocked path (int32 counts, then
  # float32: n is even, so exactly representable).
  assert int(jax.jit(th._count_above)(x, th._to_key(jnp.float32(0.5)))) == n


# The four-probe fast path normally starts at 2**18 scores; these tests force
# it on small inputs (tiny columns and capacity), so that both its own answer and
# its fallback are checked against the sort.
_FAST = dict(fast_min=0, group=8, capacity=32)


@pytest.mark.parametrize(
  "kind", ["signed", "nonnegative", "tied", "constant", "zeros_and_tiny", "huge_range"]
)
def test_fast_path_same_mask_as_sorting(kind, monkeypatch):
  monkeypatch.setattr("tests.test_threshold.SHAPES", [(300, 40), (7,), (100, 30), (1,), (50, 5, 4)])
  rng = np.random.default_rng(_SEEDS[kind] + 1)
  leaves = _leaves(rng, kind)
  total = sum(x.size for x in leaves)
  select = jax.jit(lambda ls, k: th.threshold_and_passes(ls, k, **_FAST))
  for k in [0, 1, 2, total // 3, total // 2, total - 1, total, int(rng.integers(1, total))]:
    tau, _ = select(leaves, jnp.int32(k))
    ref = th.sort_reference_threshold(leaves, k)
    for x in leaves:
      np.testing.assert_array_equal(
        np.asarray(x >= tau), np.asarray(x) >= ref, err_msg=f"{kind}, k={k}"
      )


def test_fast_path_answers_in_four_passes_on_continuous_scores():
  rng = np.random.default_rng(3)
  leaves = [
    jnp.asarray(rng.random(s).astype(np.float32)) for s in [(512, 256), (256, 512), (300, 7)]
  ]
  total = sum(x.size for x in leaves)
  for k in [total // 10, total // 2, (9 * total) // 10]:
    tau, passes = th.threshold_and_passes(leaves, k, fast_min=0)
    assert 2 <= int(passes) <= 4  # no fallback
    ref = th.sort_reference_threshold(leaves, k)
    for x in leaves:
      np.testing.assert_array_equal(np.asarray(x >= tau), np.asarray(x) >= ref)


def test_column_blocks_cover_every_entry_once():
  sizes = [10, 16, 3, 40]
  blocks = th._plan_blocks(sizes, 8)
  covered = {i: 0 for i in range(len(sizes))}
  for b in blocks:
    covered[b.leaf] += b.groups * b.columns
  assert covered == dict(enumerate(sizes))


def test_fast_path_extra_passes_and_fallback_are_exact_on_heavy_tails():
  # Log-normal-like scores (SEVEN's |w g m/sqrt(v)| spans decades) with a
  # small sample: the secants are poor, so the conditional passes 5-6 and the
  # general fallback all run; every answer must still equal the sort's.
  rng = np.random.default_rng(0)
  shapes = [(300, 40), (7,), (100, 30), (1,), (50, 5, 4)]
  select = jax.jit(
    lambda ls, k: th.threshold_and_passes(ls, k, fast_min=0, group=8, capacity=32, sample_size=512)
  )
  seen = set()
  for _ in range(2):
    leaves = [
      jnp.asarray(
        np.abs(rng.standard_normal(s) * np.exp(3 * rng.standard_normal(s))).astype(np.float32)
      )
      for s in shapes
    ]
    total = sum(x.size for x in leaves)
    for k in np.linspace(1, total - 1, 25).astype(int):
      tau, passes = select(leaves, jnp.int32(k))
      seen.add(int(passes))
      ref = th.sort_reference_threshold(leaves, int(k))
      for x in leaves:
        np.testing.assert_array_equal(np.asarray(x >= tau), np.asarray(x) >= ref, err_msg=f"k={k}")
  # Both the fast path's own answer and the general fallback were exercised.
  assert min(k for k in seen if k > 1) <= 4 and max(seen) > 6, seen


@pytest.mark.parametrize("kind", ["signed", "tied", "constant", "huge_range"])
def test_extreme_k_paths_are_exact_and_take_one_pass(kind, monkeypatch):
  # Keep at most `capacity` or drop fewer than `capacity`: one pass of
  # per-column maxima/minima (the first steps of every pruning window).
  monkeypatch.setattr("tests.test_threshold.SHAPES", [(300, 40), (7,), (100, 30), (1,), (50, 5, 4)])
  rng = np.random.default_rng(_SEEDS[kind] + 2)
  leaves = _leaves(rng, kind)
  total = sum(x.size for x in leaves)
  cap = _FAST["capacity"]
  select = jax.jit(lambda ls, k: th.threshold_and_passes(ls, k, **_FAST))
  for k in [1, 2, 17, cap, total - cap + 1, total - 5, total - 1, total]:
    tau, passes = select(leaves, jnp.int32(k))
    assert int(passes) == 1, k
    ref = th.sort_reference_threshold(leaves, k)
    for x in leaves:
      np.testing.assert_array_equal(
        np.asarray(x >= tau), np.asarray(x) >= ref, err_msg=f"{kind}, k={k}"
      )
  _, passes = select(leaves, jnp.int32(cap + 1))
  assert int(passes) >= 3  # the general fast path (three passes at least; extreme: one)


def _ref_kept(leaves, tau):
  return sum(int(np.sum(np.asarray(x) >= np.float32(tau))) for x in leaves)


@pytest.mark.parametrize("kind", ["signed", "tied", "constant", "huge_range"])
def test_stats_report_the_kept_count_and_tau_is_the_kth_value(kind, monkeypatch):
  monkeypatch.setattr("tests.test_threshold.SHAPES", [(300, 40), (7,), (100, 30), (1,), (50, 5, 4)])
  rng = np.random.default_rng(_SEEDS[kind] + 3)
  leaves = _leaves(rng, kind)
  total = sum(x.size for x in leaves)
  for opts in [_FAST, {}]:
    select = jax.jit(lambda ls, k, o=opts: th.threshold_stats(ls, k, **o))
    for k in [1, 5, 40, total // 3, total // 2, total - 3, total]:
      st = select(leaves, jnp.int32(k))
      ref = th.sort_reference_threshold(leaves, k)
      assert float(st.tau) == float(ref), (kind, k, opts)
      assert int(st.kept) in (-1, _ref_kept(leaves, ref)), (kind, k, opts)


@pytest.mark.parametrize("kind", ["signed", "nonnegative", "tied", "huge_range"])
def test_warm_start_equals_cold_for_any_hint(kind, monkeypatch):
  monkeypatch.setattr("tests.test_threshold.SHAPES", [(300, 40), (7,), (100, 30), (1,), (50, 5, 4)])
  rng = np.random.default_rng(_SEEDS[kind] + 4)
  leaves = _leaves(rng, kind)
  flat = np.sort(np.concatenate([np.asarray(x).reshape(-1) for x in leaves]))[::-1]
  total = flat.size
  select = jax.jit(lambda ls, k, h: th.threshold_stats(ls, k, hint=h, **_FAST))
  warm_passes = []
  for k in [total // 3, total // 2, (4 * total) // 5]:
    cold = select(leaves, jnp.int32(k), jnp.float32(jnp.nan))
    near = [flat[min(total - 1, k - 1 + d)] for d in (-200, -20, -1, 0, 1, 20, 200)]
    for h in near + [flat[0], flat[-1], np.inf, -np.inf, 1e30]:
      st = select(leaves, jnp.int32(k), jnp.float32(h))
      assert float(st.tau) == float(cold.tau), (kind, k, h)
      assert int(st.kept) == int(cold.kept) or -1 in (int(st.kept), int(cold.kept))
      if h in near:
        warm_passes.append(int(st.passes))
  # A hint within a few hundred entries usually confirms its bracket in <= 3
  # passes on continuous scores (tied or decades-wide ones may need more).
  if kind in ("signed", "nonnegative"):
    assert np.median(warm_passes) <= 3, warm_passes


def test_plain_xla_path_is_exact(monkeypatch):
  monkeypatch.setattr("tests.test_threshold.SHAPES", [(300, 40), (7,), (100, 30), (1,), (50, 5, 4)])
  leaves = _leaves(np.random.default_rng(5), "signed")
  total = sum(x.size for x in leaves)
  for opts in [dict(_FAST, barriers=False), {"barriers": False}]:
    select = jax.jit(lambda ls, k, o=opts: th.threshold_and_passes(ls, k, **o))
    for k in [1, total // 3, total - 1]:
      tau, _ = select(leaves, jnp.int32(k))
      assert float(tau) == float(th.sort_reference_threshold(leaves, k))
  hlo = jax.jit(lambda ls: th.kth_largest_threshold(ls, 10, barriers=False, fast_min=0))
  assert "opt-barrier" not in hlo.lower(leaves).compile().as_text()


def test_zero_size_leaves_are_ignored():
  leaves = [jnp.zeros((0, 3)), jnp.arange(10.0), jnp.zeros((0,))]
  assert float(th.kth_largest_threshold(leaves, 3)) == 7.0
  with pytest.raises(ValueError, match="at least one score"):
    th.kth_largest_threshold([jnp.zeros((0, 3))], 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_path_no_fallback_on_heavy_tailed_scores(seed):
  # SEVEN-like |w g| scores spanning many decades: the sampled estimates
  # bracket the k-th value within the four probes (no fifth pass, no fallback).
  rng = np.random.default_rng(seed)
  x = np.abs(rng.standard_normal((1024, 1024)) * np.exp(2.0 * rng.standard_normal((1024, 1024))))
  leaves = [jnp.asarray(x.astype(np.float32))]
  k = int(0.4 * x.size)
  tau, passes = jax.jit(lambda ls: th.threshold_and_passes(ls, k))(leaves)
  assert 2 <= int(passes) <= 4
  np.testing.assert_array_equal(
    np.asarray(leaves[0] >= tau), x.astype(np.float32) >= th.sort_reference_threshold(leaves, k)
  )


def test_sample_counts_are_exact_at_every_key():
  # Independent reference: numpy's count of the keys above. Canonical values
  # of every sign and magnitude (0, TINY, the float32 extremes, runs of ties),
  # probed at their own keys, their neighbours and both ends of the key range.
  rng = np.random.default_rng(3)
  x = np.concatenate(
    [
      rng.standard_normal(70_000) * np.exp(8.0 * rng.standard_normal(70_000)),
      np.zeros(5_000),
      np.full(3_000, 1e-30),
      np.full(3_000, -1e-30),
      [np.finfo(np.float32).max, -np.finfo(np.float32).max, 2.5, 2.5, 2.5],
    ]
  ).astype(np.float32)
  values = th.canonicalize_scores(jnp.asarray(x))
  keys = np.asarray(th._to_key(values))
  probes = np.concatenate(
    [
      keys[rng.integers(0, keys.size, 60)],
      [0, 1, -1, th._MAX_KEY, -th._MAX_KEY, th._MAX_KEY + 1, -th._MAX_KEY - 1],
    ]
  ).astype(np.int32)
  probes = np.concatenate([probes, probes + 1, probes - 1]).clip(-th._MAX_KEY - 1, th._MAX_KEY + 1)
  got = jax.jit(jax.vmap(lambda k: th._count_above(values, k)))(jnp.asarray(probes))
  want = (keys[None, :] > probes[:, None]).sum(axis=1)
  np.testing.assert_array_equal(np.asarray(got), want.astype(np.float32))


@pytest.mark.parametrize("dist", ["uniform", "heavy"])
def test_sample_quantile_by_counting_matches_the_sorted_sample(dist):
  # Independent reference: the sorted sample itself. The counted read must
  # land within a couple of sample entries of the exact rank, at every rank.
  rng = np.random.default_rng(7)
  n = (1 << 18) - 1  # not a multiple of the stride
  x = (
    rng.random(n)
    if dist == "uniform"
    else np.abs(rng.standard_normal(n) * np.exp(2.0 * rng.standard_normal(n)))
  )
  values = jnp.asarray(x.astype(np.float32))
  sample = th._to_key(values)
  stride = n // (1 << 14)
  sub = jnp.sort(sample[::stride])[::-1]
  read = jax.jit(lambda j: th._sample_quantile(sample, values, sub, stride, j))
  for j in [0.0, 3.0, 0.1 * n, 0.4 * n + 0.3, 0.5 * n, 0.9 * n, n - 5.0]:
    rank = int(jnp.sum(sample > read(jnp.float32(j))))
    assert abs(rank - (j + 0.5)) <= 2.5, (dist, j, rank)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gapped_scores_of_a_pruning_step_take_the_fast_path(seed):
  # What the pruning engine selects on at every step after its first: the
  # pruned weights score 0, the survivors all score above the last threshold
  # (SEVEN's scores only grow), and the new k-th value sits just above that
  # empty gap (this step drops 0.6% of the weights). The sample's quantile
  # read used to land in the gap, where every count is the same, and the
  # search fell back to 19-42 passes; the answer must be exact in <= 6.
  rng = np.random.default_rng(seed)
  leaves = []
  for shape in [(512, 768), (768, 512), (256, 1024)]:
    u = rng.random(shape).astype(np.float32)
    leaves.append(np.where(u > 0.3, u + 0.01 * rng.random(shape), 0.0).astype(np.float32))
  flat = np.concatenate([x.ravel() for x in leaves])
  k = int((flat > 0).sum()) - int(0.006 * flat.size)
  st = jax.jit(lambda s: th.threshold_stats(s, k))([jnp.asarray(x) for x in leaves])
  assert float(st.tau) == np.sort(flat)[::-1][k - 1]
  assert int(st.kept) == int((flat >= float(st.tau)).sum())
  assert int(st.passes) <= 6, int(st.passes)


@pytest.mark.parametrize(
  "sigma, spread, drop, seed", [(0.3, 1e-3, 0.003, 0), (0.2, 5e-4, 0.006, 0), (0.2, 5e-4, 0.006, 2)]
)
def test_clustered_scores_of_bfloat16_statistics_take_the_fast_path(sigma, spread, drop, seed):
  # An accumulated score stored in bfloat16 (the engine's, before S stayed
  # float32 under stats_dtype=bfloat16) is ranked as S_old + increment: S_old holds bfloat16 values
  # (8 significant bits) and the increment is a small float32 one, so the
  # scores form dense clusters at the bfloat16 values
  # with empty gaps between. The secants and the sample-quantile read landed
  # in the gaps and the search fell back (43/17/34 passes on these inputs;
  # 13-70 on half the steps of a MiniLM run); the guided passes read the
  # sample exactly and find it in <= 8, exact.
  rng = np.random.default_rng(seed)
  leaves = []
  for shape in [(512, 768), (768, 512), (256, 1024)]:
    base = rng.lognormal(-10.0, sigma, size=shape).astype(np.float32)
    s_old = np.asarray(jnp.asarray(base, jnp.bfloat16).astype(jnp.float32))
    inc = (spread * base * rng.random(shape)).astype(np.float32)
    leaves.append(np.where(rng.random(shape) > 0.4, s_old + inc, 0.0).astype(np.float32))
  flat = np.concatenate([x.ravel() for x in leaves])
  k = int((flat > 0).sum()) - int(drop * flat.size)
  st = jax.jit(lambda s: th.threshold_stats(s, k))([jnp.asarray(x) for x in leaves])
  assert float(st.tau) == np.sort(flat)[::-1][k - 1]
  assert int(st.kept) == int((flat >= float(st.tau)).sum())
  assert int(st.passes) <= 8, int(st.passes)
