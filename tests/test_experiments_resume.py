"""Experiments resume exactly (before and after the switch to a fixed mask), keep
their logs free of repeated steps, and save on Ctrl-C."""

import json
import os
import pathlib
import shutil
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import vision

ROOT = pathlib.Path(__file__).resolve().parents[1]
# 10 steps; the window of SEVEN ends after step 2 + 6 - 1 = 7, where the loop
# switches to fixed_mask + freeze.
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
  "--steps",
  "10",
  "--log-every",
  "3",
]


def _records(run_dir):
  return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def _losses(run_dir):
  return [r["loss"] for r in _records(run_dir) if "loss" in r]


def _only_run(out):
  (run_dir,) = list(out.iterdir())
  return run_dir


def _tensorboard_steps(run_dir, tag):
  """Steps of ``tag`` in the TensorBoard event files (TFRecord framing of Event protos)."""
  from tensorboardX.proto import event_pb2

  steps = []
  for path in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos : pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
      pos += 12 + length + 4
      steps += [event.step for v in event.summary.value if v.tag == tag]
  return steps


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  out = tmp_path_factory.mktemp("straight")
  row = vision.main(ARGS + ["--out", str(out)])[0]
  return row, _only_run(out)


@pytest.mark.parametrize("stop", [4, 8], ids=["before-freeze", "after-freeze"])
def test_resume_is_bit_exact_before_and_after_the_freeze(tmp_path, straight, stop):
  row, run_a = straight
  assert row["frozen_at"] == 7 and row["steps"] == 10
  # Stop after `stop` steps with a checkpoint every 2; the last one (at `stop`) is
  # deleted, as if the process had been killed after logging steps it never saved.
  vision.main(ARGS + ["--out", str(tmp_path), "--stop-after", str(stop), "--checkpoint-every", "2"])
  run_c = _only_run(tmp_path)
  assert [r["step"] for r in _records(run_c) if "loss" in r] == list(range(1, stop + 1))
  shutil.rmtree(run_c / "checkpoints" / str(stop))
  resumed = vision.main(ARGS + ["--out", str(tmp_path), "--resume"])[0]
  assert resumed["frozen_at"] == 7
  # Losses of every step, bit for bit, and each step once (the killed run's
  # step `stop`, logged but never saved, is not repeated).
  np.testing.assert_array_equal(_losses(run_c), _losses(run_a))
  assert [r["step"] for r in _records(run_c) if "loss" in r] == list(range(1, 11))
  assert sorted(_tensorboard_steps(run_c, "loss")) == list(range(1, 11))
  assert resumed["final"] == row["final"]
  masks_a, masks_c = np.load(run_a / "masks.npz"), np.load(run_c / "masks.npz")
  assert masks_a.files == masks_c.files and masks_a.files
  for key in masks_a.files:
    np.testing.assert_array_equal(masks_a[key], masks_c[key])


def test_resume_without_a_checkpoint_is_an_error(tmp_path, capsys):
  with pytest.raises(SystemExit) as info:
    vision.main(ARGS + ["--out", str(tmp_path), "--resume"])
  assert info.value.code == 2
  assert (
    "argument --resume: no checkpoint of run digits-seven-s0.5-seed0" in capsys.readouterr().err
  )


@pytest.mark.slow  # a subprocess that trains until it is interrupted
def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(tmp_path):
  out = tmp_path / "run"
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  long_run = ARGS[:-4] + ["--steps", "100000", "--log-every", "1"]
  cmd = [sys.executable, "-m", "experiments.vision", *long_run, "--out", str(out)]
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
  resumed = vision.main(
    long_run[:-4] + ["--steps", str(step + 2), "--resume", "--out", str(out), "--partial-window"]
  )[0]
  assert resumed["steps"] == step + 2 and not resumed["interrupted"]
