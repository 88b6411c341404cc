"""Data parallelism and FSDP over a jax.sharding mesh of fake CPU devices.

Each configuration runs in its own process, because the number of host devices
is fixed when JAX starts (XLA_FLAGS=--xla_force_host_platform_device_count=N).
The fast check shards a small model's parameters and SEVEN's whole state over
``data=2,fsdp=4`` and compares a few steps with unsharded ones; the slow one
runs an experiment on 1 device and on 8 (``--mesh data=2,fsdp=4``).
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _env(devices):
  return dict(
    os.environ,
    PYTHONPATH=str(ROOT),
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
  )


FSDP_STEPS = textwrap.dedent(
  """
  import json, jax, jax.numpy as jnp, numpy as np, optax, seven_jax
  from experiments import common

  cfg = common.ExperimentConfig(mesh="data=2,fsdp=4")
  mesh = common.make_mesh(cfg)
  rng = np.random.default_rng(0)
  params = {"w1": jnp.asarray(rng.normal(size=(16, 32)), jnp.float32),
            "b1": jnp.zeros((32,)), "w2": jnp.asarray(rng.normal(size=(32, 8)), jnp.float32)}
  batches = [(rng.normal(size=(8, 16)).astype(np.float32), rng.normal(size=(8, 8)).astype(np.float32))
             for _ in range(6)]
  tx = seven_jax.seven_mask(optax.adam(1e-2), sparsity=0.5, start_step=1, pruning_steps=4,
                            prunable=lambda p: jax.tree.map(lambda x: x.ndim == 2, p))

  def loss_fn(p, x, y):
    return jnp.mean((jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] - y) ** 2)

  def step(p, s, x, y):
    loss, g = jax.value_and_grad(loss_fn)(p, x, y)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s, loss

  def train(p, s, put_batch):
    losses = []
    for x, y in batches:
      p, s, loss = jax.jit(step)(p, s, *put_batch(x, y))
      losses.append(float(loss))
    return p, s, losses

  p1, s1, l1 = train(params, tx.init(params), lambda x, y: (x, y))
  sharded = common.put_tree(params, jax.tree.map(lambda x: common.param_sharding(x, mesh), params))
  state = common._init_state(tx, sharded, mesh)
  # Every state leaf shaped like a parameter is split like it; scalars are replicated.
  norm = lambda a: str(list(a.sharding.spec) + [None] * (a.ndim - len(a.sharding.spec)))
  specs = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    specs[jax.tree_util.keystr(path)] = norm(leaf)
  put_batch = lambda x, y: (common.put(x, common.batch_sharding(mesh)), common.put(y, common.batch_sharding(mesh)))
  p8, s8, l8 = train(sharded, state, put_batch)
  m1 = [np.asarray(m) for m in jax.tree.leaves(seven_jax.masks(s1))]
  m8 = [np.asarray(m) for m in jax.tree.leaves(seven_jax.masks(s8))]
  print(json.dumps(dict(
    losses1=l1, losses8=l8, specs=specs,
    param_bytes=[common.bytes_per_device(params), common.bytes_per_device(p8)],
    state_bytes=[common.bytes_per_device(s1), common.bytes_per_device(s8)],
    masks_equal=all(bool((a == b).all()) for a, b in zip(m1, m8)), masks=len(m1),
    w2_spec=norm(p8["w2"]))))
  """
)


def test_fsdp_shards_params_and_the_whole_state_and_matches_one_device():
  proc = subprocess.run(
    [sys.executable, "-c", FSDP_STEPS],
    cwd=ROOT,
    env=_env(8),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  np.testing.assert_allclose(r["losses8"], r["losses1"], rtol=1e-5, atol=1e-6)
  assert r["masks"] >= 2 and r["masks_equal"]
  assert r["w2_spec"] == "['fsdp', None]"  # the largest axis divisible by 4
  # SEVEN's masks, statistics, scores and Adam's moments of w1 follow w1's sharding.
  w1 = [spec for path, spec in r["specs"].items() if "'w1'" in path]
  assert len(w1) >= 5 and set(w1) == {"[None, 'fsdp']"}, r["specs"]
  assert "[]" in r["specs"].values()  # the step counts
  # Per device: a quarter of the parameters and of the state, but for the scalars.
  (p1, p8), (s1, s8) = r["param_bytes"], r["state_bytes"]
  assert p8 == p1 // 4
  assert s8 < s1 / 4 + 64


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
  "--log-every",
  "4",
]


def _run(tmp_path, devices, mesh=None):
  out = tmp_path / f"d{devices}"
  subprocess.run(
    [sys.executable, "-m", "experiments.vision", *ARGS, "--out", str(out)]
    + (["--mesh", mesh] if mesh else []),
    cwd=ROOT,
    env=_env(devices),
    check=True,
    timeout=900,
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


@pytest.mark.slow  # two experiment processes
def test_experiment_on_one_device_and_on_data2_fsdp4_agree(tmp_path):
  r1, losses1, masks1 = _run(tmp_path, 1)
  r8, losses8, masks8 = _run(tmp_path, 8, "data=2,fsdp=4")
  assert r1["devices"] == 1 and r8["devices"] == 8
  assert r8["mesh"] == {"data": 2, "fsdp": 4}
  assert len(losses1) == len(losses8) == 12
  # Same seed, same batches: the losses agree to float tolerance (the only
  # difference is the order of the cross-device reductions).
  np.testing.assert_allclose(losses1, losses8, rtol=1e-4, atol=1e-4)
  agree = sum(int((masks1[k] == masks8[k]).sum()) for k in masks1)
  total = sum(masks1[k].size for k in masks1)
  print(f"mask agreement 1 vs 8 devices: {agree}/{total} = {agree / total:.6f}")
  print("bytes per device:", r1["bytes_per_device"], r8["bytes_per_device"])
  assert agree / total > 0.999
  assert abs(r1["sparsity"] - r8["sparsity"]) < 1e-6
  # Parameters and optimizer state are split four ways (small leaves stay whole).
  for key in ("params", "opt_state"):
    assert r8["bytes_per_device"][key] < 0.3 * r1["bytes_per_device"][key], key
