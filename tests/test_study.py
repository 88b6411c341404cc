"""experiments.study: grid logic, skip / resume, and the aggregation maths, on a fake runner."""

import dataclasses
import json
import math

import numpy as np
import pytest
from scipy import stats

from experiments import study


def _accuracy(method_label, sparsity, seed):
  # A deterministic fake metric with a seed effect shared by all variants.
  base = {"seven_pre": 0.80, "seven_pre-nocorr": 0.78, "snip": 0.76, "magnitude_pre": 0.70}
  seed_effect = 0.01 * ((seed * 7) % 5)  # shared by all variants: what pairing removes
  own_noise = 0.004 * ((seed + len(method_label)) % 3)
  return base.get(method_label, 0.6) - 0.1 * sparsity + seed_effect + own_noise


class FakeRunner:
  """Writes what experiments.text writes (results.json, masks.npz) without training."""

  def __init__(self, fail=(), interrupt_once=()):
    self.calls, self.fail, self.interrupt_once = [], set(fail), set(interrupt_once)

  def __call__(self, grid, argv, *, resume, log_path):
    args = dict(zip(argv[::2], argv[1::2]))
    out = args["--out"]
    label = out.split("/")[-3]  # <grid>/<variant>/s<sp>/seed<k>
    sparsity, seed = float(args["--sparsity"]), int(args["--seed"])
    key = f"{label}/s{sparsity:g}/seed{seed}"
    self.calls.append((key, resume, args.get("--method-args")))
    if key in self.fail:
      return 1
    folder = (
      study.pathlib.Path(out) / f"rotten_tomatoes-{args['--method']}-s{sparsity:g}-seed{seed}"
    )
    folder.mkdir(parents=True, exist_ok=True)
    interrupted = key in self.interrupt_once
    if interrupted:
      self.interrupt_once.discard(key)
      (folder / "checkpoints" / "5").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    kernel = rng.random((16, 8)) >= sparsity
    if label == "snip":  # the one-shot mask differs from SEVEN's in a known way
      kernel = np.roll(kernel, 1, axis=0)
    np.savez_compressed(folder / "masks.npz", **{"['layer'][0]['kernel']": kernel})
    results = dict(
      config=dict(
        method=args["--method"],
        sparsity=sparsity,
        seed=seed,
        lr=float(args["--lr"]),
        steps=int(args["--steps"]),
      ),
      primary_metric="accuracy",
      final=dict(step=int(args["--steps"]), accuracy=_accuracy(label, sparsity, seed)),
      sparsity=1 - kernel.mean(),
      sparsity_per_layer=[dict(path="layer/0/kernel", prunable=True)],
      train_seconds=1.0,
      steps=5 if interrupted else int(args["--steps"]),
      interrupted=interrupted,
    )
    (folder / "results.json").write_text(json.dumps(results))
    return 0


def _small_grid(**changes):
  grid = dataclasses.replace(study.PRESETS["cpu-small"], seeds=(0, 1, 2), sparsities=(0.5, 0.8))
  return dataclasses.replace(grid, **changes)


def test_presets_have_the_requested_grids():
  small = study.PRESETS["cpu-small"]
  assert len(study.cells(small)) == 24
  labels = [v.label for v in small.variants]
  assert labels == ["seven_pre", "seven_pre-nocorr", "snip", "magnitude_pre"]
  assert dict(small.variants[1].method_args) == {"correction": False}
  assert small.sparsities == (0.5, 0.8) and small.seeds == (0, 1, 2)
  full = study.PRESETS["cpu-full"]
  assert {"grasp", "random", "seven", "platon"} <= {v.label for v in full.variants}
  assert 0.9 in full.sparsities
  # Keys are unique, seed-major.
  keys = [c.key for c in study.cells(full)]
  assert len(set(keys)) == len(keys)
  assert all(c.seed == 0 for c in study.cells(full)[: len(full.variants) * len(full.sparsities)])


def test_dry_run_prints_the_grid_and_its_cost(capsys):
  out = study.main(["--preset", "paper-glue", "--dry-run"])
  text = capsys.readouterr().out
  grid = study.PRESETS["paper-glue"]
  n = len(grid.variants) * len(grid.sparsities) * len(grid.seeds)
  assert f"{n} runs of experiments.glue" in text
  assert text.count("--method ") == n
  cost = out["cost"]
  assert cost["total_seconds"] == pytest.approx(
    n * (grid.seconds_per_run + 6315 * grid.seconds_per_step)
  )
  assert f"{cost['total_seconds'] / 3600:.1f} h" in text


def test_cell_argv_passes_method_args_and_only_flags_the_method_reads(tmp_path):
  grid = study.PRESETS["cpu-full"]
  by_label = {v.label: v for v in grid.variants}
  nocorr = study.Cell(by_label["seven_pre-nocorr"], 0.8, 1)
  argv = study.cell_argv(grid, nocorr, tmp_path, {"steps": 7})
  args = dict(zip(argv[::2], argv[1::2]))
  assert args["--method"] == "seven_pre" and args["--method-args"] == "correction=false"
  assert args["--steps"] == "7" and args["--seed"] == "1" and args["--sparsity"] == "0.8"
  assert "--start-step" not in args  # a pre-pruning method does not read the schedule
  dyn = study.cell_argv(grid, study.Cell(by_label["seven"], 0.5, 0), tmp_path, {})
  dargs = dict(zip(dyn[::2], dyn[1::2]))
  assert "--prune-before-steps" not in dargs and dargs["--start-step"] == "20"


def test_grid_skips_finished_runs_resumes_interrupted_ones_and_reports_failures(tmp_path):
  grid = _small_grid()
  runner = FakeRunner(fail={"snip/s0.8/seed2"}, interrupt_once={"seven_pre/s0.5/seed1"})
  first = study.run_grid(grid, tmp_path, runner=runner, print_fn=lambda *a, **k: None)
  assert len(first["ran"]) == 22 and first["failed"] == ["seven_pre/s0.5/seed1", "snip/s0.8/seed2"]
  assert first["skipped"] == []
  # The variant's hyper-parameters reach the task module.
  assert ("seven_pre-nocorr/s0.5/seed0", False, "correction=false") in runner.calls
  runner.fail.clear()
  runner.calls.clear()
  second = study.run_grid(grid, tmp_path, runner=runner, print_fn=lambda *a, **k: None)
  assert sorted(second["ran"]) == ["seven_pre/s0.5/seed1", "snip/s0.8/seed2"]
  assert len(second["skipped"]) == 22
  resumed = dict((k, r) for k, r, _ in runner.calls)
  assert resumed == {"seven_pre/s0.5/seed1": True, "snip/s0.8/seed2": False}
  third = study.run_grid(grid, tmp_path, runner=runner, print_fn=lambda *a, **k: None)
  assert third["ran"] == [] and len(third["skipped"]) == 24
  # A longer --steps makes the old runs unfinished again.
  runner.calls.clear()
  fourth = study.run_grid(
    grid, tmp_path, runner=runner, overrides={"steps": 999}, print_fn=lambda *a, **k: None
  )
  assert len(fourth["ran"]) == 24
  # So does another learning rate (the config is compared, not only the folder).
  fifth = study.run_grid(
    grid,
    tmp_path,
    runner=runner,
    overrides={"steps": 999, "lr": 1e-3},
    print_fn=lambda *a, **k: None,
  )
  assert len(fifth["ran"]) == 24
  assert study.is_finished(study.run_dir(tmp_path, study.cells(grid)[0]), {"lr": 1e-3})
  assert not study.is_finished(study.run_dir(tmp_path, study.cells(grid)[0]), {"lr": 5e-5})


def test_paired_difference_matches_scipy_ttest_rel():
  rng = np.random.default_rng(0)
  a = {s: float(v) for s, v in enumerate(rng.normal(0.8, 0.02, 5))}
  b = {s: float(v) for s, v in enumerate(rng.normal(0.78, 0.02, 5))}
  b[7] = 0.5  # a seed only the reference has is left out
  got = study.paired_difference(a, b)
  seeds = sorted(a)
  res = stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds])
  ci = res.confidence_interval(0.95)
  assert got["n"] == 5
  assert got["low"] == pytest.approx(ci.low, rel=1e-9)
  assert got["high"] == pytest.approx(ci.high, rel=1e-9)
  d = np.array([a[s] - b[s] for s in seeds])
  assert got["mean"] == pytest.approx(d.mean()) and got["std"] == pytest.approx(d.std(ddof=1))
  one = study.paired_difference({0: 0.5}, {0: 0.4})
  assert one["n"] == 1 and math.isnan(one["low"])
  assert study.t_quantile(0.975, 2) == pytest.approx(4.302652729911275)


def test_aggregate_and_report_against_numpy(tmp_path):
  grid = _small_grid()
  study.run_grid(grid, tmp_path, runner=FakeRunner(), print_fn=lambda *a, **k: None)
  rows = study.collect(grid, tmp_path)
  assert len(rows) == 24
  table = study.aggregate(rows, "snip")
  assert [r["sparsity"] for r in table] == [0.5] * 4 + [0.8] * 4
  for r in table:
    vals = np.array([_accuracy(r["variant"], r["sparsity"], s) for s in (0, 1, 2)])
    assert r["mean"] == pytest.approx(vals.mean()) and r["std"] == pytest.approx(vals.std(ddof=1))
    if r["variant"] == "snip":
      assert r["diff"] is None
      continue
    ref = np.array([_accuracy("snip", r["sparsity"], s) for s in (0, 1, 2)])
    ci = stats.ttest_rel(vals, ref).confidence_interval(0.95)
    assert r["diff"]["mean"] == pytest.approx((vals - ref).mean())
    assert (r["diff"]["low"], r["diff"]["high"]) == pytest.approx((ci.low, ci.high))
  path = study.write_report(grid, tmp_path, tmp_path / "report", majority=0.5472)
  text = path.read_text()
  seven = next(r for r in table if r["variant"] == "seven_pre" and r["sparsity"] == 0.8)
  assert f"| 0.8 | seven_pre | {seven['mean']:.4f} +- {seven['std']:.4f} (3) | 0.5472 |" in text
  d = seven["diff"]
  assert f"{d['mean']:+.4f} [{d['low']:.4f}, {d['high']:.4f}] (n=3)" in text
  assert (tmp_path / "report" / "accuracy.png").stat().st_size > 1000
  # The sentinel section compares the snip and seven_pre masks of seed 0.
  assert "Sentinels at sparsity 0.5 (seed 0)" in text
  assert (tmp_path / "report" / "overlap-s0.8.png").exists()
  saved = json.loads((tmp_path / "report" / "table.json").read_text())
  assert saved["majority"] == 0.5472 and len(saved["rows"]) == 8


def test_main_runs_a_reduced_grid_with_a_fake_runner(tmp_path, capsys):
  runner = FakeRunner()
  out = study.main(
    [
      "--preset",
      "cpu-small",
      "--seeds",
      "0,1",
      "--sparsities",
      "0.5",
      "--variants",
      "seven_pre,snip",
      "--steps",
      "3",
      "--out",
      str(tmp_path / "grid"),
      "--notes",
      "REDUCED GRID",
    ],
    runner=runner,
  )
  assert len(runner.calls) == 4 and all(a is None for _, _, a in runner.calls)
  text = out["report"].read_text()
  assert "REDUCED GRID" in text and "majority-class rate of that split is 0.5472" in text
  assert '"steps": 3' in text
  for argv, needle in [
    (["--variants", "bogus"], "unknown variant"),
    (["--sparsities", "1.5"], "must be in [0, 1)"),
    (["--reference", "grasp"], "not a variant"),
  ]:
    with pytest.raises(SystemExit):
      study.main(argv + ["--dry-run"], runner=runner)
    assert needle in capsys.readouterr().err


def test_nocorr_fallback_is_accumulated_abs_w_g_on_the_cubic_schedule():
  # experiments.study registers seven_pre_nocorr only when the task module cannot pass
  # correction=False; check it against a numpy re-implementation, then unregister it.
  import jax.numpy as jnp

  import seven_jax
  from seven_jax import scores

  before_rules, before_pre = set(scores.DYNAMIC_RULES), set(scores.PRE_METHODS)
  try:
    name = study.register_nocorr_fallback()
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(6, 4)).astype(np.float32)
    xs = [rng.normal(size=(5, 6)).astype(np.float32) for _ in range(4)]
    ys = [rng.normal(size=(5, 4)).astype(np.float32) for _ in range(4)]
    loss = lambda p, b: jnp.mean((b["x"] @ p["w"] - b["y"]) ** 2)
    batches = [{"x": x, "y": y} for x, y in zip(xs, ys)]
    got = seven_jax.prune_before_finetuning(
      loss, {"w": jnp.asarray(w0)}, batches, sparsity=0.75, method=name, steps=4
    )["w"]
    # numpy: W fixed, g of the masked model, S += |W_p g| (W_p = W0 * M), pruned scores 0,
    # keep the floor(r_p D) largest at r_p = 0.25 + 0.75 (1 - (p+1)/4)^3.
    mask, s = np.ones_like(w0, bool), np.zeros_like(w0, np.float64)
    for p, (x, y) in enumerate(zip(xs, ys)):
      w = w0 * mask
      g = 2 * x.T @ (x @ w - y) / y.size * mask
      s = np.where(mask, s + np.abs(w * g), 0.0)
      k = int(np.floor((0.25 + 0.75 * (1 - (p + 1) / 4) ** 3) * w0.size + 1e-9))
      mask = s >= np.sort(s.ravel())[::-1][k - 1]
    np.testing.assert_array_equal(np.asarray(got), mask)
    assert int(mask.sum()) == 6
  finally:
    for key in set(scores.DYNAMIC_RULES) - before_rules:
      del scores.DYNAMIC_RULES[key]
    for key in set(scores.PRE_METHODS) - before_pre:
      del scores.PRE_METHODS[key]
  assert "seven_pre_nocorr" not in seven_jax.methods()


def test_parallel_jobs_and_locks(tmp_path):
  grid = _small_grid(seeds=(0, 1))
  runner = FakeRunner()
  done = study.run_grid(grid, tmp_path, runner=runner, jobs=3, print_fn=lambda *a, **k: None)
  assert sorted(done["ran"]) == sorted(c.key for c in study.cells(grid))
  assert len(study.collect(grid, tmp_path)) == 16
  # A cell another live process holds is left alone; a stale lock is taken over.
  cell = study.cells(grid)[0]
  folder = study.run_dir(tmp_path, cell)
  for f in folder.glob("*/results.json"):
    f.unlink()
  (folder / study.LOCK).write_text(str(study.os.getpid()))
  busy = study.run_grid(grid, tmp_path, runner=runner, print_fn=lambda *a, **k: None)
  assert busy["busy"] == [cell.key] and busy["ran"] == []
  (folder / study.LOCK).write_text("999999999")  # no such process
  again = study.run_grid(grid, tmp_path, runner=runner, print_fn=lambda *a, **k: None)
  assert again["ran"] == [cell.key] and not (folder / study.LOCK).exists()
  # A cell that another process finished after this one listed it is not run again.
  other = study.cells(grid)[1]
  other_folder = study.run_dir(tmp_path, other)
  results = list(other_folder.glob("*/results.json"))[0]
  kept = results.read_text()
  results.unlink()

  def finish_then_run(grid_, argv, **kw):
    raise AssertionError("ran a finished cell")

  real_take = study._take_lock

  def take_and_finish(folder_):
    ok = real_take(folder_)
    if folder_ == other_folder:
      results.write_text(kept)  # the other process finishes while we wait
    return ok

  study._take_lock = take_and_finish
  try:
    late = study.run_grid(grid, tmp_path, runner=finish_then_run, print_fn=lambda *a, **k: None)
  finally:
    study._take_lock = real_take
  assert other.key in late["skipped"] and late["ran"] == []
