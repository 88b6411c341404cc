"""The optax contract, one matrix for every dynamic method.

In the manner of optax's shared optimizer tests: every method joins with one
entry of :data:`METHODS` (a factory ``inner -> transformation``), and every
case runs on every entry: jit without recompilation, ``optax.chain`` /
``optax.multi_transform`` / ``optax.masked``, ``optax.inject_hyperparams``,
``optax.MultiSteps``, bf16/f16/f32 params, x64, ``optax.tree.map_params``
with shardings, ``optax.lookahead`` and ``optax.contrib.schedule_free``
inside. The invariant checked everywhere: after ``optax.apply_updates``
every pruned weight is exactly 0 where the user evaluates, and masks shrink
to the scheduled count.
"""

import math
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import seven_jax

SHAPES = {"w": (8, 6), "v": (6, 4), "b": (6,)}
PRUNABLE = {"w": True, "v": True, "b": False}
TOTAL = 8 * 6 + 6 * 4
SPARSITY, N = 0.5, 4  # pruning_steps: the window is steps 0..2
FINAL_KEPT = math.floor((1 - SPARSITY + SPARSITY / N**3) * TOTAL)


def _kw(**extra):
  return {**dict(sparsity=SPARSITY, start_step=0, pruning_steps=N, prunable=PRUNABLE), **extra}


# One entry per dynamic method: name -> factory(inner, **overrides).
METHODS = {"seven_mask": lambda inner, **kw: seven_jax.seven_mask(inner, **_kw(**kw))}
for _name in seven_jax.methods("dynamic"):
  METHODS[_name] = lambda inner, _m=_name, **kw: seven_jax.pruning_mask(
    inner, _m, update_every=1, **_kw(**kw)
  )
NAMES = sorted(METHODS)


def _params(dtype=jnp.float32, seed=0):
  rng = np.random.default_rng(seed)
  return {k: jnp.asarray(rng.standard_normal(s), dtype) for k, s in SHAPES.items()}


def _grads(steps, dtype=jnp.float32, seed=1):
  rng = np.random.default_rng(seed)
  return [
    {k: jnp.asarray(rng.standard_normal(s), dtype) for k, s in SHAPES.items()} for _ in range(steps)
  ]


def _check_pruned(params, masks, kept=FINAL_KEPT):
  assert sum(int(np.asarray(masks[k]).sum()) for k in ("w", "v")) == kept
  assert bool(np.all(np.asarray(masks["b"])))
  for k in ("w", "v"):
    w = np.asarray(params[k].astype(jnp.float32))
    assert np.all(w[~np.asarray(masks[k])] == 0.0)


def _run(tx, params, grads, jit=True):
  state = tx.init(params)
  update = jax.jit(tx.update) if jit else tx.update
  for g in grads:
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
  return params, state, updates


@pytest.mark.parametrize("name", NAMES)
def test_jit_does_not_recompile(name):
  tx = METHODS[name](optax.adam(1e-2))
  params = _params()
  state = tx.init(params)
  update = jax.jit(tx.update)
  for g in _grads(5):
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
  assert update._cache_size() == 1
  _check_pruned(params, seven_jax.masks(state))


@pytest.mark.parametrize("name", NAMES)
def test_chain_multi_transform_and_masked(name):
  params, grads = _params(), _grads(4)
  chained = optax.chain(optax.clip_by_global_norm(10.0), METHODS[name](optax.sgd(0.1)))
  p, state, _ = _run(chained, params, grads)
  _check_pruned(p, seven_jax.masks(state))
  # Only the kernels go through the pruning transformation; the bias is
  # handled by plain sgd (multi_transform), or left alone (masked).
  labels = {"w": "prune", "v": "prune", "b": "plain"}
  only_kernels = {"w": True, "v": True}
  multi = optax.multi_transform(
    {"prune": METHODS[name](optax.sgd(0.1), prunable=only_kernels), "plain": optax.sgd(0.1)},
    labels,
  )
  p, state, _ = _run(multi, params, grads)
  m = seven_jax.masks(state)
  for k in ("w", "v"):
    assert np.all(np.asarray(p[k])[~np.asarray(m[k])] == 0.0)
  assert sum(int(np.asarray(m[k]).sum()) for k in ("w", "v")) == FINAL_KEPT
  masked = optax.masked(
    METHODS[name](optax.sgd(0.1), prunable=only_kernels), {"w": True, "v": True, "b": False}
  )
  p, state, _ = _run(masked, params, grads)
  m = seven_jax.masks(state)
  for k in ("w", "v"):
    assert np.all(np.asarray(p[k])[~np.asarray(m[k])] == 0.0)
  assert sum(int(np.asarray(m[k]).sum()) for k in ("w", "v")) == FINAL_KEPT


@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams_gives_the_same_masks(name):
  params, grads = _params(), _grads(4)
  plain_p, plain_state, _ = _run(METHODS[name](optax.sgd(0.1)), params, grads)
  factory = METHODS[name]
  injected = optax.inject_hyperparams(
    lambda inner, sparsity: factory(inner, sparsity=sparsity), static_args=()
  )(optax.sgd(0.1), sparsity=SPARSITY)
  p, state, _ = _run(injected, params, grads)
  jax.tree.map(np.testing.assert_array_equal, seven_jax.masks(state), seven_jax.masks(plain_state))
  jax.tree.map(np.testing.assert_array_equal, p, plain_p)
  assert float(state.hyperparams["sparsity"]) == SPARSITY


@pytest.mark.parametrize("name", NAMES)
def test_multisteps_prunes_once_per_accumulated_step(name):
  params, grads = _params(), _grads(8)
  tx = optax.MultiSteps(METHODS[name](optax.sgd(0.1)), every_k_schedule=2)
  p, state, _ = _run(tx, params, grads)
  assert int(seven_jax.find_state(state).count) == 4
  _check_pruned(p, seven_jax.masks(state))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
@pytest.mark.parametrize("name", NAMES)
def test_param_dtypes_are_kept(name, dtype):
  params, grads = _params(dtype), _grads(4, dtype)
  p, state, updates = _run(METHODS[name](optax.sgd(0.1)), params, grads)
  assert all(u.dtype == dtype for u in jax.tree.leaves(updates))
  assert all(x.dtype == dtype for x in jax.tree.leaves(p))
  _check_pruned(p, seven_jax.masks(state))
  st = seven_jax.find_state(state)
  assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(st.scores))


@pytest.mark.parametrize("name", NAMES)
def test_map_params_with_shardings(name):
  tx = METHODS[name](optax.adam(1e-2))
  params = _params()
  state = tx.init(params)
  mesh = jax.make_mesh((1,), ("fsdp",), axis_types=(jax.sharding.AxisType.Auto,))
  specs = {"w": P("fsdp", None), "v": P(None, "fsdp"), "b": P()}
  shardings = {k: NamedSharding(mesh, s) for k, s in specs.items()}
  mapped = optax.tree.map_params(
    tx,
    lambda _, s: s,
    state,
    shardings,
    transform_non_params=lambda _: NamedSharding(mesh, P()),
    is_leaf=lambda x: isinstance(x, optax.MaskedNode),
  )
  st = seven_jax.find_state(mapped)
  for tree in (st.masks, st.scores, *st.stats):
    assert {k: tree[k].spec for k in SHAPES} == specs
  placed = jax.device_put(state, mapped)
  assert seven_jax.find_state(placed).masks["w"].sharding.spec == specs["w"]
  # (One device: every sharding is equivalent; tests/test_sharding.py checks
  # the shardings after steps on 4 and 8 devices.)
  _, placed = jax.jit(tx.update)(_grads(1)[0], placed, params)
  assert seven_jax.find_state(placed).masks["w"].sharding.is_equivalent_to(shardings["w"], 2)


@pytest.mark.parametrize("name", NAMES)
def test_lookahead_and_schedule_free_inside(name):
  grads = _grads(4)
  tx = METHODS[name](optax.lookahead(optax.adam(1e-2), sync_period=2, slow_step_size=0.5))
  lp, state, _ = _run(tx, optax.LookaheadParams.init_synced(_params()), grads)
  m = seven_jax.masks(state)
  _check_pruned(lp.fast, m)
  _check_pruned(lp.slow, m)  # the weights lookahead evaluates
  sf = optax.contrib.schedule_free(optax.sgd(1.0), learning_rate=0.1, b1=0.9)
  p, state, _ = _run(METHODS[name](sf), _params(), grads)
  m = seven_jax.masks(state)
  _check_pruned(p, m)
  inner = seven_jax.find_state(state).inner_state
  _check_pruned(optax.contrib.schedule_free_eval_params(inner, p), m)


X64_SCRIPT = """
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp, numpy as np, optax
import tests.test_optax_matrix as t
for dtype in (jnp.float32, jnp.float64):
  for name in t.NAMES:
    params, grads = t._params(dtype), t._grads(4, dtype)
    p, state, updates = t._run(t.METHODS[name](optax.adam(1e-2)), params, grads)
    assert all(u.dtype == dtype for u in jax.tree.leaves(updates)), name
    assert seven_jax_count_dtype(state) == jnp.int32
    t._check_pruned(p, t.seven_jax.masks(state))
print("ok")
""".replace("seven_jax_count_dtype(state)", "t.seven_jax.find_state(state).count.dtype")


def test_x64_with_float32_and_float64_params():
  out = subprocess.run(
    [sys.executable, "-c", X64_SCRIPT],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=pathlib.Path(__file__).resolve().parents[1],
  )
  assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
