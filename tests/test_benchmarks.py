"""Smoke test: the benchmark CLI runs end to end at its tiny size (no timing checks)."""

import json
import math

import seven_jax
from benchmarks import run


def _positive(entry):
  return entry is not None and math.isfinite(entry["median_ms"]) and entry["median_ms"] > 0


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
