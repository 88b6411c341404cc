"""The sharding contract of the pruning state, on 4 and 8 fake CPU devices.

Each case runs ``tests/_sharding_script.py`` in a subprocess (the device
count is fixed when JAX starts): a 512x512 kernel sharded ``P("fsdp", None)``
and a bias, on meshes with ``Auto`` and ``Explicit`` axes. The script checks
that every param-shaped state leaf has its param's sharding after an eager
``init``, after ``jax.jit(init, out_shardings=...)`` with the shardings of
``optax.tree.map_params`` (and, with ``Explicit`` axes, after a plain jitted
init) and after every step; here we check the bytes each device holds and
that the masks equal those of one device but for near-ties.
"""

import json
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).with_name("_sharding_script.py")


def _run(n, axis_type):
  out = subprocess.run(
    [sys.executable, str(SCRIPT), str(n), axis_type],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=SCRIPT.parents[1],
  )
  assert out.returncode == 0, out.stderr[-4000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("n", [4, 8])
@pytest.mark.parametrize("axis_type", ["Auto", "Explicit"])
def test_state_is_sharded_like_the_params(n, axis_type):
  r = _run(n, axis_type)
  print(json.dumps(r))
  # 13 bytes per prunable weight (bool mask + float32 m, v, S), split n ways.
  per_device = list(r["per_device_bytes"].values())
  assert len(per_device) == n
  for b in per_device:
    assert abs(b - r["expected_per_device"]) <= 0.01 * r["expected_per_device"], r
  # The global threshold sees every shard: the same masks as on one device,
  # but for weights tied with the threshold up to float rounding.
  assert r["mask_differences"] <= 0.001 * r["weights"], r
  assert r["max_rel_distance_to_threshold"] < 1e-4, r
  if axis_type == "Explicit":
    assert r["jit_init_like_params"], r
