"""The pruning state's ``tau`` and the threshold warm start (``hint=``).

The state records the last selection's threshold (the engine no longer
passes it back as ``hint``: at the edge of the empty gap its scores have it
made the search slower). A hint may only change the search, never its
answer: every step's ``tau`` must be the exact threshold of
a cold selection on the same scores (and a numpy sort's k-th value), and the
masks must be those of the cold selection. The sizes are above the threshold
module's fast-path minimum (2**18 scores), where the hint is used.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import seven_jax
from seven_jax import schedules, selection
from seven_jax.threshold import _FAST_MIN

SHAPES = {"a": (512, 384), "b": (384, 256), "bias": (256,)}
N_STEPS = 7
SPARSITY = 0.6


def _params():
  rng = np.random.default_rng(0)
  return {k: jnp.asarray(rng.normal(size=s).astype(np.float32)) for k, s in SHAPES.items()}


def _grads(t):
  rng = np.random.default_rng(100 + t)
  return {k: jnp.asarray(rng.normal(size=s).astype(np.float32)) for k, s in SHAPES.items()}


def _run(tx, steps):
  params = _params()
  state = tx.init(params)
  step = jax.jit(tx.update)
  states = [state]
  for t in range(steps):
    updates, state = step(_grads(t), state, params)
    params = optax.apply_updates(params, updates)
    states.append(state)
  return states


def _keep_ratio(p):
  return schedules.cubic_keep_ratio(p, N_STEPS, 1.0 - SPARSITY)


@jax.jit
def _cold(scores, masks, ratio):
  return selection.select_masks(scores, masks, ratio, return_threshold=True)


def _sorted_kth(scores, masks, ratio):
  """numpy: the k-th largest score, pruned weights scored 0 (no resurrection)."""
  flat = np.concatenate([np.where(m, s, 0.0).ravel() for s, m in zip(scores, masks)])
  k = int(np.floor(np.float32(ratio) * np.float32(flat.size)))
  return np.sort(flat)[::-1][k - 1]


def test_sizes_take_the_fast_path():
  assert SHAPES["a"][0] * SHAPES["a"][1] + SHAPES["b"][0] * SHAPES["b"][1] >= _FAST_MIN


@pytest.fixture(scope="module")
def global_run():
  tx = seven_jax.seven_mask(optax.sgd(1e-3), sparsity=SPARSITY, start_step=0, pruning_steps=N_STEPS)
  return _run(tx, N_STEPS + 1)


def test_tau_is_nan_before_the_first_selection(global_run):
  tau0 = np.asarray(global_run[0].tau)
  assert tau0.shape == () and tau0.dtype == np.float32 and np.isnan(tau0)


def test_tau_and_masks_equal_the_cold_selection(global_run):
  for p in range(N_STEPS - 1):  # the window: N - 1 selections
    before, after = global_run[p], global_run[p + 1]
    old_masks = jax.tree.leaves(before.masks)
    scores = jax.tree.leaves(after.scores)  # float32: the scores selected on
    ratio = _keep_ratio(p)
    cold_masks, cold_tau = _cold(scores, old_masks, ratio)
    tau = np.asarray(after.tau)
    # Exactly the cold threshold, and a numpy sort's k-th value.
    assert tau.tobytes() == np.asarray(cold_tau).tobytes(), p
    assert tau == _sorted_kth(
      [np.asarray(s) for s in scores], [np.asarray(m) for m in old_masks], ratio
    )
    for m, c in zip(jax.tree.leaves(after.masks), cold_masks):
      np.testing.assert_array_equal(np.asarray(m), np.asarray(c))
    if p:  # from the second selection on the state holds the last threshold
      assert np.isfinite(np.asarray(before.tau))


def test_tau_is_kept_after_the_window(global_run):
  last, after = global_run[N_STEPS - 1], global_run[N_STEPS]
  assert np.asarray(after.tau).tobytes() == np.asarray(last.tau).tobytes()


def test_hint_does_not_change_the_selection(global_run):
  # Any hint (the true tau, a stale one, a wild one, none) gives the same answer.
  before, after = global_run[2], global_run[3]
  old_masks = jax.tree.leaves(before.masks)
  scores = jax.tree.leaves(after.scores)
  ratio = _keep_ratio(2)
  select = jax.jit(
    lambda s, m, h: selection.select_masks(s, m, ratio, hint=h, return_threshold=True)
  )
  ref_masks, ref_tau = _cold(scores, old_masks, ratio)
  for hint in (after.tau, before.tau, global_run[1].tau, jnp.float32(1e30), jnp.float32(0.0)):
    masks, tau = select(scores, old_masks, hint)
    assert np.asarray(tau).tobytes() == np.asarray(ref_tau).tobytes()
    for m, c in zip(masks, ref_masks):
      np.testing.assert_array_equal(np.asarray(m), np.asarray(c))


def test_per_leaf_tau_and_update_every():
  tx = seven_jax.pruning_mask(
    optax.sgd(1e-3),
    "magnitude",
    sparsity=SPARSITY,
    start_step=0,
    pruning_steps=N_STEPS,
    scope="per_leaf",
    update_every=2,
  )
  states = _run(tx, N_STEPS - 1)
  assert np.asarray(states[0].tau).shape == (2,)
  for p in range(N_STEPS - 1):
    before, after = states[p], states[p + 1]
    selected = (p + 1) % 2 == 0 or p == N_STEPS - 2
    if not selected:  # no selection: the old threshold stays
      assert np.asarray(after.tau).tobytes() == np.asarray(before.tau).tobytes()
      continue
    for j, (s, m) in enumerate(zip(jax.tree.leaves(after.scores), jax.tree.leaves(before.masks))):
      expected = _sorted_kth([np.asarray(s)], [np.asarray(m)], _keep_ratio(p))
      assert np.asarray(after.tau)[j] == expected, (p, j)


def test_freeze_drops_tau(global_run):
  frozen = seven_jax.freeze(global_run[-1])
  assert isinstance(frozen, seven_jax.FixedMaskState)
