"""``count_kept``: the on-device count of kept weights, against numpy."""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seven_jax

SHAPES = [(), (0,), (7,), (8,), (3, 5), (5, 4), (384, 1536), (2, 3, 8), (4, 0, 4)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
def test_count_kept_matches_numpy(shape, density):
  rng = np.random.default_rng(len(shape) * 7 + int(density * 10))
  mask = rng.random(shape) < density
  expected = int(np.count_nonzero(mask))
  eager = seven_jax.count_kept(jnp.asarray(mask))
  jitted = jax.jit(seven_jax.count_kept)(jnp.asarray(mask))
  assert eager.dtype == jnp.int32 and eager.shape == ()
  assert int(eager) == int(jitted) == expected


def test_count_kept_counts_every_byte_of_a_word():
  # One True at each of the 4 byte positions of a 32-bit word, then all four.
  for i in range(4):
    mask = np.zeros((3, 8), bool)
    mask[1, 4 + i] = True
    assert int(seven_jax.count_kept(jnp.asarray(mask))) == 1
  assert int(seven_jax.count_kept(jnp.ones((3, 8), bool))) == 24


def test_count_kept_rejects_non_bool():
  with pytest.raises(TypeError, match="mask: count_kept counts a bool array, got dtype float32"):
    seven_jax.count_kept(jnp.ones((4, 4), jnp.float32))


def test_count_kept_of_a_sharded_mask_gathers_nothing():
  """On 8 fake devices, a mask sharded along either axis is counted in place."""
  script = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    import seven_jax
    mesh = jax.make_mesh((8,), ("x",))
    mask = np.random.default_rng(0).random((64, 512)) < 0.4
    for spec in (P("x", None), P(None, "x")):
      m = jax.device_put(mask, NamedSharding(mesh, spec))
      f = jax.jit(seven_jax.count_kept)
      hlo = f.lower(m).compile().as_text()
      assert "all-gather" not in hlo and "all-to-all" not in hlo, spec
      assert int(f(m)) == int(np.count_nonzero(mask)), spec
    print("ok")
    """
  )
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
