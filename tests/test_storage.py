"""bfloat16 statistics: stochastic rounding is unbiased, and SEVEN keeps working."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import seven_jax
from seven_jax import storage


def _bf16_neighbours(x):
  """The two bfloat16 values around float32 x (truncated and next up in magnitude)."""
  bits = np.asarray(x, np.float32).view(np.uint32)
  low = (bits & 0xFFFF0000).view(np.float32)
  high = ((bits & 0xFFFF0000) + 0x10000).view(np.float32)
  return low, high


def test_stochastic_rounding_is_unbiased_and_lands_on_a_neighbour():
  values = np.array([1.0 + 2**-9, 1.0 + 3 * 2**-10, -3.0e-5, 7.77e3], np.float32)
  n = 1 << 16
  for j, x in enumerate(values):
    got = np.asarray(storage.stochastic_round_bf16(jnp.full((n,), x), step=j, salt=3), np.float32)
    low, high = _bf16_neighbours(x)
    assert np.all((got == low) | (got == high)), x
    # E[got] = x: the fraction rounded up equals the dropped part of an ulp.
    frac = float((x - low) / (high - low))
    up = float(np.mean(got == high))
    assert abs(up - frac) < 4 * np.sqrt(frac * (1 - frac) / n) + 1e-3, (x, up, frac)


def test_exactly_representable_values_are_kept():
  x = jnp.asarray(np.array([0.0, 1.0, -2.5, 2.0**127, -(2.0**-100)], np.float32))
  got = storage.stochastic_round_bf16(x, step=5, salt=1).astype(jnp.float32)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(x))


def test_random_bits_depend_on_step_and_salt_but_are_reproducible():
  a = storage._hash_bits16((64, 32), jnp.int32(3), 1)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(storage._hash_bits16((64, 32), 3, 1)))
  assert np.mean(np.asarray(a) == np.asarray(storage._hash_bits16((64, 32), 4, 1))) < 0.01
  assert np.mean(np.asarray(a) == np.asarray(storage._hash_bits16((64, 32), 3, 2))) < 0.01
  # Roughly uniform on [0, 2**16).
  assert abs(float(np.mean(np.asarray(a))) / 2**16 - 0.5) < 0.02


def test_accumulating_small_increments_does_not_stall():
  # SEVEN's score grows by about S / p per step: with round-to-nearest
  # bfloat16 it stops growing after ~2**8 steps; stochastic rounding follows
  # the float32 sum without bias (relative noise ~ 0.0013 sqrt(P): ~4% here).
  rng = np.random.default_rng(0)
  steps, n = 1000, 4096
  inc = jnp.asarray(rng.uniform(0.5, 1.5, n).astype(np.float32)) * 1e-3

  @jax.jit
  def accumulate():
    # One scan over the steps (the step index seeds the rounding noise).
    def body(carry, p):
      s_sr, s_rn = carry
      s_sr = storage.store(s_sr.astype(jnp.float32) + inc, np.dtype(jnp.bfloat16), p, 0)
      s_rn = (s_rn.astype(jnp.float32) + inc).astype(jnp.bfloat16)
      return (s_sr, s_rn), None

    zeros = jnp.zeros(n, jnp.bfloat16)
    return jax.lax.scan(body, (zeros, zeros), jnp.arange(steps, dtype=jnp.int32))[0]

  s_sr, s_rn = accumulate()
  assert s_sr.dtype == s_rn.dtype == jnp.bfloat16
  exact = np.asarray(inc, np.float64) * steps
  rel_sr = np.asarray(s_sr, np.float64) / exact - 1
  rel_rn = np.asarray(s_rn, np.float64) / exact - 1
  assert abs(rel_sr.mean()) < 0.003 and rel_sr.std() < 0.06, (rel_sr.mean(), rel_sr.std())
  assert rel_rn.mean() < -0.3  # round-to-nearest stalls far below the sum


def test_bad_stats_dtype_names_the_argument():
  with pytest.raises(ValueError, match="stats_dtype"):
    seven_jax.seven_mask(optax.sgd(0.1), stats_dtype=jnp.float16)
  with pytest.raises(ValueError, match="stats_dtype"):
    seven_jax.pruning_mask(optax.sgd(0.1), "platon", sparsity=0.5, stats_dtype="int8")


def _mlp_run(stats_dtype, steps=60, sparsity=0.7):
  rng = np.random.default_rng(0)
  params = {
    "w1": jnp.asarray(rng.standard_normal((32, 64)).astype(np.float32) * 0.3),
    "b1": jnp.zeros(64),
    "w2": jnp.asarray(rng.standard_normal((64, 8)).astype(np.float32) * 0.3),
  }
  x = jnp.asarray(rng.standard_normal((512, 32)).astype(np.float32))
  y = jnp.asarray(rng.integers(0, 8, 512))

  def loss_fn(p, xb, yb):
    logits = jnp.tanh(xb @ p["w1"] + p["b1"]) @ p["w2"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  tx = seven_jax.seven_mask(
    optax.adam(1e-2),
    sparsity=sparsity,
    start_step=5,
    pruning_steps=steps - 10,
    stats_dtype=stats_dtype,
  )
  state = tx.init(params)

  @jax.jit
  def step(params, state, i):
    idx = (jnp.arange(64) + 64 * i) % 512
    g = jax.grad(loss_fn)(params, x[idx], y[idx])
    u, state = tx.update(g, state, params)
    return optax.apply_updates(params, u), state

  history = []
  for i in range(steps):
    params, state = step(params, state, i)
    m = seven_jax.masks(state)
    for k in ("w1", "w2"):
      assert np.all(np.asarray(params[k])[~np.asarray(m[k])] == 0)
    history.append(jax.tree.map(np.asarray, m))
  return params, state, history


def test_bf16_statistics_keep_every_invariant_and_mostly_the_same_mask():
  _, state32, hist32 = _mlp_run(jnp.float32)
  _, state16, hist16 = _mlp_run(jnp.bfloat16)
  assert seven_jax.find_state(state16).grad_ema["w1"].dtype == jnp.bfloat16
  assert seven_jax.find_state(state32).grad_ema["w1"].dtype == jnp.float32
  assert seven_jax.find_state(state16).scores["w1"].dtype == jnp.float32
  total = 32 * 64 + 64 * 8
  final16 = hist16[-1]
  assert sum(int(final16[k].sum()) for k in ("w1", "w2")) == int(0.3 * total)
  for prev, cur in zip(hist16, hist16[1:]):  # masks only shrink
    for k in ("w1", "w2"):
      assert not np.any(cur[k] & ~prev[k])
  agree = np.mean(np.concatenate([(hist32[-1][k] == final16[k]).ravel() for k in ("w1", "w2")]))
  assert agree > 0.9, agree


def test_bf16_statistics_keep_the_score_an_exact_float32_sum():
  """With bfloat16 ``m``, ``v`` the accumulated score is still float32: each
  step adds exactly the increment of (E4)-(E6) computed (here in numpy) from
  the statistics as stored. A bfloat16 ``S`` would be off by its rounding
  (~2**-9 relative per step)."""
  b1, b2, eps = 0.8, 0.9, 1e-9
  rng = np.random.default_rng(3)
  params = {"w": jnp.asarray(rng.standard_normal((16, 24)).astype(np.float32))}
  # sgd(0): the weights do not move, so W after the step is W; a mask that
  # never changes inside this check (sparsity 0 until the last step).
  tx = seven_jax.seven_mask(
    optax.sgd(0.0), sparsity=0.5, start_step=0, pruning_steps=40, stats_dtype="bfloat16"
  )
  state = tx.init(params)
  update = jax.jit(tx.update)
  w = np.asarray(params["w"], np.float32)
  expected = np.zeros_like(w)
  for p in range(12):
    g = (rng.standard_normal(w.shape) * (1 + 3 * rng.random(w.shape))).astype(np.float32)
    kept = np.asarray(seven_jax.masks(state)["w"])
    _, state = update({"w": jnp.asarray(g)}, state, params)
    st = seven_jax.find_state(state)
    m = np.asarray(st.grad_ema["w"], np.float32)  # as stored (bfloat16, upcast exactly)
    v = np.asarray(st.sq_grad_ema["w"], np.float32)
    gm = np.abs(np.where(kept, g, 0.0)).astype(np.float32)
    m_hat = m / np.float32(1 - b1 ** (p + 1))
    den = np.sqrt(v / np.float32(1 - b2 ** (p + 1))) + np.float32(eps)
    expected = np.where(kept, expected + np.abs(w * gm * m_hat / den), 0.0).astype(np.float32)
    score = np.asarray(st.scores["w"], np.float32)
    np.testing.assert_allclose(score, expected, rtol=2e-6, atol=0)
    assert st.scores["w"].dtype == jnp.float32
