"""Data parallelism over a jax.sharding mesh: 1 and 4 (fake CPU) devices agree.

Each configuration runs in its own process, because the number of host devices
is fixed when JAX starts (XLA_FLAGS=--xla_force_host_platform_device_count=4).
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARGS = [
  "--task",
  "digits",
  "--methods",
  "seven",
  "--steps",
  "12",
  "--start-step",
  "2",
  "--pruning-steps",
  "8",
  "--batch-size",
  "32",
  "--sparsity",
  "0.5",
]


def _run(tmp_path, devices):
  out = tmp_path / f"d{devices}"
  env = dict(
    os.environ,
    PYTHONPATH=str(ROOT),
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
  )
  subprocess.run(
    [sys.executable, "-m", "experiments.vision", *ARGS, "--out", str(out)],
    cwd=ROOT,
    env=env,
    check=True,
    timeout=600,
    capture_output=True,
  )
  run_dir = next(out.iterdir())
  results = json.loads((run_dir / "results.json").read_text())
  losses = [
    r["loss"]
    for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines())
    if "loss" in r
  ]
  masks = dict(np.load(run_dir / "masks.npz"))
  return results, np.array(losses), masks


def test_one_and_four_devices_agree(tmp_path):
  r1, losses1, masks1 = _run(tmp_path, 1)
  r4, losses4, masks4 = _run(tmp_path, 4)
  assert r1["devices"] == 1 and r4["devices"] == 4
  assert len(losses1) == len(losses4) == 12
  # Same seed, same batches: the losses agree to float tolerance (the only
  # difference is the order of the cross-device reduction).
  np.testing.assert_allclose(losses1, losses4, rtol=1e-4, atol=1e-5)
  # Masks agree but for near-ties of the score; report the agreement.
  agree = sum(int((masks1[k] == masks4[k]).sum()) for k in masks1)
  total = sum(masks1[k].size for k in masks1)
  print(f"mask agreement 1 vs 4 devices: {agree}/{total} = {agree / total:.6f}")
  assert agree / total > 0.99
  assert abs(r1["sparsity"] - r4["sparsity"]) < 1e-6
