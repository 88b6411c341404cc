"""Smoke tests of the benchmark CLI (no timing checks) and its argument checks."""

import json
import math

import pytest

import seven_jax
from benchmarks import run, threshold_bench


def _positive(entry):
  return entry is not None and math.isfinite(entry["median_ms"]) and entry["median_ms"] > 0


def test_benchmark_cli_threshold_smoke(tmp_path, capsys):
  # The fast default case: the threshold section alone at 10k scores.
  out = tmp_path / "results.json"
  argv = ["--size", "tiny", "--out", str(out), "--threshold-sizes", "10k", "--repeats", "2"]
  argv += ["--skip-steps", "--skip-prepruning"]
  assert run.main(argv) == 0
  results = json.loads(out.read_text())
  table = capsys.readouterr().out
  assert "| 10k" in table and "load" in table
  row = results["threshold"][0]
  assert row["exact"] is True and row["warm_equals_cold"] and row["plain_equals_barriers"]
  for key in ("ours", "ours_warm", "ours_plain", "floor_sum"):
    assert _positive(row[key]), key
  assert len(results["machine"]["load_avg"]) == 3


def _must_not_run(*args, **kwargs):
  raise AssertionError("a benchmark ran before the arguments were checked")


@pytest.mark.parametrize(
  "argv, words",
  [
    (["--out", "/nonexistent/dir/r.json"], ["--out", "does not exist"]),
    (["--threshold-sizes", "1G"], ["--threshold-sizes", "1G", "85.5M", "10k"]),
    (["--models", "gpt2"], ["--models", "minilm"]),
    (["--repeats", "0"], ["--repeats", "positive"]),
  ],
)
def test_bad_arguments_fail_before_running(argv, words, monkeypatch, capsys, tmp_path):
  monkeypatch.setattr(threshold_bench, "threshold_cost", _must_not_run)
  with pytest.raises(SystemExit) as exc:
    run.main(argv + ["--skip-steps", "--skip-prepruning"])
  assert exc.value.code == 2
  err = capsys.readouterr().err
  for word in words:
    assert word in err, (word, err)


def test_out_must_not_be_a_folder(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(threshold_bench, "threshold_cost", _must_not_run)
  with pytest.raises(SystemExit):
    run.main(["--out", str(tmp_path), "--skip-steps", "--skip-prepruning"])
  assert "folder" in capsys.readouterr().err


@pytest.mark.slow
def test_benchmark_cli_tiny(tmp_path, capsys):
  out = tmp_path / "results.json"
  assert (
    run.main(["--size", "tiny", "--out", str(out), "--threshold-sizes", "10k", "--repeats", "2"])
    == 0
  )
  results = json.loads(out.read_text())
  table = capsys.readouterr().out
  assert "| tiny-bert" in table and "| 10k" in table
  step = results["steps"][0]
  assert step["seven_in_window"]["median_ms"] > 0
  assert step["optimizer_state"]["extra_bytes_per_prunable_weight"] > 0
  assert results["threshold"][0]["exact"] is True

  pre = results["prepruning"]
  assert pre["model"] == "tiny-bert" and pre["train_step_ms"] > 0
  rows = {r["method"]: r for r in pre["methods"]}
  assert sorted(rows) == sorted(seven_jax.methods("pre"))
  for name, r in rows.items():
    assert f"| {name} |" in table
    if r["kind"] in ("magnitude", "random"):  # one-off, no per-batch work
      assert r["per_batch"] is None and _positive(r["fixed"]), name
    else:
      assert _positive(r["per_batch"]), name
      assert math.isfinite(r["ratio_per_batch"]) and r["ratio_per_batch"] > 0, name
    if r["kind"] in ("snip", "grasp"):
      assert _positive(r["fixed"]), name


def test_accelerator_script_dry_run_on_cpu(tmp_path, capsys):
  from benchmarks import accelerator

  out = tmp_path / "acc.json"
  # Steps and loop at tiny size are the slow part (compilation); the
  # threshold rows run here, the whole dry run in the slow test below.
  assert accelerator.main(["--dry-run", "--skip-steps", "--skip-loop", "--out", str(out)]) == 0
  table = capsys.readouterr().out
  assert "| threshold 10k (uniform): cold" in table and "warm" in table and "plain XLA" in table
  result = json.loads(out.read_text())
  assert result["mode"] == "dry-run" and len(result["threshold"]) == 2


@pytest.mark.slow
def test_accelerator_script_full_dry_run(capsys):
  from benchmarks import accelerator

  assert accelerator.main(["--dry-run"]) == 0
  table = capsys.readouterr().out
  for label in ["adamw step", "seven in window (bf16 stats)", "seven frozen", "experiments loop"]:
    assert label in table, label
