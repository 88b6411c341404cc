"""Smoke test: the benchmark CLI runs end to end at its tiny size (no timing checks)."""

import json

from benchmarks import run


def test_benchmark_cli_tiny(tmp_path, capsys):
  out = tmp_path / "results.json"
  assert run.main(["--size", "tiny", "--out", str(out), "--threshold-sizes", "10k",
                   "--repeats", "2"]) == 0
  results = json.loads(out.read_text())
  table = capsys.readouterr().out
  assert "| tiny-bert" in table and "| 10k" in table
  step = results["steps"][0]
  assert step["seven_in_window"]["median_ms"] > 0
  assert step["optimizer_state"]["extra_bytes_per_prunable_weight"] > 0
  assert results["threshold"][0]["exact"] is True
