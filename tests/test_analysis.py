"""seven_jax.analysis: every statistic against a small numpy re-computation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import seven_jax
from seven_jax import analysis


def _grad_stack(seed=0, n=7, shape=(5, 4)):
  rng = np.random.default_rng(seed)
  g = rng.normal(0.3, 1.0, size=(n, *shape)).astype(np.float32)
  g[:, 0, 0] = 0.0  # never any gradient: 0/0
  g[:, 0, 1] = np.tile([1.0, -1.0], n)[:n] if n % 2 == 0 else np.r_[np.tile([1.0, -1.0], n // 2), 0]
  return g


@pytest.mark.parametrize("ddof", [0, 1])
def test_streaming_rgv_matches_numpy_two_pass(ddof):
  g = _grad_stack(n=8)
  state = analysis.rgv_init({"w": g[0]})
  update = jax.jit(analysis.rgv_update)
  for x in g:
    state = update(state, {"w": jnp.asarray(x)})
  rgv = analysis.rgv_finalize(state, ddof=ddof)
  with np.errstate(divide="ignore", invalid="ignore"):
    want_signed = g.astype(np.float64).var(0, ddof=ddof) / g.astype(np.float64).mean(0) ** 2
    a = np.abs(g.astype(np.float64))
    want_mag = a.var(0, ddof=ddof) / a.mean(0) ** 2
  got_signed, got_mag = np.asarray(rgv.signed["w"]), np.asarray(rgv.magnitude["w"])
  assert np.isnan(got_signed[0, 0]) and np.isnan(got_mag[0, 0])  # no gradient at all
  assert np.isinf(got_signed[0, 1])  # +-1 alternating: mean 0, variance 1
  assert got_mag[0, 1] == 0.0  # |g| constant
  ok = np.isfinite(want_signed)
  np.testing.assert_allclose(got_signed[ok], want_signed[ok], rtol=2e-4)
  np.testing.assert_allclose(
    got_mag[np.isfinite(want_mag)], want_mag[np.isfinite(want_mag)], rtol=2e-4
  )
  np.testing.assert_allclose(np.asarray(rgv.mean["w"]), g.mean(0), atol=1e-6)
  assert int(rgv.count) == 8
  # The two-pass helper agrees with the streaming one.
  direct = analysis.rgv_from_samples(jnp.asarray(g), ddof=ddof)
  np.testing.assert_allclose(np.asarray(direct.signed)[ok], want_signed[ok], rtol=2e-4)


def test_magnitude_rgv_is_the_equal_weight_seven_factor():
  # E|g| / sqrt(E g^2) == 1 / sqrt(1 + Var|g| / E|g|^2), population moments.
  g = _grad_stack(seed=3, n=6)[:, 1:]
  rgv = analysis.rgv_from_samples(jnp.asarray(g))
  rho = np.abs(g).mean(0) / np.sqrt((g**2).mean(0))
  np.testing.assert_allclose(1 / np.sqrt(1 + np.asarray(rgv.magnitude)), rho, rtol=1e-5)


def test_relative_gradient_variation_over_batches_matches_per_batch_grads():
  rng = np.random.default_rng(1)
  params = {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)}
  batches = [
    {
      "x": rng.normal(size=(4, 3)).astype(np.float32),
      "y": rng.normal(size=(4, 2)).astype(np.float32),
    }
    for _ in range(5)
  ]
  loss = lambda p, b: jnp.mean((b["x"] @ p["w"] - b["y"]) ** 2)
  rgv = analysis.relative_gradient_variation(jax.grad(loss), params, iter(batches), num_batches=4)
  # numpy reference: the analytic gradient 2/(n*m) x^T (x w - y) per batch.
  w = np.asarray(params["w"], np.float64)
  g = np.stack([2 * b["x"].T @ (b["x"] @ w - b["y"]) / b["y"].size for b in batches[:4]])
  np.testing.assert_allclose(np.asarray(rgv.signed["w"]), g.var(0) / g.mean(0) ** 2, rtol=1e-3)
  a = np.abs(g)
  np.testing.assert_allclose(np.asarray(rgv.magnitude["w"]), a.var(0) / a.mean(0) ** 2, rtol=1e-3)
  with pytest.raises(ValueError, match="num_batches must be >= 1"):
    analysis.relative_gradient_variation(jax.grad(loss), params, batches, num_batches=0)
  with pytest.raises(ValueError, match="batches is empty"):
    analysis.relative_gradient_variation(jax.grad(loss), params, [])
  with pytest.raises(ValueError, match="ddof must be 0 or 1"):
    analysis.rgv_finalize(analysis.rgv_init(params), ddof=2)


def _numpy_seven_emas(grads, b1, b2):
  m = np.zeros_like(grads[0], np.float64)
  v = np.zeros_like(m)
  for g in grads:
    m = b1 * m + (1 - b1) * np.abs(g)
    v = b2 * v + (1 - b2) * g * g
  return m, v


@pytest.mark.parametrize("calls", [2, 5, 9])
def test_seven_factor_from_a_live_state(calls):
  # start_step 2, N = 5: statistics are updated on calls t = 2, 3, 4, 5 only.
  start, n_steps, b1, b2 = 2, 5, 0.8, 0.9
  rng = np.random.default_rng(calls)
  params = {"w": jnp.asarray(rng.normal(size=(4, 6)), jnp.float32), "b": jnp.zeros(6)}
  tx = seven_jax.seven_mask(
    optax.chain(optax.sgd(0.0)), sparsity=0.5, start_step=start, pruning_steps=n_steps
  )
  tx = optax.chain(optax.identity(), tx)  # the state is found inside any chain
  state = tx.init(params)
  grads_seen = []
  for t in range(calls):
    g = {"w": jnp.asarray(rng.normal(0.2, 1, size=(4, 6)), jnp.float32), "b": jnp.ones(6)}
    mask = np.asarray(seven_jax.masks(state)["w"])
    if start <= t < start + n_steps - 1:
      grads_seen.append(np.where(mask, np.asarray(g["w"]), 0.0))
    _, state = tx.update(g, state, params)
  factor = analysis.seven_factor(state, start_step=start, pruning_steps=n_steps)
  assert factor["b"] is None  # non-prunable leaf
  got = np.asarray(factor["w"])
  if not grads_seen:
    assert np.isnan(got).all()
    return
  m, v = _numpy_seven_emas(grads_seen, b1, b2)
  k = len(grads_seen)
  want = (m / (1 - b1**k)) / (np.sqrt(v / (1 - b2**k)) + 1e-9)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert int(analysis.local_steps(calls, start, n_steps)) == k


def test_seven_factor_rejects_a_state_without_statistics():
  params = {"w": jnp.ones((2, 2))}
  tx = seven_jax.fixed_mask(optax.sgd(0.1), {"w": jnp.ones((2, 2), bool)})
  with pytest.raises(TypeError, match="needs a SEVEN state"):
    analysis.seven_factor(tx.init(params), start_step=0)
  with pytest.raises(ValueError, match="No seven_mask state"):
    analysis.seven_factor({"nothing": 1}, start_step=0)


def test_ema_factor_is_nan_before_any_update_and_one_for_constant_gradients():
  m = jnp.full((2,), 0.2 * 3.0)  # one EMA step of |g| = 3 with b1 = 0.8
  v = jnp.full((2,), 0.1 * 9.0)
  np.testing.assert_allclose(np.asarray(analysis.ema_factor(m, v, 1)), 1.0, rtol=1e-6)
  assert np.isnan(np.asarray(analysis.ema_factor(m, v, 0))).all()


# ------------------------------------------------------------------- masks


def _mask_pair(seed=0):
  rng = np.random.default_rng(seed)
  a = {"l1": {"kernel": rng.random((6, 5)) < 0.4}, "l2": {"kernel": rng.random((5, 3)) < 0.5}}
  b = {"l1": {"kernel": rng.random((6, 5)) < 0.4}, "l2": {"kernel": rng.random((5, 3)) < 0.5}}
  a["l1"]["bias"] = np.ones(5, bool)
  b["l1"]["bias"] = np.ones(5, bool)
  return a, b


def test_sentinel_sets_partition_and_counts():
  a, b = _mask_pair()
  sets = jax.jit(analysis.sentinel_sets)(a, b)
  counts = analysis.set_counts(sets)
  assert set(counts) == {"l1/kernel", "l2/kernel", analysis.GLOBAL}  # bias is not prunable
  for layer in ("l1", "l2"):
    x, y = a[layer]["kernel"], b[layer]["kernel"]
    want = dict(both=(x & y).sum(), only_oneshot=(x & ~y).sum(), only_seven=(~x & y).sum())
    want["neither"] = (~x & ~y).sum()
    assert counts[f"{layer}/kernel"] == {k: int(v) for k, v in want.items()}
  g = counts[analysis.GLOBAL]
  assert sum(g.values()) == 30 + 15
  assert g["both"] + g["only_oneshot"] == int(a["l1"]["kernel"].sum() + a["l2"]["kernel"].sum())


def test_summarize_by_set_matches_numpy_and_skips_non_finite():
  a, b = _mask_pair(1)
  rng = np.random.default_rng(2)
  values = jax.tree.map(lambda m: rng.lognormal(size=np.shape(m)).astype(np.float32), a)
  values["l1"]["kernel"][0, :2] = [np.inf, np.nan]
  sets = analysis.sentinel_sets(a, b)
  out = analysis.summarize_by_set(values, sets, quantiles=(0.25, 0.5))
  for name, sel in [("only_oneshot", lambda x, y: x & ~y), ("both", lambda x, y: x & y)]:
    pooled = []
    for layer in ("l1", "l2"):
      v = values[layer]["kernel"]
      s = sel(a[layer]["kernel"], b[layer]["kernel"])
      row = out[f"{layer}/kernel"][name]
      assert row["count"] == int(s.sum())
      fin = v[s & np.isfinite(v)]
      pooled.append(fin)
      assert row["finite"] == fin.size
      np.testing.assert_allclose(row["mean"], fin.mean(), rtol=1e-5)
      np.testing.assert_allclose(row["q50"], np.quantile(fin, 0.5), rtol=1e-5)
      np.testing.assert_allclose(row["q25"], np.quantile(fin, 0.25), rtol=1e-5)
    pooled = np.concatenate(pooled)
    glob = out[analysis.GLOBAL][name]
    np.testing.assert_allclose(glob["mean"], pooled.mean(), rtol=1e-5)
    np.testing.assert_allclose(glob["q50"], np.quantile(pooled, 0.5), rtol=1e-5)


def test_masked_histogram_matches_numpy():
  a, b = _mask_pair(3)
  rng = np.random.default_rng(4)
  values = jax.tree.map(lambda m: rng.lognormal(0, 2, size=np.shape(m)).astype(np.float32), a)
  values["l2"]["kernel"][0, 0] = 0.0  # log10 leaves it out
  edges = np.linspace(-3, 3, 13)
  got = analysis.masked_histogram(values, a, edges)
  pooled = np.concatenate(
    [values[k]["kernel"][a[k]["kernel"] & (values[k]["kernel"] > 0)] for k in ("l1", "l2")]
  )
  want, _ = np.histogram(np.log10(pooled), edges)
  np.testing.assert_array_equal(got, want)
  lin = analysis.masked_histogram(values, a, np.linspace(0, 50, 6), log10=False)
  pooled = np.concatenate([values[k]["kernel"][a[k]["kernel"]] for k in ("l1", "l2")])
  np.testing.assert_array_equal(lin, np.histogram(pooled, np.linspace(0, 50, 6))[0])


def test_mask_overlap_iou_per_layer_and_global():
  a, b = _mask_pair(5)
  out = analysis.mask_overlap(a, b)
  inter_total = union_total = 0
  for layer in ("l1", "l2"):
    x, y = a[layer]["kernel"], b[layer]["kernel"]
    inter, union = int((x & y).sum()), int((x | y).sum())
    inter_total, union_total = inter_total + inter, union_total + union
    row = out[f"{layer}/kernel"]
    assert (row["intersection"], row["union"], row["kept_a"]) == (inter, union, int(x.sum()))
    assert row["iou"] == pytest.approx(inter / union)
  assert out[analysis.GLOBAL]["iou"] == pytest.approx(inter_total / union_total)
  assert analysis.mask_overlap(a, a)[analysis.GLOBAL]["iou"] == 1.0
  bad = {"l1": {"kernel": np.ones((6, 4), bool), "bias": np.ones(5, bool)}, "l2": b["l2"]}
  with pytest.raises(ValueError, match="shape"):
    analysis.mask_overlap(a, bad)


def test_flips_and_early_pruning_regret_against_brute_force():
  rng = np.random.default_rng(6)
  shape = {"a": (8, 4), "b": (4, 4)}
  final_scores = {k: rng.random(s).astype(np.float32) for k, s in shape.items()}
  # A shrinking mask history that drops random weights (not the final ranking).
  history, cur = [], {k: np.ones(s, bool) for k, s in shape.items()}
  for step, frac in [(0, 1.0), (3, 0.8), (6, 0.6), (9, 0.5)]:
    cur = {k: m & (rng.random(m.shape) < frac / max(m.mean(), 1e-9)) for k, m in cur.items()}
    history.append((step, cur))
  # One revival between the last two masks.
  revived = {k: m.copy() for k, m in history[-1][1].items()}
  idx = np.argwhere(~revived["a"])[0]
  revived["a"][tuple(idx)] = True
  history.append((12, revived))
  rows = analysis.flips_over_history(history)
  assert [r["step"] for r in rows] == [3, 6, 9, 12]
  for (_, prev), (_, cur), r in zip(history[:-1], history[1:], rows):
    assert r["pruned"] == sum(int((prev[k] & ~cur[k]).sum()) for k in shape)
    assert r["revived"] == sum(int((~prev[k] & cur[k]).sum()) for k in shape)
  assert rows[-1]["revived"] == 1 and rows[-1]["pruned"] == 0

  keep = sum(int(m.sum()) for m in history[-1][1].values())
  regret = analysis.early_pruning_regret(history, final_scores)
  flat = np.concatenate([final_scores[k].ravel() for k in shape])
  tau = np.sort(flat)[::-1][keep - 1]
  for (step, masks), r in zip(history, regret):
    pruned = np.concatenate([~masks[k].ravel() for k in shape])
    assert r["pruned"] == int(pruned.sum())
    assert r["would_keep"] == int((pruned & (flat >= tau)).sum())
  assert regret[0]["fraction"] == 0.0 and regret[0]["pruned"] == 0
  with pytest.raises(ValueError, match="history is empty"):
    analysis.early_pruning_regret([], final_scores)


# ---------------------------------------------------------------- the CLI


def _write_run(folder, method, masks, *, history=None, metric=0.7):
  import json

  import jax

  folder.mkdir(parents=True)
  flat = jax.tree_util.tree_leaves_with_path(masks)
  np.savez_compressed(
    folder / "masks.npz", **{jax.tree_util.keystr(p): np.asarray(m) for p, m in flat}
  )
  layers = [dict(path="/".join(str(k.key) for k in p), prunable=np.ndim(m) >= 2) for p, m in flat]
  kept = sum(int(m.sum()) for _, m in flat if np.ndim(m) >= 2)
  total = sum(m.size for _, m in flat if np.ndim(m) >= 2)
  results = dict(
    config=dict(method=method, sparsity=0.5, seed=0),
    primary_metric="accuracy",
    final=dict(step=10, accuracy=metric),
    sparsity=1 - kept / total,
    sparsity_per_layer=layers,
  )
  (folder / "results.json").write_text(json.dumps(results))
  (folder / "log.jsonl").write_text(
    "\n".join(json.dumps(dict(step=s, loss=1.0, sparsity=0.05 * s)) for s in range(1, 11))
  )
  if history is not None:
    from seven_jax.analysis import report

    report.save_mask_history(folder / "mask_history.npz", history)


def test_cli_report_on_synthetic_run_folders(tmp_path):
  from seven_jax.analysis import __main__ as cli
  from seven_jax.analysis import report

  rng = np.random.default_rng(7)
  shapes = {"layer": {"0": {"query": (8, 6), "ffn": (6, 10)}, "1": {"query": (8, 6)}}}

  def random_masks(p):
    return jax.tree.map(lambda s: rng.random(s) < p, shapes, is_leaf=lambda x: isinstance(x, tuple))

  snip, seven = random_masks(0.5), random_masks(0.5)
  snip["bias"] = np.ones(6, bool)  # non-prunable
  seven["bias"] = np.ones(6, bool)
  early = jax.tree.map(lambda m: m | (rng.random(m.shape) < 0.5), seven)
  _write_run(tmp_path / "snip", "snip", snip)
  _write_run(tmp_path / "seven", "seven", seven, history=[(1, early), (5, seven)])
  rgv = jax.tree.map(lambda m: rng.lognormal(0, 1, m.shape).astype(np.float32), seven)
  grad_file = report.save_grad_stats(
    tmp_path / "snip" / "grad_stats.npz", analysis.RGV(rgv, rgv, rgv, rgv, 4)
  )
  out = tmp_path / "report"
  path = cli.main([str(tmp_path / "snip"), str(tmp_path / "seven"), "--out", str(out)])
  text = path.read_text()
  leaves = [("layer", "0", "query"), ("layer", "0", "ffn"), ("layer", "1", "query")]
  get = lambda t, k: t[k[0]][k[1]][k[2]]
  only_snip = sum(int((get(snip, k) & ~get(seven, k)).sum()) for k in leaves)
  both = sum(int((get(snip, k) & get(seven, k)).sum()) for k in leaves)
  union = sum(int((get(snip, k) | get(seven, k)).sum()) for k in leaves)
  assert f"| kept only by `snip` (TSW candidates) | {only_snip:,} |" in text
  assert f"| kept by both | {both:,} |" in text
  assert f"**{both / union:.4f}**" in text
  assert "RGV at the scoring point" in text and str(grad_file) in text
  # The sets' RGV medians, against numpy.
  pooled = np.concatenate([get(rgv, k)[get(snip, k) & ~get(seven, k)] for k in leaves])
  assert f"{np.median(pooled):.3g}" in text
  pruned_late = sum(int((get(early, k) & ~get(seven, k)).sum()) for k in leaves)
  assert f"1 mask updates, {pruned_late:,} prunings, 0 revivals" in text
  for png in ["overlap-pair.png", "rgv-pair.png", "flips.png"]:
    assert (out / png).stat().st_size > 1000, png
  with pytest.raises(SystemExit):
    cli.main([str(tmp_path / "nope")])


def test_keystr_names_and_history_round_trip(tmp_path):
  from seven_jax.analysis import report

  assert report.keystr_to_name("['bert']['layer'][0]['kernel']") == "bert/layer/0/kernel"
  assert report.keystr_to_name("plain/name") == "plain/name"
  hist = [(3, {"a": {"k": np.eye(3, dtype=bool)}}), (7, {"a": {"k": np.zeros((3, 3), bool)}})]
  path = report.save_mask_history(tmp_path / "h.npz", hist)
  back = report.load_mask_history(path)
  assert [s for s, _ in back] == [3, 7]
  np.testing.assert_array_equal(back[0][1]["a/k"], np.eye(3, dtype=bool))
