"""seven_mask: parity with a numpy re-computation of the official loop, invariants,
and the optax / Flax integration contract."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

from jax.sharding import NamedSharding, PartitionSpec as P

import seven_jax
from seven_jax.engine import TIES_SUPPORTED
from tests._reference import grads_from_sequence, seven_loop

# Parity with the official loop keeps every tie at the threshold.
KEEP_ALL_TIES = {"ties": "keep_all"} if TIES_SUPPORTED else {}

SHAPES = {"a": (12, 10), "b": (7, 9), "c": (5,), "d": (3, 4, 5)}
PRUNABLE = {"a": True, "b": True, "c": False, "d": True}


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {k: jnp.asarray(rng.standard_normal(s).astype(np.float32)) for k, s in SHAPES.items()}


def _grad_sequence(steps, seed=1):
  rng = np.random.default_rng(seed)
  # Per-weight signal plus heavy noise, so that SEVEN's correction matters.
  signal = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
  seq = []
  for _ in range(steps):
    seq.append(
      {
        k: (signal[k] + 2.0 * rng.standard_normal(s) * rng.random(s)).astype(np.float32)
        for k, s in SHAPES.items()
      }
    )
  return seq


def official_loop(params, grads_seq, lr, sparsity, t_i, n_iter, a1, a2):
  """The official SEVEN_dyn loop with SGD (tests/_reference.py); masks after every step."""
  history, _ = seven_loop(
    params,
    grads_from_sequence(grads_seq),
    len(grads_seq),
    prunable=PRUNABLE,
    sparsity=sparsity,
    start=t_i,
    window=n_iter - 1,
    schedule_n=n_iter,
    lr=lr,
    b1=a1,
    b2=a2,
  )
  return history


@pytest.mark.parametrize("start_step,n_iter,sparsity", [(0, 6, 0.5), (3, 10, 0.8)])
def test_parity_with_the_official_loop(start_step, n_iter, sparsity):
  params = _params()
  grads_seq = _grad_sequence(start_step + n_iter + 3)
  lr, a1, a2 = 0.05, 0.8, 0.9
  expected = official_loop(params, grads_seq, lr, sparsity, start_step, n_iter, a1, a2)
  tx = seven_jax.seven_mask(
    optax.sgd(lr),
    sparsity=sparsity,
    start_step=start_step,
    pruning_steps=n_iter,
    b1=a1,
    b2=a2,
    prunable=PRUNABLE,
    **KEEP_ALL_TIES,
  )
  state = tx.init(params)
  step = jax.jit(tx.update)
  for t, grads in enumerate(grads_seq):
    grads = jax.tree.map(jnp.asarray, grads)
    updates, state = step(grads, state, params)
    params = optax.apply_updates(params, updates)
    got = seven_jax.masks(state)
    for k, mask in expected[t].items():
      np.testing.assert_array_equal(np.asarray(got[k]), mask, err_msg=f"step {t}, leaf {k}")
  # And the run really pruned: the last mask matches floor(r_final * D).
  total = sum(int(np.prod(SHAPES[k])) for k in SHAPES if PRUNABLE[k])
  r_last = (1 - sparsity) + sparsity * (1 / n_iter) ** 3
  assert sum(int(m.sum()) for m in expected[-1].values()) == int(r_last * total)


def _regression_problem(seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((64, 12)), jnp.float32)
  y = jnp.asarray(rng.standard_normal((64, 1)), jnp.float32)
  params = {
    "hidden": {
      "kernel": jnp.asarray(rng.standard_normal((12, 16)) * 0.3, jnp.float32),
      "bias": jnp.zeros(16),
    },
    "out": {
      "kernel": jnp.asarray(rng.standard_normal((16, 1)) * 0.3, jnp.float32),
      "bias": jnp.zeros(1),
    },
  }

  def loss(p, xb, yb):
    h = jnp.tanh(xb @ p["hidden"]["kernel"] + p["hidden"]["bias"])
    return jnp.mean((h @ p["out"]["kernel"] + p["out"]["bias"] - yb) ** 2)

  return params, loss, x, y


@pytest.mark.parametrize("resurrect", [False, True])
def test_invariants_over_many_adamw_steps(resurrect):
  params, loss, x, y = _regression_problem()
  sparsity, start, n_iter, steps = 0.7, 5, 30, 50
  tx = seven_jax.seven_mask(
    optax.adamw(1e-2, weight_decay=0.1),
    sparsity=sparsity,
    start_step=start,
    pruning_steps=n_iter,
    resurrect=resurrect,
  )
  state = tx.init(params)

  @jax.jit
  def train_step(params, state, i):
    idx = (jnp.arange(16) + 16 * i) % 64
    grads = jax.grad(loss)(params, x[idx], y[idx])
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  total = 12 * 16 + 16
  previous = seven_jax.masks(state)
  grew = False
  for i in range(steps):
    params, state = train_step(params, state, i)
    current = seven_jax.masks(state)
    for path in [("hidden", "kernel"), ("out", "kernel")]:
      m = np.asarray(current[path[0]][path[1]])
      w = np.asarray(params[path[0]][path[1]])
      assert np.all(w[~m] == 0.0), f"step {i}: pruned weights not exactly zero"
      old = np.asarray(previous[path[0]][path[1]])
      if resurrect:
        grew |= bool(np.any(m & ~old))
      else:
        assert not np.any(m & ~old), f"step {i}: a pruned weight came back"
    for bias in ["hidden", "out"]:
      assert bool(np.all(np.asarray(current[bias]["bias"])))
    previous = current
  kept = sum(int(np.asarray(previous[n]["kernel"]).sum()) for n in ["hidden", "out"])
  expected = math.floor(((1 - sparsity) + sparsity * (1 / n_iter) ** 3) * total)
  assert kept == expected
  report = seven_jax.sparsity_report(state)
  assert report.total == total and report.kept == kept


def test_non_prunable_leaves_follow_the_inner_optimizer_exactly():
  params = _params()
  grads_seq = [jax.tree.map(jnp.asarray, g) for g in _grad_sequence(12)]
  inner = optax.adamw(1e-2, weight_decay=0.05)
  tx = seven_jax.seven_mask(inner, sparsity=0.5, start_step=2, pruning_steps=6, prunable=PRUNABLE)
  s1, s2 = tx.init(params), inner.init(params)
  p1, p2 = params, params
  for g in grads_seq:
    u1, s1 = tx.update(g, s1, p1)
    u2, s2 = inner.update(g, s2, p2)
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
  np.testing.assert_array_equal(np.asarray(p1["c"]), np.asarray(p2["c"]))


def test_masks_frozen_and_enforced_outside_the_window():
  params = _params()
  tx = seven_jax.seven_mask(
    optax.sgd(0.1), sparsity=0.5, start_step=2, pruning_steps=4, prunable=PRUNABLE
  )
  state = tx.init(params)
  history = []
  for g in _grad_sequence(10):
    updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, params)
    params = optax.apply_updates(params, updates)
    history.append(jax.tree.map(np.asarray, seven_jax.masks(state)))
  # No pruning during the first two (dense) steps, none after step 2 + 4 - 2 = 4.
  assert all(np.all(m) for m in jax.tree.leaves(history[1]))
  for later in history[5:]:
    jax.tree.map(np.testing.assert_array_equal, later, history[4])
  assert not all(np.all(m) for m in jax.tree.leaves(history[4]))


def test_update_every_only_changes_masks_on_schedule():
  params = _params()
  tx = seven_jax.seven_mask(
    optax.sgd(0.1), sparsity=0.6, start_step=0, pruning_steps=8, update_every=3, prunable=PRUNABLE
  )
  state = tx.init(params)
  changed = []
  prev = seven_jax.masks(state)
  for g in _grad_sequence(8):
    updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, params)
    params = optax.apply_updates(params, updates)
    cur = seven_jax.masks(state)
    changed.append(
      any(
        bool(np.any(np.asarray(a) != np.asarray(b)))
        for a, b in zip(jax.tree.leaves(cur), jax.tree.leaves(prev))
      )
    )
    prev = cur
  # Window steps p = 0..6: masks may change at p = 2, 5 and the last, p = 6.
  assert [i for i, c in enumerate(changed) if c] == [2, 5, 6]


def test_jit_does_not_recompile():
  params = _params()
  tx = seven_jax.seven_mask(optax.adam(1e-3), sparsity=0.5, start_step=1, pruning_steps=5)
  state = tx.init(params)
  step = jax.jit(tx.update)
  for g in _grad_sequence(8):
    _, state = step(jax.tree.map(jnp.asarray, g), state, params)
  assert step._cache_size() == 1


def test_composes_in_a_chain_and_accepts_extra_args():
  params = _params()
  tx = optax.chain(
    optax.clip_by_global_norm(1.0),
    seven_jax.seven_mask(optax.adam(1e-2), sparsity=0.5, start_step=0, pruning_steps=3),
  )
  state = tx.init(params)
  for g in _grad_sequence(4):
    updates, state = tx.update(
      jax.tree.map(jnp.asarray, g), state, params, unexpected_extra_arg=1.0
    )
    params = optax.apply_updates(params, updates)
  m = seven_jax.masks(state)
  assert np.all(np.asarray(params["a"])[~np.asarray(m["a"])] == 0)
  assert 0 < int(np.asarray(m["a"]).sum()) < m["a"].size


def test_inject_hyperparams_matches_and_sparsity_is_injectable():
  params = _params()
  kwargs = dict(sparsity=0.5, start_step=0, pruning_steps=4, b1=0.8, b2=0.9)
  plain = seven_jax.seven_mask(optax.sgd(0.1), prunable=PRUNABLE, **kwargs)
  injected = optax.inject_hyperparams(seven_jax.seven_mask, static_args=("prunable",))(
    optax.sgd(0.1), prunable=PRUNABLE, **kwargs
  )
  s1, s2 = plain.init(params), injected.init(params)
  p1 = p2 = params
  step2 = jax.jit(injected.update)
  for g in _grad_sequence(5):
    g = jax.tree.map(jnp.asarray, g)
    u1, s1 = plain.update(g, s1, p1)
    u2, s2 = step2(g, s2, p2)
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), u1, u2)
    jax.tree.map(np.testing.assert_array_equal, seven_jax.masks(s1), seven_jax.masks(s2))
  # Changing the injected sparsity changes how much is pruned.
  s3 = injected.init(params)
  s3.hyperparams["sparsity"] = jnp.asarray(0.9, s3.hyperparams["sparsity"].dtype)
  p3 = params
  for g in _grad_sequence(5):
    u3, s3 = step2(jax.tree.map(jnp.asarray, g), s3, p3)
    p3 = optax.apply_updates(p3, u3)
  kept = lambda s: sum(int(np.asarray(seven_jax.masks(s)[k]).sum()) for k in "abd")
  assert kept(s3) < kept(s2)


def test_multisteps_accumulates_then_prunes():
  params = _params()
  tx = optax.MultiSteps(
    seven_jax.seven_mask(
      optax.sgd(0.1), sparsity=0.5, start_step=0, pruning_steps=3, prunable=PRUNABLE
    ),
    every_k_schedule=2,
  )
  state = tx.init(params)
  step = jax.jit(tx.update)
  for i, g in enumerate(_grad_sequence(6)):
    updates, state = step(jax.tree.map(jnp.asarray, g), state, params)
    if i % 2 == 0:  # the first mini-step of each pair emits nothing
      assert all(float(jnp.abs(u).max()) == 0.0 for u in jax.tree.leaves(updates))
    params = optax.apply_updates(params, updates)
  inner = seven_jax.find_state(state)
  assert int(inner.count) == 3
  m = seven_jax.masks(state)
  assert np.all(np.asarray(params["b"])[~np.asarray(m["b"])] == 0)
  assert int(sum(np.asarray(m[k]).sum() for k in "abd")) < sum(np.prod(SHAPES[k]) for k in "abd")


def test_map_params_maps_param_shardings_onto_the_state():
  # optax's recipe for state shardings: every param-shaped tree of the state
  # (masks, stats, scores and adam's moments) gets the params' tree of
  # shardings; MaskedNode holes (non-prunable leaves) take their param's.
  params = _params()
  tx = seven_jax.seven_mask(
    optax.adam(1e-3), sparsity=0.5, start_step=0, pruning_steps=3, prunable=PRUNABLE
  )
  state = tx.init(params)
  mesh = jax.make_mesh((1,), ("fsdp",), axis_types=(jax.sharding.AxisType.Auto,))
  specs = {"a": P("fsdp", None), "b": P(None, "fsdp"), "c": P(), "d": P("fsdp")}
  shardings = {k: NamedSharding(mesh, spec) for k, spec in specs.items()}
  replicated = NamedSharding(mesh, P())
  mapped = optax.tree.map_params(
    tx,
    lambda _, s: s,
    state,
    shardings,
    transform_non_params=lambda _: replicated,
    is_leaf=lambda x: isinstance(x, optax.MaskedNode),
  )
  st = seven_jax.find_state(mapped)
  for tree in (st.masks, st.scores, *st.stats, st.inner_state[0].mu, st.inner_state[0].nu):
    assert {k: tree[k].spec for k in SHAPES} == specs
  assert st.count == replicated
  placed = jax.device_put(state, mapped)
  assert placed.masks["a"].sharding.spec == specs["a"]


def test_bf16_params_keep_float32_statistics():
  params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), _params())
  tx = seven_jax.seven_mask(
    optax.sgd(0.1), sparsity=0.5, start_step=0, pruning_steps=3, prunable=PRUNABLE
  )
  state = tx.init(params)
  for g in _grad_sequence(3):
    g = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), g)
    updates, state = jax.jit(tx.update)(g, state, params)
    params = optax.apply_updates(params, updates)
  assert updates["a"].dtype == jnp.bfloat16 and params["a"].dtype == jnp.bfloat16
  assert state.scores["a"].dtype == jnp.float32 and state.grad_ema["a"].dtype == jnp.float32
  assert state.masks["a"].dtype == jnp.bool_
  m = np.asarray(state.masks["a"])
  assert np.all(np.asarray(params["a"], np.float32)[~m] == 0)


def test_state_has_no_none_and_skips_memory_for_non_prunable_leaves():
  params = _params()
  state = seven_jax.seven_mask(optax.sgd(0.1), prunable=PRUNABLE).init(params)
  assert all(x is not None for x in jax.tree.leaves(state, is_leaf=lambda x: x is None))
  assert state.scores["a"].shape == SHAPES["a"]
  # Non-prunable leaves cost nothing in the state (optax.MaskedNode holes);
  # masks() still returns them params-shaped and all True.
  for tree in (state.masks, state.scores, *state.stats):
    assert isinstance(tree["c"], optax.MaskedNode)
    assert len(jax.tree.leaves(tree)) == 3
  assert (state.grad_ema, state.sq_grad_ema) == state.stats
  m = seven_jax.masks(state)
  assert m["c"].shape == SHAPES["c"] and bool(np.all(m["c"]))
  assert m["a"].shape == SHAPES["a"]


@pytest.mark.parametrize("dtype, budget", [(jnp.float32, 13), (jnp.bfloat16, 9)])
def test_state_bytes_per_prunable_weight(dtype, budget):
  # m, v in stats_dtype, S in float32, plus a bool mask; everything else is
  # O(1) per leaf.
  params = {
    "w1": jnp.ones((64, 32)),
    "b1": jnp.ones(32),
    "w2": jnp.ones((32, 48)),
    "ln": {"scale": jnp.ones(48), "bias": jnp.ones(48)},
  }
  prunable = {"w1": True, "b1": False, "w2": True, "ln": {"scale": False, "bias": False}}
  tx = seven_jax.seven_mask(optax.sgd(0.1), prunable=prunable, stats_dtype=dtype)
  state = tx.init(params)
  nbytes = lambda tree: sum(x.nbytes for x in jax.tree.leaves(tree))
  per_weight = (nbytes(state) - nbytes(state.inner_state)) / (64 * 32 + 32 * 48)
  assert budget <= per_weight <= budget + 0.02, per_weight
  assert state.grad_ema["w2"].dtype == state.sq_grad_ema["w1"].dtype == dtype
  assert state.scores["w1"].dtype == jnp.float32


def test_non_finite_gradients_never_reach_scores_or_masks():
  params = _params()
  tx = seven_jax.seven_mask(
    optax.sgd(0.0), sparsity=0.5, start_step=0, pruning_steps=4, prunable=PRUNABLE
  )
  state = tx.init(params)
  for g in _grad_sequence(3):
    g = dict(g)
    bad = np.array(g["a"])
    bad[0, :3] = [np.nan, np.inf, -np.inf]
    g["a"] = bad
    _, state = tx.update(jax.tree.map(jnp.asarray, g), state, params)
  for leaf in jax.tree.leaves((state.scores, state.grad_ema, state.sq_grad_ema)):
    assert np.all(np.isfinite(np.asarray(leaf)))
  # Entries with non-finite gradients scored 0 and were pruned first.
  assert not np.any(np.asarray(state.masks["a"])[0, :3])


def test_flax_linen_train_state():
  params, loss, x, y = _regression_problem()
  tx = seven_jax.seven_mask(optax.adamw(1e-2), sparsity=0.5, start_step=0, pruning_steps=4)
  st = train_state.TrainState.create(apply_fn=None, params=params, tx=tx)

  @jax.jit
  def step(st):
    return st.apply_gradients(grads=jax.grad(loss)(st.params, x, y))

  for _ in range(5):
    st = step(st)
  m = seven_jax.masks(st.opt_state)
  w = np.asarray(st.params["hidden"]["kernel"])
  assert np.all(w[~np.asarray(m["hidden"]["kernel"])] == 0)
  assert seven_jax.sparsity_report(st.opt_state).sparsity > 0.4


def test_flax_nnx_optimizer():
  model = nnx.Sequential(nnx.Linear(6, 8, rngs=nnx.Rngs(0)), nnx.Linear(8, 2, rngs=nnx.Rngs(1)))
  tx = seven_jax.seven_mask(optax.adam(1e-2), sparsity=0.5, start_step=0, pruning_steps=4)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  x = jnp.ones((4, 6))

  @nnx.jit
  def step(model, optimizer):
    grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
    optimizer.update(model, grads)

  for _ in range(5):
    step(model, optimizer)
  m = seven_jax.masks(optimizer.opt_state)
  kernel = np.asarray(model.layers[0].kernel[...])
  mask = np.asarray(m["layers"][0]["kernel"])
  assert mask.shape == kernel.shape and not mask.all()
  assert np.all(kernel[~mask] == 0)


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (dict(sparsity=1.0), "sparsity must be in"),
    (dict(sparsity=-0.1), "sparsity must be in"),
    (dict(start_step=-1), "start_step must be an integer >= 0"),
    (dict(pruning_steps=1), "pruning_steps must be an integer >= 2"),
    (dict(b1=1.0), "b1 must be in"),
    (dict(b2=-0.5), "b2 must be in"),
    (dict(scope="layer"), "scope must be one of"),
    (dict(update_every=0), "update_every must be an integer >= 1"),
  ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    seven_jax.seven_mask(optax.sgd(0.1), **kwargs)


def test_bad_prunable_trees_name_the_path():
  params = _params()
  with pytest.raises(ValueError, match="'c'"):
    seven_jax.seven_mask(optax.sgd(0.1), prunable={"a": True, "b": True, "d": True}).init(params)
  with pytest.raises(ValueError, match="selects no leaf"):
    seven_jax.seven_mask(optax.sgd(0.1), prunable={k: False for k in SHAPES}).init(params)
  with pytest.raises(ValueError, match="seven_mask needs the current parameters"):
    tx = seven_jax.seven_mask(optax.sgd(0.1))
    tx.update(params, tx.init(params))


def test_freeze_after_the_window_gives_identical_updates():
  # Continue with fixed_mask on the frozen state: the same params as
  # continuing with seven_mask (whose masks no longer change), up to float
  # rounding (two different XLA programs), and exact zeros where pruned.
  params = _params()
  grads = _grad_sequence(14)
  tx = seven_jax.seven_mask(
    optax.adamw(0.05, weight_decay=0.1),
    sparsity=0.5,
    start_step=1,
    pruning_steps=5,
    prunable=PRUNABLE,
  )
  step = jax.jit(
    lambda tx_, g, s, p: (lambda u, s2: (optax.apply_updates(p, u), s2))(*tx_.update(g, s, p)),
    static_argnums=0,
  )
  state = tx.init(params)
  for g in grads[:8]:  # the window ends at step 5
    params, state = step(tx, g, state, params)
  frozen_tx = seven_jax.fixed_mask(optax.adamw(0.05, weight_decay=0.1), seven_jax.masks(state))
  frozen = seven_jax.freeze(state)
  assert isinstance(frozen, seven_jax.FixedMaskState)
  assert sum(x.size for x in jax.tree.leaves(frozen)) < sum(x.size for x in jax.tree.leaves(state))
  p_seven, p_frozen = params, params
  for g in grads[8:]:
    p_seven, state = step(tx, g, state, p_seven)
    p_frozen, frozen = step(frozen_tx, g, frozen, p_frozen)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), p_seven, p_frozen
  )
  jax.tree.map(np.testing.assert_array_equal, seven_jax.masks(state), seven_jax.masks(frozen))
  for k in ("a", "b", "d"):
    assert np.all(np.asarray(p_frozen[k])[~np.asarray(frozen.masks[k])] == 0)
  # Inside a chain too; and a state without a pruning state is an error.
  chained = (optax.EmptyState(), state)
  assert isinstance(seven_jax.freeze(chained)[1], seven_jax.FixedMaskState)
  with pytest.raises(ValueError, match="No seven_mask state"):
    seven_jax.freeze(optax.adamw(0.1).init(params))
