"""Straight-through pruning (``pruning_mask(..., straight_through=True)``).

Movement pruning as Sanh et al. (2020) run it: the forward pass applies the
mask, the gradient reaches every weight through the identity, the dense
weights are kept inside the window so a pruned weight can come back, and the
window's last step zeroes every pruned weight. Checked against a numpy
re-computation of the whole loop written from that description.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import seven_jax

SPARSITY = 0.5
N_STEPS = 6  # schedule length N: the window is N - 1 = 5 update calls
START = 1
LR = 0.05


def _data(seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(16, 5)).astype(np.float32)
  y = rng.normal(size=(16, 3)).astype(np.float32)
  params = {
    "a": rng.normal(size=(5, 6)).astype(np.float32),
    "b": rng.normal(size=(6, 3)).astype(np.float32),
    "bias": rng.normal(size=(3,)).astype(np.float32),  # not prunable (1-D)
  }
  return x, y, params


def _loss(p, x, y):
  h = jnp.tanh(x @ p["a"])
  return jnp.mean((h @ p["b"] + p["bias"] - y) ** 2)


def _np_grads(p, x, y):
  """Gradient of the loss at ``p`` (float64, by hand)."""
  h = np.tanh(x @ p["a"])
  err = h @ p["b"] + p["bias"] - y
  dy = 2.0 * err / err.size
  dh = dy @ p["b"].T
  return {"a": x.T @ (dh * (1.0 - h**2)), "b": h.T @ dy, "bias": dy.sum(0)}


def _np_keep_count(p, total):
  # The cubic keep ratio evaluated in float32, as the library (and the
  # official code's int(r * D)) floors it.
  rf = np.float32(1.0 - SPARSITY)
  prog = np.float32((p + 1) / N_STEPS)
  r = rf + (np.float32(1.0) - rf) * (np.float32(1.0) - prog) ** 3
  return int(np.floor(np.float32(r) * np.float32(total)))


def _reference(params, x, y, steps):
  """numpy: straight-through movement pruning with SGD, every step's
  masks, scores and weights (after the update)."""
  w = {k: np.asarray(v, np.float64) for k, v in params.items()}
  names = ["a", "b"]
  mask = {k: np.ones(w[k].shape, bool) for k in names}
  score = {k: np.zeros(w[k].shape) for k in names}
  total = sum(w[k].size for k in names)
  x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
  out = []
  for t in range(steps):
    forward = {k: w[k] * mask[k] if k in mask else w[k] for k in w}
    g = _np_grads(forward, x64, y64)  # raw gradient at W * M
    u = {k: -LR * (g[k] * mask[k] if k in mask else g[k]) for k in w}
    p = t - START
    in_window = 0 <= p < N_STEPS - 1
    is_last = p == N_STEPS - 2
    if in_window:
      for k in names:
        score[k] = score[k] - w[k] * g[k]  # dense W, raw g
      flat = np.concatenate([score[k].ravel() for k in names])
      k_keep = _np_keep_count(p, total)
      tau = np.sort(flat)[::-1][k_keep - 1]
      mask = {k: score[k] >= tau for k in names}
    for k in w:
      if k in mask:
        pruned = -w[k] if (is_last or not in_window) else np.zeros_like(w[k])
        w[k] = w[k] + np.where(mask[k], u[k], pruned)
      else:
        w[k] = w[k] + u[k]
    out.append(
      (
        {k: mask[k].copy() for k in names},
        {k: score[k].copy() for k in names},
        {k: w[k].copy() for k in w},
      )
    )
  return out


def _run(params, x, y, steps, straight_through=True):
  tx = seven_jax.pruning_mask(
    optax.sgd(LR),
    "movement",
    sparsity=SPARSITY,
    start_step=START,
    pruning_steps=N_STEPS,
    straight_through=straight_through,
  )
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    masks = seven_jax.masks(state)
    if straight_through:
      fwd = lambda p: _loss(seven_jax.straight_through_masked(p, masks), x, y)
    else:
      fwd = lambda p: _loss(p, x, y)
    grads = jax.grad(fwd)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  out = []
  p = {k: jnp.asarray(v) for k, v in params.items()}
  for _ in range(steps):
    p, state = step(p, state)
    out.append(
      (
        {k: np.asarray(v) for k, v in seven_jax.masks(state).items()},
        {k: np.asarray(v) for k, v in state.scores.items() if k != "bias"},
        {k: np.asarray(v) for k, v in p.items()},
      )
    )
  return out


STEPS = START + N_STEPS - 1 + 2  # two steps after the window


@pytest.fixture(scope="module")
def runs():
  x, y, params = _data()
  return _run(params, x, y, STEPS), _reference(params, x, y, STEPS), params


def test_matches_numpy_reference(runs):
  lib, ref, _ = runs
  for t, ((m, s, w), (rm, rs, rw)) in enumerate(zip(lib, ref)):
    for k in ("a", "b"):
      np.testing.assert_array_equal(m[k], rm[k], err_msg=f"mask {k} step {t}")
      np.testing.assert_allclose(s[k], rs[k], rtol=1e-5, atol=1e-6, err_msg=f"score {k} {t}")
    for k in w:
      np.testing.assert_allclose(w[k], rw[k], rtol=1e-5, atol=1e-6, err_msg=f"weight {k} {t}")


def test_pruned_weights_keep_dense_value_inside_window(runs):
  lib, _, _ = runs
  prev = lib[START - 1][2]  # the weights before the window's first step
  checked = 0
  for t in range(START, START + N_STEPS - 2):  # window steps but the last
    m, _, w = lib[t]
    for k in ("a", "b"):
      pruned = ~m[k]
      # A pruned weight does not move, and it is not zero.
      np.testing.assert_array_equal(w[k][pruned], prev[k][pruned])
      assert np.all(w[k][pruned] != 0.0)
      checked += int(pruned.sum())
    prev = w
  assert checked > 0


def _pruned_score_changes(history):
  changed = total = 0
  for t in range(START + 1, START + N_STEPS - 1):
    m_prev, s_prev, _ = history[t - 1]
    _, s, _ = history[t]
    for k in ("a", "b"):
      pruned = ~m_prev[k]
      changed += int(np.sum(s[k][pruned] != s_prev[k][pruned]))
      total += int(pruned.sum())
  return changed, total


def test_score_of_pruned_weight_keeps_changing(runs):
  lib, _, _ = runs
  changed, total = _pruned_score_changes(lib)
  # Every pruned weight with a non-zero raw gradient (a hidden unit whose
  # outgoing weights are all pruned gets none) moves its score.
  assert total > 0 and changed >= 0.75 * total
  # Without straight-through a pruned weight is 0 and -W * g stays 0.
  x, y, params = _data()
  changed_plain, total_plain = _pruned_score_changes(_run(params, x, y, STEPS, False))
  assert total_plain > 0 and changed_plain == 0


def test_pruned_weights_exactly_zero_after_window(runs):
  lib, _, _ = runs
  last = START + N_STEPS - 2
  final_mask = {k: lib[last][0][k] for k in ("a", "b")}
  d = sum(v.size for v in final_mask.values())
  assert sum(int((~v).sum()) for v in final_mask.values()) == d - _np_keep_count(N_STEPS - 2, d)
  for t in range(last, STEPS):
    m, _, w = lib[t]
    for k in ("a", "b"):
      np.testing.assert_array_equal(m[k], final_mask[k])  # the mask is final
      assert np.all(w[k][~m[k]] == 0.0)
      assert np.all(w[k][m[k]] != 0.0)


def test_ste_gradient_is_the_gradient_at_the_masked_weights():
  x, y, params = _data(3)
  rng = np.random.default_rng(4)
  masks = {
    "a": rng.random(params["a"].shape) < 0.5,
    "b": rng.random(params["b"].shape) < 0.5,
    "bias": np.ones(3, bool),
  }
  p = {k: jnp.asarray(v) for k, v in params.items()}
  m = {k: jnp.asarray(v) for k, v in masks.items()}
  masked = {k: params[k] * masks[k] for k in params}
  value, grads = jax.value_and_grad(lambda q: _loss(seven_jax.straight_through_masked(q, m), x, y))(
    p
  )
  ref = _np_grads({k: np.asarray(v, np.float64) for k, v in masked.items()}, x, y)
  for k in params:
    np.testing.assert_allclose(np.asarray(grads[k]), ref[k], rtol=1e-5, atol=1e-7)
  # Pruned gradients are not zero: the raw gradient, unlike d/dW of L(W * M)
  # (but around a hidden unit whose incoming or outgoing weights are all pruned).
  for k in ("a", "b"):
    assert np.mean(np.asarray(grads[k])[~masks[k]] != 0.0) > 0.5
  np.testing.assert_allclose(float(value), float(_loss(masked, x, y)), rtol=1e-6)
  # The forward value: exactly W where kept, exactly 0 where pruned.
  out = seven_jax.straight_through_masked(p, m)
  for k in params:
    np.testing.assert_array_equal(np.asarray(out[k]), np.where(masks[k], params[k], 0.0))


def test_ste_passes_masked_node_holes_through():
  p = {"w": jnp.ones((2, 2)), "other": jnp.full((3,), 2.0)}
  m = {"w": jnp.array([[True, False], [False, True]]), "other": optax.MaskedNode()}
  out = seven_jax.straight_through_masked(p, m)
  np.testing.assert_array_equal(np.asarray(out["w"]), [[1.0, 0.0], [0.0, 1.0]])
  assert out["other"] is p["other"]


def _hand_run(straight_through, grads_seq):
  """Two weights kept of four; hand-made raw gradients; SGD with lr 0 on the
  pruned, so every weight keeps its value 1 unless it is zeroed."""
  params = {"w": jnp.ones((2, 2))}
  tx = seven_jax.pruning_mask(
    optax.sgd(0.0),
    "movement",
    sparsity=0.5,
    start_step=0,
    pruning_steps=4,
    straight_through=straight_through,
  )
  state = tx.init(params)
  history = []
  for g in grads_seq:
    updates, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
    params = optax.apply_updates(params, updates)
    history.append((np.asarray(seven_jax.masks(state)["w"]), np.asarray(params["w"])))
  return history


# Step 0 favours weights 0 and 1 (score -W*g = 1); step 1 gives the pruned
# weights 2 and 3 a score of 5 each; step 2 (the last) changes nothing.
HAND_GRADS = [
  [[-1.0, -1.0], [0.0, 0.0]],
  [[0.0, 0.0], [-5.0, -5.0]],
  [[0.0, 0.0], [0.0, 0.0]],
]


def test_a_pruned_weight_comes_back():
  (m0, w0), (m1, w1), (m2, w2) = _hand_run(True, HAND_GRADS)
  # A 0.5 + 0.5 (1 - p/4)^3 keep ratio of 4 weights keeps 2 on every step.
  np.testing.assert_array_equal(m0, [[True, True], [False, False]])
  np.testing.assert_array_equal(w0, np.ones((2, 2)))  # pruned but dense
  np.testing.assert_array_equal(m1, [[False, False], [True, True]])  # back
  np.testing.assert_array_equal(w1, np.ones((2, 2)))
  # Last window step: the pruned weights are zeroed, the kept ones stay.
  np.testing.assert_array_equal(m2, m1)
  np.testing.assert_array_equal(w2, [[0.0, 0.0], [1.0, 1.0]])


def test_without_straight_through_pruned_weights_cannot_come_back():
  (m0, w0), (m1, w1), _ = _hand_run(False, HAND_GRADS)
  np.testing.assert_array_equal(m0, [[True, True], [False, False]])
  np.testing.assert_array_equal(w0, [[1.0, 1.0], [0.0, 0.0]])
  # -W * g of a zero weight is 0: the pruned weights never score again.
  np.testing.assert_array_equal(m1, m0)


def test_straight_through_must_be_a_bool():
  with pytest.raises(TypeError, match="straight_through"):
    seven_jax.pruning_mask(optax.sgd(0.1), "movement", sparsity=0.5, straight_through="yes")
  with pytest.raises(TypeError, match="straight_through"):
    seven_jax.pruning_mask(optax.sgd(0.1), "movement", sparsity=0.5, straight_through=None)
