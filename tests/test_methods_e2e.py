"""End to end: registered methods prune to the exact sparsity, and fine-tuning
keeps the pruned weights exactly zero.

Two models: a small MLP classifier (every method, every option) and the
project's own NNX BERT (``seven_jax.models.bert``, 2 layers, 32 wide, random
init) with its SEVEN prunable preset. Counts are taken with numpy from the
masks and from the weights themselves, not from ``sparsity_report``.

The default run keeps every method once on the MLP (global budget, then
``fixed_mask`` fine-tuning) and a few representative cases of the other
options and of BERT; the full method x option sweep is marked ``slow``
(``python -m pytest -m slow``)."""

import math

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import seven_jax
from tests._helpers import classification_batches, mlp_apply, mlp_loss, mlp_params, tiny_bert

D_IN, D_H, D_OUT = 8, 16, 4
SPARSITY = 0.5
TOTAL = D_IN * D_H + D_H * D_OUT
KERNELS = [("l1", "kernel"), ("l2", "kernel")]
PRE_STEPS = {"synflow": 3, "force": 3, "iter_snip": 3, "snip": 2, "grasp": 2}

# Pre-pruning names that only mean "this method, before fine-tuning": one
# test checks they give their method's masks; the sweeps skip them.
ALIASES = {"seven_pre": "seven", "magnitude_pre": "magnitude"}
PRE_METHODS = [m for m in seven_jax.methods("pre") if m not in ALIASES]
DYNAMIC_METHODS = seven_jax.methods("dynamic")


def _sweep(methods, default):
  """``methods`` as parameters; those outside ``default`` are marked slow."""
  assert set(default) <= set(methods), sorted(set(default) - set(methods))
  return [m if m in default else pytest.param(m, marks=pytest.mark.slow) for m in methods]


def _mlp():
  return mlp_params(D_IN, D_H, D_OUT, seed=0, scale=0.5)


def _batches(n):
  return classification_batches(n, D_IN, D_OUT, seed=1, size=32)


def _kept(masks):
  return sum(int(np.asarray(masks[a][b]).sum()) for a, b in KERNELS)


def _check_nm(masks, n, m):
  for a, b in KERNELS:
    mk = np.asarray(masks[a][b])
    assert np.all(mk.reshape(mk.shape[0] // m, m, -1).sum(1) == n)


def _mlp_pre_masks(method, option, batches):
  kwargs = dict(apply_fn=mlp_apply, input_shape=(1, D_IN)) if method == "synflow" else {}
  if option == "2:4":
    kwargs["pattern"] = "2:4"
  else:
    kwargs.update(scope=option, sparsity=SPARSITY)
  return seven_jax.prune_before_finetuning(
    mlp_loss, _mlp(), iter(batches), method=method, steps=PRE_STEPS.get(method, 4), **kwargs
  )


# ------------------------------------------------------------------ MLP


@pytest.mark.parametrize("method", PRE_METHODS)
def test_pre_pruning_global_then_fixed_mask(method):
  params, batches = _mlp(), _batches(12)
  masks = _mlp_pre_masks(method, "global", batches)
  assert _kept(masks) == int((1 - SPARSITY) * TOTAL)
  tx = seven_jax.fixed_mask(optax.adam(1e-2), masks)
  state = tx.init(params)
  step = jax.jit(lambda p, s, b: tx.update(jax.grad(mlp_loss)(p, b), s, p))
  start = jax.tree.map(np.asarray, params)
  for b in batches[:4]:
    updates, state = step(params, state, b)
    params = optax.apply_updates(params, updates)
  for a, b in KERNELS:
    w, m = np.asarray(params[a][b]), np.asarray(masks[a][b])
    assert np.all(w[~m] == 0.0)
    assert np.mean(w[m] != start[a][b][m]) > 0.5  # the kept weights did train
  assert np.isfinite(float(mlp_loss(params, batches[0])))


@pytest.mark.parametrize("option", ["per_leaf", "2:4"])
@pytest.mark.parametrize("method", _sweep(PRE_METHODS, {"seven", "snip", "magnitude"}))
def test_pre_pruning_per_leaf_and_n_m(method, option):
  masks = _mlp_pre_masks(method, option, _batches(12))
  if option == "2:4":
    _check_nm(masks, 2, 4)
  else:
    for a, b in KERNELS:
      assert int(np.asarray(masks[a][b]).sum()) == int(0.5 * masks[a][b].size)


def test_pre_pruning_aliases_give_their_methods_masks():
  batches = _batches(12)
  want = {name: _mlp_pre_masks(name, "global", batches) for name in set(ALIASES.values())}
  for alias, name in ALIASES.items():
    assert alias in seven_jax.methods("pre") and seven_jax.method_kind(alias) == "pre"
    got = _mlp_pre_masks(alias, "global", batches)
    for a, b in KERNELS:
      np.testing.assert_array_equal(np.asarray(got[a][b]), np.asarray(want[name][a][b]))
  # The aliased methods differ from each other, so the comparison above can fail.
  assert any(
    not np.array_equal(np.asarray(want["seven"][a][b]), np.asarray(want["magnitude"][a][b]))
    for a, b in KERNELS
  )


def _dynamic_default(option):
  # Every dynamic method with the global budget; the others options on SEVEN.
  return DYNAMIC_METHODS if option == "global" else {"seven"}


@pytest.mark.parametrize(
  "method, option",
  [
    (m, o) if m in _dynamic_default(o) else pytest.param(m, o, marks=pytest.mark.slow)
    for o in ("global", "per_leaf", "2:4")
    for m in DYNAMIC_METHODS
  ],
)
def test_dynamic_pruning_while_fine_tuning(method, option):
  params, batches = _mlp(), _batches(10)
  n_iter = 7
  kwargs = dict(pattern="2:4") if option == "2:4" else dict(scope=option, sparsity=SPARSITY)
  tx = seven_jax.pruning_mask(
    optax.adam(1e-2), method, start_step=2, pruning_steps=n_iter, **kwargs
  )
  state = tx.init(params)
  step = jax.jit(lambda p, s, b: tx.update(jax.grad(mlp_loss)(p, b), s, p))
  for b in batches:
    updates, state = step(params, state, b)
    params = optax.apply_updates(params, updates)
  masks = seven_jax.masks(state)
  # Spec 2.3: the last selection (p = N - 2) keeps r_f + (1 - r_f) / N**3.
  ratio = (1 - SPARSITY) + SPARSITY / n_iter**3
  if option == "2:4":
    _check_nm(masks, 2, 4)
  elif option == "per_leaf":
    for a, b in KERNELS:
      assert int(np.asarray(masks[a][b]).sum()) == math.floor(ratio * masks[a][b].size)
  else:
    assert _kept(masks) == math.floor(ratio * TOTAL)
  for a, b in KERNELS:
    assert np.all(np.asarray(params[a][b])[~np.asarray(masks[a][b])] == 0.0)
  assert np.isfinite(float(mlp_loss(params, batches[0])))


# ------------------------------------------------- the project's NNX BERT


@pytest.fixture(scope="module")
def bert_model():
  return tiny_bert(seed=0)


def _prunable_pairs(tree, prunable):
  """[(flag, subtree of ``tree`` at that parameter)] for every parameter.

  ``tree`` (masks or params) may hold any node at non-prunable leaves (an
  all-True mask, ``optax.MaskedNode()``, ...): it is cut at the leaves of the
  bool tree ``prunable``, never flattened below them.
  """
  flags, treedef = jax.tree.flatten(prunable)
  return list(zip(flags, treedef.flatten_up_to(tree)))


def _bert_counts(masks, params, prunable):
  """(kept by the masks, exactly zero in the weights, total) over prunable
  leaves; every non-prunable leaf is fully kept and has no zeroed weight."""
  kept = zeros = total = 0
  for (flag, m), (_, w) in zip(_prunable_pairs(masks, prunable), _prunable_pairs(params, prunable)):
    w = np.asarray(w)
    if flag:
      m = np.asarray(m)
      assert m.shape == w.shape and m.dtype == bool
      assert np.all(w[~m] == 0.0)
      kept, zeros, total = kept + int(m.sum()), zeros + int(np.sum(w == 0.0)), total + w.size
    else:
      assert all(np.all(np.asarray(x)) for x in jax.tree.leaves(m)), "a non-prunable leaf is masked"
  return kept, zeros, total


@pytest.mark.parametrize("method", _sweep(PRE_METHODS, {"seven", "snip", "synflow"}))
def test_tiny_bert_pre_pruning_then_fixed_mask(bert_model, method):
  tb = bert_model
  kwargs = (
    dict(apply_fn=tb.apply, input_shape=(1, tb.seq_len), input_dtype=np.int32)
    if method == "synflow"
    else {}
  )
  masks = seven_jax.prune_before_finetuning(
    tb.loss,
    tb.params,
    iter(tb.batches),
    method=method,
    sparsity=0.5,
    steps=PRE_STEPS.get(method, 4),
    prunable=tb.prunable,
    **kwargs,
  )
  tx = seven_jax.fixed_mask(optax.adamw(1e-3), masks)
  params, state = tb.params, tx.init(tb.params)
  step = jax.jit(lambda p, s, b: tx.update(jax.grad(tb.loss)(p, b), s, p))
  for b in tb.batches[:3]:
    updates, state = step(params, state, b)
    params = optax.apply_updates(params, updates)
  kept, zeros, total = _bert_counts(masks, params, tb.prunable)
  assert total == 2 * (4 * 32 * 32 + 2 * 32 * 64) + 32 * 32  # encoder + pooler kernels
  assert kept == total // 2 and zeros == total - kept
  assert np.isfinite(float(tb.loss(params, tb.batches[0])))


@pytest.mark.parametrize("method", _sweep(DYNAMIC_METHODS, {"seven"}))
def test_tiny_bert_dynamic_with_nnx_optimizer(bert_model, method):
  """The README path: nnx.Optimizer(model, pruning_mask(...), wrt=nnx.Param)."""
  from seven_jax.models import bert

  tb = bert_model
  model = tb.model(tb.params)
  n_iter = 6
  tx = seven_jax.pruning_mask(
    optax.adamw(1e-3),
    method,
    sparsity=0.5,
    start_step=1,
    pruning_steps=n_iter,
    prunable=tb.prunable,
  )
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, ids, labels):
    grads = nnx.grad(lambda m: bert.sequence_classification_loss(m(ids), labels))(model)
    optimizer.update(model, grads)

  for ids, labels in tb.batches[:8]:
    step(model, optimizer, ids, labels)
  params = nnx.as_pure(nnx.state(model, nnx.Param))
  kept, zeros, total = _bert_counts(seven_jax.masks(optimizer.opt_state), params, tb.prunable)
  assert kept == math.floor((0.5 + 0.5 / n_iter**3) * total)
  assert zeros == total - kept
