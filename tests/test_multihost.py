"""Two processes on localhost (jax.distributed, 2 CPU devices each, gloo collectives)
train one experiment with pruning: both hold the same masks, equal to one process's.

The command each process runs is the README's multi-host command::

    python -m experiments.vision --task digits ... \\
      --coordinator localhost:PORT --num-processes 2 --process-id I
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARGS = [
  "--task",
  "digits",
  "--methods",
  "seven",
  "--steps",
  "8",
  "--start-step",
  "2",
  "--pruning-steps",
  "5",
  "--batch-size",
  "32",
  "--sparsity",
  "0.5",
  "--log-every",
  "4",
]


def _env(devices):
  return dict(
    os.environ,
    PYTHONPATH=str(ROOT),
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
  )


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _losses(run_dir):
  lines = (run_dir / "log.jsonl").read_text().splitlines()
  return np.array([r["loss"] for r in map(json.loads, lines) if "loss" in r])


@pytest.mark.slow  # three experiment processes
def test_two_hosts_hold_the_same_masks_as_one(tmp_path):
  port = _free_port()
  out2 = tmp_path / "two_hosts"
  procs = [
    subprocess.Popen(
      [sys.executable, "-m", "experiments.vision", *ARGS, "--out", str(out2)]
      + ["--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(i)],
      cwd=ROOT,
      env=_env(2),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  outputs = [p.communicate(timeout=900)[0] for p in procs]
  for p, text in zip(procs, outputs):
    assert p.returncode == 0, text[-3000:]
  out1 = tmp_path / "one_host"
  one = subprocess.run(
    [sys.executable, "-m", "experiments.vision", *ARGS, "--out", str(out1)],
    cwd=ROOT,
    env=_env(1),
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
  (run2,) = list(out2.iterdir())
  (run1,) = list(out1.iterdir())
  results = json.loads((run2 / "results.json").read_text())
  assert results["processes"] == 2 and results["devices"] == 4
  host0, host1 = np.load(run2 / "masks.npz"), np.load(run2 / "masks.process1.npz")
  single = np.load(run1 / "masks.npz")
  assert host0.files == host1.files == single.files and host0.files
  total = sum(single[k].size for k in single.files)
  agree = sum(int((host0[k] == single[k]).sum()) for k in single.files)
  print(f"masks: host 0 == host 1 exactly; host 0 vs 1 process: {agree}/{total}")
  for key in host0.files:
    np.testing.assert_array_equal(host0[key], host1[key])  # the hosts hold the same masks
  # The same run on one process: the same losses (up to the order of the cross-device
  # sums) and the same masks but for near-ties of the score.
  np.testing.assert_allclose(_losses(run2), _losses(run1), rtol=1e-4, atol=1e-5)
  assert agree / total > 0.999
  assert results["sparsity"] == pytest.approx(
    json.loads((run1 / "results.json").read_text())["sparsity"], abs=1e-6
  )
