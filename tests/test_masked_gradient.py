"""The score rule sees the gradient of the masked network, as the optimizer does.

Without straight-through, a pruned weight's gradient is 0 for SEVEN's EMAs:
after the mask prunes it, ``m`` and ``v`` only decay (numpy reference). The
raw gradient there would keep feeding them.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

import seven_jax


def test_pruned_weights_get_a_zero_gradient_in_the_statistics():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(8, 4)).astype(np.float32)
  g = (rng.normal(size=(8, 4)) + 3.0).astype(np.float32)  # nonzero everywhere
  b1, b2 = 0.8, 0.9
  tx = seven_jax.seven_mask(
    optax.sgd(0.0), sparsity=0.5, start_step=0, pruning_steps=4, b1=b1, b2=b2, prunable=None
  )
  params = {"w": jnp.asarray(w)}
  state = tx.init(params)
  _, state = tx.update({"w": jnp.asarray(g)}, state, params)
  mask1 = np.asarray(seven_jax.masks(state)["w"])
  assert 0 < mask1.sum() < mask1.size  # the first step pruned some weights
  _, state = tx.update({"w": jnp.asarray(g)}, state, params)

  seen = np.where(mask1, g, 0.0)  # step 2's gradient of the masked network
  m = b1 * (1 - b1) * np.abs(g) + (1 - b1) * np.abs(seen)
  v = b2 * (1 - b2) * g * g + (1 - b2) * seen * seen
  np.testing.assert_allclose(np.asarray(state.stats[0]["w"]), m, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(state.stats[1]["w"]), v, rtol=1e-6)
  # Pruned weights only decay: b1 * m_1.
  np.testing.assert_allclose(
    np.asarray(state.stats[0]["w"])[~mask1], (b1 * (1 - b1) * np.abs(g))[~mask1], rtol=1e-6
  )
