"""Experiments are reproducible, resume exactly, and save on Ctrl-C."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np

from experiments import vision

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARGS = [
  "--task",
  "digits",
  "--methods",
  "seven",
  "--start-step",
  "2",
  "--pruning-steps",
  "6",
  "--batch-size",
  "32",
  "--sparsity",
  "0.5",
]


def _losses(run_dir):
  return [
    r["loss"]
    for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines())
    if "loss" in r
  ]


def _only_run(out):
  (run_dir,) = list(out.iterdir())
  return run_dir


def test_same_seed_same_numbers_and_exact_resume(tmp_path):
  straight = vision.main(ARGS + ["--steps", "8", "--out", str(tmp_path / "a")])[0]
  again = vision.main(ARGS + ["--steps", "8", "--out", str(tmp_path / "b")])[0]
  assert straight["final"] == again["final"]
  assert _losses(_only_run(tmp_path / "a")) == _losses(_only_run(tmp_path / "b"))

  # 4 steps, stop (a checkpoint is written at the end), then resume to 8.
  vision.main(ARGS + ["--steps", "4", "--out", str(tmp_path / "c")])
  resumed = vision.main(ARGS + ["--steps", "8", "--resume", "--out", str(tmp_path / "c")])[0]
  run_a, run_c = _only_run(tmp_path / "a"), _only_run(tmp_path / "c")
  np.testing.assert_allclose(_losses(run_c), _losses(run_a), rtol=0, atol=0)
  assert resumed["final"] == straight["final"]
  masks_a, masks_c = np.load(run_a / "masks.npz"), np.load(run_c / "masks.npz")
  for key in masks_a.files:
    np.testing.assert_array_equal(masks_a[key], masks_c[key])


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(tmp_path):
  out = tmp_path / "run"
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "experiments.vision", *ARGS, "--steps", "100000", "--out", str(out)]
  proc = subprocess.Popen(
    cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
  )
  deadline = time.time() + 300
  log = None
  while time.time() < deadline:
    logs = list(out.glob("*/log.jsonl"))
    if logs and len(logs[0].read_text().splitlines()) >= 3:
      log = logs[0]
      break
    time.sleep(0.5)
  assert log is not None, "the run never started logging"
  proc.send_signal(signal.SIGINT)
  stdout, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, stdout
  assert "interrupted at step" in stdout
  results = json.loads((log.parent / "results.json").read_text())
  assert results["interrupted"] and results["steps"] >= 3
  step = results["steps"]
  # Resume for two more steps: it starts where the interrupt left off.
  resumed = vision.main(ARGS + ["--steps", str(step + 2), "--resume", "--out", str(out)])[0]
  assert resumed["steps"] == step + 2 and not resumed["interrupted"]
