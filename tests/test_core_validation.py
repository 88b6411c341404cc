"""Misuse of the core entry points: a table of bad inputs, each with the error
type and the argument its message must name; injected values out of range;
the default prunable set; non-finite statistics; the import-light core."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import seven_jax

PARAMS = {"w": jnp.asarray(np.random.default_rng(0).standard_normal((8, 6)), jnp.float32)}


def _loss(p, batch):
  return jnp.sum((batch @ p["w"]) ** 2)


BATCHES = [jnp.ones((2, 8))] * 4

ENTRY_POINTS = {
  "seven_mask": lambda **kw: seven_jax.seven_mask(optax.sgd(0.1), **kw),
  "pruning_mask": lambda **kw: seven_jax.pruning_mask(
    optax.sgd(0.1), kw.pop("method", "seven"), **{"sparsity": 0.5, **kw}
  ),
  "prune_before_finetuning": lambda **kw: seven_jax.prune_before_finetuning(
    _loss, PARAMS, BATCHES, **{"sparsity": 0.5, "steps": 2, **kw}
  ),
}

# (entry points, kwargs, error type, text the message must contain)
CASES = [
  (("seven_mask", "pruning_mask"), dict(start_step=2.5), TypeError, "start_step"),
  (("seven_mask", "pruning_mask"), dict(start_step="10"), TypeError, "start_step"),
  (("seven_mask", "pruning_mask"), dict(start_step=None), TypeError, "start_step"),
  (("seven_mask", "pruning_mask"), dict(start_step=-3), ValueError, "start_step"),
  (("seven_mask", "pruning_mask"), dict(pruning_steps=10 / 3), TypeError, "pruning_steps"),
  (("seven_mask", "pruning_mask"), dict(pruning_steps=1), ValueError, "pruning_steps"),
  (("seven_mask", "pruning_mask"), dict(pruning_steps=True), TypeError, "pruning_steps"),
  (("seven_mask", "pruning_mask"), dict(update_every=1.5), TypeError, "update_every"),
  (("seven_mask", "pruning_mask"), dict(update_every=0), ValueError, "update_every"),
  (("seven_mask", "pruning_mask"), dict(resurrect="no"), TypeError, "resurrect"),
  (
    ("seven_mask", "pruning_mask", "prune_before_finetuning"),
    dict(sparsity=1.5),
    ValueError,
    "sparsity",
  ),
  (
    ("seven_mask", "pruning_mask", "prune_before_finetuning"),
    dict(sparsity="0.5"),
    TypeError,
    "sparsity",
  ),
  (
    ("seven_mask", "pruning_mask", "prune_before_finetuning"),
    dict(sparsity=float("nan")),
    ValueError,
    "sparsity",
  ),
  (("seven_mask", "pruning_mask", "prune_before_finetuning"), dict(b1=1.0), ValueError, "b1"),
  (("seven_mask", "pruning_mask", "prune_before_finetuning"), dict(b2="0.9"), TypeError, "b2"),
  (
    ("seven_mask", "pruning_mask", "prune_before_finetuning"),
    dict(correction="no"),
    TypeError,
    "correction",
  ),
  (
    ("seven_mask", "pruning_mask", "prune_before_finetuning"),
    dict(scope="layer"),
    ValueError,
    "scope",
  ),
  (
    ("seven_mask", "pruning_mask", "prune_before_finetuning"),
    dict(ties="some"),
    ValueError,
    "ties",
  ),
  (("seven_mask", "pruning_mask"), dict(stats_dtype="float16"), ValueError, "stats_dtype"),
  (("pruning_mask",), dict(schedule="linear"), ValueError, "schedule"),
  (("pruning_mask",), dict(method="nope"), ValueError, "nope"),
  (("prune_before_finetuning",), dict(method="seven_pre", b1=1.0), ValueError, "b1"),
  (("prune_before_finetuning",), dict(steps=2.5), TypeError, "steps"),
  (("prune_before_finetuning",), dict(batches_per_step=0), ValueError, "batches_per_step"),
  (("prune_before_finetuning",), dict(resurrect="no"), TypeError, "resurrect"),
  (("prune_before_finetuning",), dict(method="nope"), ValueError, "nope"),
]
FLAT_CASES = [(entry, kw, err, text) for entries, kw, err, text in CASES for entry in entries]


@pytest.mark.parametrize(
  "entry,kwargs,error,text",
  FLAT_CASES,
  ids=[f"{e}-{'-'.join(f'{k}={v!r}' for k, v in kw.items())}" for e, kw, _, _ in FLAT_CASES],
)
def test_bad_input_raises_a_clear_error(entry, kwargs, error, text):
  with pytest.raises(error, match=text):
    tx = ENTRY_POINTS[entry](**kwargs)
    if entry != "prune_before_finetuning":
      tx.init(PARAMS)  # (the checks are eager: init is never reached)


@pytest.mark.parametrize(
  "masks,error,text",
  [
    ({"w": np.ones((8, 5), bool)}, ValueError, "mask of 'w' has shape"),
    ({"v": np.ones((8, 6), bool)}, ValueError, "structure of params"),
    ({"w": np.ones((8, 6), np.float32)}, TypeError, "mask of 'w'"),
  ],
)
def test_fixed_mask_bad_masks(masks, error, text):
  with pytest.raises(error, match=text):
    seven_jax.fixed_mask(optax.sgd(0.1), masks).init(PARAMS)


def test_complex_prunable_leaf_names_the_leaf():
  params = {"z": jnp.ones((4, 4), jnp.complex64), "w": jnp.ones((4, 4))}
  # By default complex leaves are not pruned (and are trained as usual).
  tx = seven_jax.seven_mask(optax.sgd(0.1), sparsity=0.5, start_step=0, pruning_steps=2)
  state = tx.init(params)
  updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
  assert updates["z"].dtype == jnp.complex64 and bool(np.all(seven_jax.masks(state)["z"]))
  with pytest.raises(TypeError, match="prunable leaf 'z' is complex64"):
    seven_jax.seven_mask(optax.sgd(0.1), prunable={"z": True, "w": True}).init(params)


def _injected_run(**hps):
  base = dict(sparsity=0.5, start_step=0, pruning_steps=4, b1=0.8, b2=0.9)
  tx = optax.inject_hyperparams(seven_jax.seven_mask, static_args=("prunable",))(
    optax.sgd(0.0), **base
  )
  state = tx.init(PARAMS)
  # Inject the values as a user (or a schedule) does, after init: traced
  # under jit, they cannot be checked eagerly.
  for name, value in hps.items():
    state.hyperparams[name] = jnp.asarray(value, state.hyperparams[name].dtype)
  step = jax.jit(tx.update)
  rng = np.random.default_rng(1)
  for _ in range(6):
    g = {"w": jnp.asarray(rng.standard_normal((8, 6)), jnp.float32)}
    _, state = step(g, state, PARAMS)
  return np.asarray(seven_jax.masks(state)["w"])


def test_injected_values_out_of_range_are_clipped():
  # Documented in seven_mask: injected values cannot raise under jit; they
  # are clipped into the valid range where they are used.
  d = 48
  assert _injected_run(sparsity=1.5).sum() == 1  # [0, 1 - 1/D]: one weight kept
  assert _injected_run(sparsity=-0.5).sum() == d
  np.testing.assert_array_equal(_injected_run(start_step=-3), _injected_run(start_step=0))
  np.testing.assert_array_equal(_injected_run(pruning_steps=1), _injected_run(pruning_steps=2))
  # b1 = 1.0 becomes the largest float32 below 1: pruning still happens.
  assert _injected_run(b1=1.0).sum() == d // 2


def test_stats_dtype_by_name_works_under_inject_hyperparams():
  import warnings

  with warnings.catch_warnings():
    warnings.simplefilter("error")  # numpy's "will result in an error" warning
    tx = optax.inject_hyperparams(seven_jax.seven_mask, static_args=("prunable",))(
      optax.sgd(0.1), sparsity=0.5, start_step=0, pruning_steps=3, stats_dtype="bfloat16"
    )
    state = tx.init(PARAMS)
    _, state = tx.update(jax.tree.map(jnp.ones_like, PARAMS), state, PARAMS)
  assert seven_jax.find_state(state).grad_ema["w"].dtype == jnp.bfloat16
  # A dtype object is callable: inject_hyperparams takes it for a schedule,
  # which gets a clear error.
  tx = optax.inject_hyperparams(seven_jax.seven_mask, static_args=("prunable",))(
    optax.sgd(0.1), sparsity=0.5, start_step=0, pruning_steps=3, stats_dtype=jnp.bfloat16
  )
  with pytest.raises(ValueError, match="stats_dtype"), warnings.catch_warnings():
    warnings.simplefilter("ignore")
    tx.init(PARAMS)


def test_default_prunable_leaves_embeddings_out():
  transformers = pytest.importorskip("transformers")
  config = transformers.BertConfig(
    vocab_size=64,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=16,
  )
  model = transformers.FlaxBertModel(config, seed=0, _do_init=True)
  spec = seven_jax.default_prunable(model.params)
  flat = jax.tree_util.tree_flatten_with_path(spec)[0]
  paths = {"/".join(str(getattr(k, "key", k)) for k in path): v for path, v in flat}
  embeddings = [p for p in paths if "embeddings" in p and p.endswith("embedding")]
  assert embeddings and not any(paths[p] for p in embeddings), embeddings
  kernels = [p for p in paths if p.endswith("kernel")]
  assert kernels and all(paths[p] for p in kernels)
  # Global pruning now lands on the kernels only (one window step of a
  # 2-step cubic ramp keeps 0.5 + 0.5 / 2**3 of them).
  tx = seven_jax.pruning_mask(optax.sgd(0.0), "magnitude", sparsity=0.5, pruning_steps=2)
  state = tx.init(model.params)
  _, state = tx.update(jax.tree.map(jnp.zeros_like, model.params), state, model.params)
  report = seven_jax.sparsity_report(seven_jax.masks(state), prunable=spec)
  assert abs(report.sparsity - (1 - (0.5 + 0.5 / 8))) < 0.01
  assert all(row.kept == row.total for row in report.leaves if "embedding" in row.path)


@pytest.mark.parametrize("method", ["platon", "platon_seven_repo", "seven"])
def test_nan_gradients_do_not_poison_the_statistics(method):
  # adam turns a NaN gradient into NaN updates, so W + u is NaN for one step;
  # the statistics keep their previous values and recover.
  params = {"w": jnp.asarray(np.random.default_rng(2).standard_normal((6, 5)), jnp.float32)}
  tx = seven_jax.pruning_mask(
    optax.adam(1e-2), method, sparsity=0.5, pruning_steps=10, update_every=1
  )
  state = tx.init(params)
  rng = np.random.default_rng(3)
  for step in range(6):
    g = rng.standard_normal((6, 5)).astype(np.float32)
    if step == 1:
      g[0, 0] = np.nan
    _, state = tx.update({"w": jnp.asarray(g)}, state, params)
  st = seven_jax.find_state(state)
  for leaf in jax.tree.leaves((st.stats, st.scores)):
    assert np.all(np.isfinite(np.asarray(leaf)))


def test_import_is_light():
  code = (
    "import sys, seven_jax\n"
    "heavy = ['seven_jax.models', 'seven_jax.data', 'seven_jax.checkpoint', 'seven_jax.export',"
    " 'orbax', 'transformers', 'tensorflow_datasets', 'tensorflow']\n"
    "loaded = [m for m in heavy if any(k == m or k.startswith(m + '.') for k in sys.modules)]\n"
    "assert not loaded, loaded\n"
    "assert seven_jax.CheckpointManager.__name__ == 'CheckpointManager'\n"
    "assert 'orbax' in ' '.join(sys.modules)\n"
    "for name in seven_jax.__all__: getattr(seven_jax, name)\n"
    "print('ok')\n"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
