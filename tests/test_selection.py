"""select_masks against brute-force numpy references: exact ties, keep-all ties,
per-leaf budgets, zero-size leaves, float64 scores and ``jax_enable_x64``."""

import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seven_jax import schedules, selection
from seven_jax import threshold as th

SHAPES = [(30, 40), (7,), (0, 5), (100, 3), (1,), (5, 5, 4), ()]


def _scores(rng, kind, shapes=SHAPES):
  out = []
  for s in shapes:
    if kind == "tied":
      x = np.round(np.abs(rng.standard_normal(s)) * 2)
    elif kind == "constant":
      x = np.full(s, 0.25)
    elif kind == "zeros":  # dead inputs / all-zero gradients
      x = np.zeros(s)
    elif kind == "mostly_zero":
      x = np.where(rng.random(s) < 0.8, 0.0, rng.random(s))
    else:
      x = rng.standard_normal(s)
    out.append(np.asarray(x, np.float32))
  return out


def _reference_exact(scores, prefer, k):
  """First ``k`` by (score desc, preferred first, global row-major index)."""
  flat = np.concatenate([s.reshape(-1) for s in scores])
  pref = np.concatenate([p.reshape(-1) for p in prefer])
  order = np.lexsort((np.arange(flat.size), ~pref, -flat))
  keep = np.zeros(flat.size, bool)
  keep[order[:k]] = True
  out, start = [], 0
  for s in scores:
    out.append(keep[start : start + s.size].reshape(s.shape))
    start += s.size
  return out


def _k(ratio, n):
  return int(schedules.keep_count(ratio, n))


@pytest.mark.parametrize("kind", ["tied", "constant", "zeros", "mostly_zero", "signed"])
@pytest.mark.parametrize("scope", ["global", "per_leaf"])
def test_exact_ties_match_brute_force(kind, scope):
  rng = np.random.default_rng({"tied": 1, "constant": 2, "zeros": 3, "mostly_zero": 4}.get(kind, 5))
  scores = _scores(rng, kind)
  masks = [rng.random(s.shape) < 0.6 for s in scores]
  select = jax.jit(
    lambda s, m, r: selection.select_masks(s, m, r, scope=scope, resurrect=True, ties="exact")
  )
  for ratio in [0.0, 0.1, 0.5, 0.77, 1.0]:
    got = select([jnp.asarray(x) for x in scores], [jnp.asarray(m) for m in masks], ratio)
    if scope == "global":
      total = sum(x.size for x in scores)
      want = _reference_exact(scores, masks, _k(ratio, total))
    else:
      want = [_reference_exact([x], [m], _k(ratio, x.size))[0] for x, m in zip(scores, masks)]
    for g, w in zip(got, want):
      np.testing.assert_array_equal(np.asarray(g), w, err_msg=f"{kind} {scope} r={ratio}")
    if scope == "global":
      assert sum(int(np.sum(g)) for g in got) == _k(ratio, sum(x.size for x in scores))


@pytest.mark.parametrize("kind", ["tied", "constant", "zeros"])
def test_keep_all_is_the_official_rule(kind):
  rng = np.random.default_rng(7)
  scores = _scores(rng, kind)
  masks = [np.ones(s.shape, bool) for s in scores]
  live = [x for x in scores if x.size]
  total = sum(x.size for x in scores)
  for ratio in [0.1, 0.5, 0.9]:
    k = _k(ratio, total)
    ref = th.sort_reference_threshold(live, k)
    got = selection.select_masks(
      [jnp.asarray(x) for x in scores], [jnp.asarray(m) for m in masks], ratio, ties="keep_all"
    )
    for g, x in zip(got, scores):
      np.testing.assert_array_equal(np.asarray(g), x >= ref)


def test_constant_scores_reach_the_asked_sparsity():
  # The case: all-zero scores, 0.5 asked. keep_all keeps everything.
  scores = [jnp.zeros((64, 32)), jnp.zeros((32, 16))]
  masks = [jnp.ones(s.shape, bool) for s in scores]
  exact = selection.select_masks(scores, masks, 0.5)
  assert sum(int(m.sum()) for m in exact) == (64 * 32 + 32 * 16) // 2
  # Ties go to the lower flat index: the first leaf's first half.
  np.testing.assert_array_equal(np.asarray(exact[0]).reshape(-1)[:1280], True)
  loose = selection.select_masks(scores, masks, 0.5, ties="keep_all")
  assert all(bool(m.all()) for m in loose)


def test_without_resurrection_ties_prefer_kept_weights_and_masks_only_shrink():
  rng = np.random.default_rng(8)
  scores = [np.zeros((20, 10), np.float32), np.full((10, 10), 1.0, np.float32)]
  masks = [rng.random(s.shape) < 0.5 for s in scores]
  got = selection.select_masks(
    [jnp.asarray(x) for x in scores], [jnp.asarray(m) for m in masks], 0.3, resurrect=False
  )
  k = _k(0.3, 300)
  filled = [np.where(m, x, 0.0).astype(np.float32) for x, m in zip(scores, masks)]
  want = _reference_exact(filled, masks, k)
  for g, w, m in zip(got, want, masks):
    np.testing.assert_array_equal(np.asarray(g), w & m)
    assert not np.any(np.asarray(g) & ~m)
  assert sum(int(np.sum(g)) for g in got) == k


@pytest.mark.parametrize("signed", [False, True])
def test_pruned_filled_scores_skip_the_masking_and_select_the_same(signed):
  # The engine's scores already hold the fill value where pruned; told so,
  # select_masks does not mask them again (one materialised copy less) and
  # must return the brute-force masks, on the fast path and below it.
  rng = np.random.default_rng(10)
  for shapes in ([(30, 40), (7,), (100, 3)], [(512, 300), (300, 512)]):
    masks = [rng.random(s) < 0.6 for s in shapes]
    fill = selection.LOWEST_SCORE if signed else np.float32(0.0)
    raw = [np.round(rng.standard_normal(s) * 20).astype(np.float32) for s in shapes]
    raw = raw if signed else [np.abs(x) for x in raw]
    filled = [np.where(m, x, fill).astype(np.float32) for x, m in zip(raw, masks)]
    total = sum(x.size for x in filled)
    select = jax.jit(
      lambda s, m, r: selection.select_masks(s, m, r, signed=signed, pruned_filled=True)
    )
    for ratio in [0.2, 0.45]:
      got = select([jnp.asarray(x) for x in filled], [jnp.asarray(m) for m in masks], ratio)
      want = _reference_exact(filled, masks, _k(ratio, total))
      for g, w, m in zip(got, want, masks):
        np.testing.assert_array_equal(np.asarray(g), w & m, err_msg=f"{shapes} r={ratio}")
    # The promise is taken at its word: unfilled scores (pruned weights
    # scoring above every kept one) are not masked again, so the pruned
    # weights take budget and fewer than k survive; without the flag, k.
    high = [np.where(m, x, np.float32(1e6)) for x, m in zip(filled, masks)]
    k = _k(0.2, total)
    for flag, kept in ((True, lambda n: n < k), (False, lambda n: n == k)):
      # Jitted: op by op, the search's many small ops took ~20 s per case.
      got = jax.jit(
        lambda s, m, flag=flag: selection.select_masks(s, m, 0.2, signed=signed, pruned_filled=flag)
      )([jnp.asarray(x) for x in high], [jnp.asarray(m) for m in masks])
      assert kept(sum(int(np.sum(np.asarray(g))) for g in got)), (shapes, flag)


def test_exact_ties_on_the_fast_path():
  # Large enough for the four-probe path; coarse values make ties at tau.
  rng = np.random.default_rng(9)
  shapes = [(512, 300), (300, 512), (64, 64)]
  scores = [np.round(rng.random(s) * 50).astype(np.float32) for s in shapes]
  masks = [rng.random(s) < 0.7 for s in shapes]
  select = jax.jit(lambda s, m, r: selection.select_masks(s, m, r, resurrect=True))
  total = sum(x.size for x in scores)
  for ratio in [0.3, 0.61, 0.999]:
    got = select([jnp.asarray(x) for x in scores], [jnp.asarray(m) for m in masks], ratio)
    want = _reference_exact(scores, masks, _k(ratio, total))
    for g, w in zip(got, want):
      np.testing.assert_array_equal(np.asarray(g), w, err_msg=f"r={ratio}")


@pytest.mark.parametrize("kept_known", [True, False])
def test_the_tie_cut_reads_masks_only_in_leaves_that_hold_a_tie(kept_known):
  # One tie at the k-th score, in one of eight leaves. The cut counts the
  # ties of every row by float arithmetic (fused, no temporary) and splits
  # them by mask class only in that leaf, so XLA's scratch is about one
  # leaf's worth of floats; when each count materialised a compare-and-select
  # of every score it was all of them (8 leaves x 256 KB here; 41 MB and
  # 72 ms at MiniLM size). And it is still the exact top-k.
  rng = np.random.default_rng(12)
  shapes = [(256, 256)] * 8
  flat = rng.permutation(8 * 256 * 256).astype(np.float32) + 1.0
  flat[5 * 65536 + 77] = flat[2 * 65536 + 9]  # one tie, in leaves 2 and 5
  scores = [jnp.asarray(x.reshape(s)) for x, s in zip(np.split(flat, 8), shapes)]
  masks = [jnp.asarray(rng.random(s) < 0.9) for s in shapes]
  tied = float(flat[2 * 65536 + 9])
  k = int(np.sum(flat > tied)) + 1  # keeps one of the two tied scores
  kept = jnp.int32(k + 1) if kept_known else None
  cut = jax.jit(lambda s, m: selection.exact_topk_cut(s, m, jnp.float32(tied), k, kept=kept))
  temp = cut.lower(scores, masks).compile().memory_analysis().temp_size_in_bytes
  assert temp < 1.5 * 256 * 256 * 4, temp
  got = selection.cut_masks(scores, masks, jnp.float32(tied), cut(scores, masks))
  want = _reference_exact([np.asarray(x) for x in scores], [np.asarray(m) for m in masks], k)
  for g, w in zip(got, want):
    np.testing.assert_array_equal(np.asarray(g), w)


def test_zero_size_leaves_per_leaf_and_global():
  scores = [jnp.zeros((0, 4)), jnp.arange(12.0).reshape(3, 4), jnp.zeros((0,))]
  masks = [jnp.ones(s.shape, bool) for s in scores]
  for scope in ["per_leaf", "global"]:
    got = jax.jit(lambda s, m, sc=scope: selection.select_masks(s, m, 0.5, scope=sc))(scores, masks)
    assert [g.shape for g in got] == [(0, 4), (3, 4), (0,)]
    np.testing.assert_array_equal(np.asarray(got[1]).reshape(-1), np.arange(12) >= 6)
  only_empty = selection.select_masks([jnp.zeros((0, 3))], [jnp.ones((0, 3), bool)], 0.5)
  assert only_empty[0].shape == (0, 3)


def test_float64_scores_are_canonicalised():
  rng = np.random.default_rng(10)
  scores64 = [rng.standard_normal((40, 30)), rng.standard_normal((30,))]
  masks = [np.ones(s.shape, bool) for s in scores64]
  got = selection.select_masks(scores64, masks, 0.4, resurrect=True)
  f32 = [np.asarray(th.canonicalize_scores(jnp.asarray(s))) for s in scores64]
  want = _reference_exact(f32, masks, _k(0.4, 1230))
  for g, w in zip(got, want):
    np.testing.assert_array_equal(np.asarray(g), w)


def test_return_threshold_and_hint_give_the_same_masks():
  rng = np.random.default_rng(11)
  scores = [jnp.asarray(rng.random((600, 500)).astype(np.float32))]
  masks = [jnp.ones((600, 500), bool)]
  cold, tau = selection.select_masks(scores, masks, 0.4, return_threshold=True)
  warm, tau_warm = selection.select_masks(
    scores, masks, 0.4, return_threshold=True, hint=tau * 1.001
  )
  np.testing.assert_array_equal(np.asarray(cold[0]), np.asarray(warm[0]))
  assert float(tau) == float(tau_warm)


def test_bad_ties_and_scope_raise():
  s, m = [jnp.ones((4, 4))], [jnp.ones((4, 4), bool)]
  with pytest.raises(ValueError, match="ties"):
    selection.select_masks(s, m, 0.5, ties="all")
  with pytest.raises(ValueError, match="scope"):
    selection.select_masks(s, m, 0.5, scope="layer")


_X64_SCRIPT = textwrap.dedent(
  """
  import jax
  jax.config.update("jax_enable_x64", True)
  import jax.numpy as jnp, numpy as np
  from seven_jax import selection, threshold as th
  rng = np.random.default_rng(0)
  for dtype in [np.float32, np.float64]:
    for shapes in [[(40, 30), (7,)], [(512, 300), (300, 512)]]:
      leaves = [jnp.asarray(rng.standard_normal(s).astype(dtype)) for s in shapes]
      canon = [th.canonicalize_scores(x) for x in leaves]
      total = sum(x.size for x in leaves)
      for k in [1, total // 3, total - 1]:
        tau = jax.jit(th.kth_largest_threshold)(canon, k)
        ref = th.sort_reference_threshold(canon, k)
        assert all(bool(jnp.all((x >= tau) == (x >= ref))) for x in canon), (dtype, k)
      masks = [jnp.ones(s, bool) for s in shapes]
      got = jax.jit(lambda s, m: selection.select_masks(s, m, 0.5, resurrect=True))(leaves, masks)
      assert sum(int(g.sum()) for g in got) == total // 2, dtype
  print("x64 ok")
  """
)


def test_x64_float32_and_float64_scores():
  env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
    [sys.executable, "-c", _X64_SCRIPT],
    env=env,
    cwd=root,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "x64 ok" in proc.stdout


def test_the_new_masks_are_one_pass_after_the_tie_cond():
  # The tie-break ``cond`` returns only the cut (a few scalars); the masks
  # are one fusion per leaf after it, which also ands them with the old ones
  # (no resurrection). Masks output by the ``cond`` itself lived in a
  # temporary buffer and were copied out (on CPU fresh memory on every call:
  # ~2,600 page faults per in-window update at MiniLM size), and an ``and``
  # after it was a pass of its own. So in the compiled entry computation no
  # conditional and no copy may produce a leaf-shaped boolean array, and one
  # op per leaf (besides tuple plumbing) does.
  from benchmarks.common import _computation

  rng = np.random.default_rng(0)
  shapes = [(512, 256), (256, 512), (256, 384)]  # > 2**18 scores: the fast path
  masks = [jnp.asarray(rng.random(s) < 0.8) for s in shapes]
  scores = [
    jnp.where(m, jnp.asarray(rng.random(s), jnp.float32), 0.0) for m, s in zip(masks, shapes)
  ]

  def select(s, m):
    return selection.select_masks(s, m, 0.5, pruned_filled=True)

  hlo = jax.jit(select).lower(scores, masks).compile().as_text()
  got = jax.jit(select)(scores, masks)
  flat = np.concatenate([np.asarray(s).ravel() for s in scores])
  assert sum(int(g.sum()) for g in got) == int(0.5 * flat.size)  # exact k (distinct scores)
  leaf_preds = [f"pred[{','.join(map(str, s))}]" for s in shapes]
  producers, offenders = [], []
  for line in _computation(hlo, None).split("\n")[1:]:
    m = re.match(r"\s*(?:ROOT )?%\S+ = (\(.*?\)|\S+) (\S+?)\(", line)
    if m is None or m.group(2) in ("get-tuple-element", "parameter", "tuple"):
      continue
    if m.group(2) in ("conditional", "copy") and any(p in m.group(1) for p in leaf_preds):
      offenders.append(line.strip()[:160])
    elif m.group(1).split("{")[0] in leaf_preds:
      producers.append(m.group(1).split("{")[0])
  assert not offenders, offenders
  assert sorted(producers) == sorted(leaf_preds), producers
