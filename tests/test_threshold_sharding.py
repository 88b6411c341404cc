"""The global threshold under ``jax.sharding`` on 4 and 8 fake CPU devices.

Scores sharded ``P("fsdp", None)`` (FSDP: rows split across devices). The
compiled program must combine per-shard counts with small all-reduces: no
all-to-all, and no all-gather of anything score-sized (every all-gather is
checked to move fewer than 1/8 of the smallest leaf's entries: row counts of
the tie-break, never scores). The results must equal the single-device ones
exactly (counts are integers, so the summation order cannot change them).
Each case runs in a subprocess, as the device count is fixed at start-up.
"""

import os
import subprocess
import sys
import textwrap

import pytest

_SCRIPT = textwrap.dedent(
  """
  import re, sys
  import jax, jax.numpy as jnp, numpy as np
  from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
  from seven_jax import selection, threshold as th

  n, axis_type = int(sys.argv[1]), getattr(AxisType, sys.argv[2])
  assert jax.device_count() >= n
  shapes = [(512, 256), (256, 512), (256, 256)]  # > 2**18 scores: the fast path
  smallest = min(a * b for a, b in shapes)
  rng = np.random.default_rng(0)
  cases = {
    "uniform": [rng.random(s).astype(np.float32) for s in shapes],
    "tied": [np.round(rng.random(s) * 20).astype(np.float32) for s in shapes],
  }
  cases = {name: cases[name] for name in sys.argv[3].split(",")}
  prefer = [rng.random(s) < 0.7 for s in shapes]

  def threshold(leaves, k):
    return th.threshold_stats(leaves, k)[:2]

  def select(leaves, masks, ratio):
    return selection.select_masks(leaves, masks, ratio, resurrect=True, return_threshold=True)

  # Single device first (plain numpy inputs, no mesh).
  single = {
    name: (
      jax.jit(threshold)([jnp.asarray(x) for x in xs], 120_000),
      jax.jit(select)([jnp.asarray(x) for x in xs], [jnp.asarray(p) for p in prefer], 0.37),
    )
    for name, xs in cases.items()
  }

  mesh = jax.make_mesh((n,), ("fsdp",), axis_types=(axis_type,), devices=jax.devices()[:n])
  sharding = NamedSharding(mesh, P("fsdp", None))

  def check_hlo(fn, *args):
    text = fn.lower(*args).compile().as_text()
    assert not re.search(r"= [^\\n]*\\ball-to-all(-start)?\\(", text), "all-to-all"
    reduces = re.findall(r"= [^\\n]*\\ball-reduce(-start)?\\(", text)
    assert reduces, "no all-reduce: were the scores sharded at all?"
    for line in re.findall(r"= ([^\\n]*)\\ball-gather(?:-start)?\\(", text):
      for dims in re.findall(r"\\[([\\d,]*)\\]", line):
        size = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
        assert size < smallest // 8, f"score-sized all-gather: {line[:200]}"
    return len(reduces), text.count("all-gather(")

  with jax.sharding.set_mesh(mesh):
    for name, xs in cases.items():
      leaves = [jax.device_put(x, sharding) for x in xs]
      masks = [jax.device_put(p, sharding) for p in prefer]
      f_thr, f_sel = jax.jit(threshold), jax.jit(select)
      r1, g1 = check_hlo(f_thr, leaves, 120_000)
      r2, g2 = check_hlo(f_sel, leaves, masks, 0.37)
      tau, kept = f_thr(leaves, 120_000)
      assert float(tau) == float(single[name][0][0]) and int(kept) == int(single[name][0][1])
      got, tau_sel = f_sel(leaves, masks, 0.37)
      assert float(tau_sel) == float(single[name][1][1])
      for g, w in zip(got, single[name][1][0]):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
        assert g.sharding.is_equivalent_to(sharding, g.ndim), g.sharding
      print(f"{name}: all-reduces {r1}/{r2}, small all-gathers {g1}/{g2}, equal to 1 device")
  print("sharding ok")
  """
)


def _run(n, axis_type, cases="uniform,tied"):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, "-c", _SCRIPT, str(n), axis_type, cases],
    env=env,
    cwd=root,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "sharding ok" in proc.stdout, proc.stdout


def test_sharded_threshold_8_devices_auto_axes_tied_scores():
  # The default run's case (~20 s idle): ties exercise the threshold and the
  # exact tie-break; the slow ones add continuous scores and more meshes.
  _run(8, "Auto", "tied")


@pytest.mark.slow
@pytest.mark.parametrize(
  "n, axis_type", [(8, "Auto"), (4, "Auto"), (4, "Explicit"), (8, "Explicit")]
)
def test_sharded_threshold_more_meshes(n, axis_type):
  _run(n, axis_type)
