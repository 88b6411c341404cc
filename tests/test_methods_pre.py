"""prune_before_finetuning and fixed_mask: every pre-pruning score against an
independent reference on a tiny MLP, exact sparsity, N:M, bad input."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import seven_jax
from seven_jax import prepruning
from seven_jax.engine import TIES_SUPPORTED
from tests._helpers import mlp_apply, mlp_loss, mlp_params
from tests._reference import seven_loop

# Parity with the official loop keeps every tie at the threshold.
KEEP_ALL_TIES = {"ties": "keep_all"} if TIES_SUPPORTED else {}

D_IN, D_H, D_OUT = 8, 8, 4


def _mlp(seed=0):
  return mlp_params(D_IN, D_H, D_OUT, seed=seed, scale=0.7, bias_scale=0.1)


apply = mlp_apply
loss = mlp_loss


def _batches(n, seed=1, size=16):
  rng = np.random.default_rng(seed)
  return [
    (
      jnp.asarray(rng.standard_normal((size, D_IN)), jnp.float32),
      jnp.asarray(rng.integers(0, D_OUT, size), jnp.int32),
    )
    for _ in range(n)
  ]


KERNELS = [("l1", "kernel"), ("l2", "kernel")]
TOTAL = D_IN * D_H + D_H * D_OUT


def _kernels(tree):
  return [np.asarray(tree[a][b]) for a, b in KERNELS]


def _topk(scores, k, masks=None, fill=0.0):
  """Sort-based global top-k reference (ties at the k-th kept)."""
  if masks is not None:
    scores = [np.where(m, s, fill) for s, m in zip(scores, masks)]
  tau = np.sort(np.concatenate([s.ravel() for s in scores]))[::-1][k - 1]
  kept = [s >= tau for s in scores]
  return kept if masks is None else [k_ & m for k_, m in zip(kept, masks)]


# --------------------------------------------------------- numpy references


def _np_loss(k1, b1, k2, b2, x, y):
  h = np.tanh(x @ k1 + b1)
  z = h @ k2 + b2
  z = z - z.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  return -np.mean(logp[np.arange(len(y)), y])


def test_snip_equals_first_order_loss_change_per_weight():
  params, batches = _mlp(), _batches(2)
  p64 = {a: {b: np.asarray(v, np.float64) for b, v in d.items()} for a, d in params.items()}
  h = 1e-5
  expected = []
  for a, _ in KERNELS:
    w = p64[a]["kernel"]
    s = np.zeros_like(w)
    for idx in np.ndindex(w.shape):
      total = 0.0
      for x, y in batches:  # d/dc L(c * w_idx) at c = 1, mean over batches
        args = []
        for sign in (1, -1):
          q = {k: {kk: vv.copy() for kk, vv in d.items()} for k, d in p64.items()}
          q[a]["kernel"][idx] *= 1 + sign * h
          args.append(
            _np_loss(
              q["l1"]["kernel"],
              q["l1"]["bias"],
              q["l2"]["kernel"],
              q["l2"]["bias"],
              np.asarray(x, np.float64),
              np.asarray(y),
            )
          )
        total += (args[0] - args[1]) / (2 * h)
      s[idx] = abs(total / len(batches))
    expected.append(s)
  got = prepruning.snip_scores(loss, params, batches, lambda t: [t[a][b] for a, b in KERNELS])
  for g, e in zip(got, expected):
    np.testing.assert_allclose(np.asarray(g), e, rtol=2e-3, atol=1e-6)
  masks = seven_jax.prune_before_finetuning(
    loss, params, batches, method="snip", steps=2, sparsity=0.6
  )
  for m, e in zip(_kernels(masks), _topk(expected, int(0.4 * TOTAL))):
    np.testing.assert_array_equal(m, e)


def test_grasp_equals_explicit_hessian_times_gradient():
  params, batches = _mlp(2), _batches(2, seed=3)
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  mean_loss = lambda v: sum(loss(unravel(v), b) for b in batches) / len(batches)
  g = jax.grad(mean_loss)(flat)
  hess = jax.hessian(mean_loss)(flat)
  # Restrict the Hessian to the prunable weights: zero the gradient elsewhere.
  is_kernel = (
    jax.flatten_util.ravel_pytree(
      {
        "l1": {"kernel": jnp.ones((D_IN, D_H)), "bias": jnp.zeros(D_H)},
        "l2": {"kernel": jnp.ones((D_H, D_OUT)), "bias": jnp.zeros(D_OUT)},
      }
    )[0]
    > 0
  )
  hg = np.asarray(hess) @ np.where(is_kernel, np.asarray(g), 0.0)
  s = unravel(jnp.asarray(-np.asarray(flat) * hg))
  expected = [np.asarray(s[a][b]) for a, b in KERNELS]
  ctx_leaves = lambda t: [t[a][b] for a, b in KERNELS]

  def with_kernels(t, leaves):
    t = jax.tree.map(lambda x: x, t)
    for (a, b), leaf in zip(KERNELS, leaves):
      t[a][b] = leaf
    return t

  got = prepruning.grasp_scores(loss, params, batches, ctx_leaves, with_kernels)
  for gl, e in zip(got, expected):
    np.testing.assert_allclose(np.asarray(gl), e, rtol=1e-4, atol=1e-6)
  masks = seven_jax.prune_before_finetuning(
    loss, params, batches, method="grasp", steps=2, sparsity=0.7
  )
  # GraSP prunes the highest S: the kept ones are the lowest.
  want = _topk([-e for e in expected], int(0.3 * TOTAL))
  for m, e in zip(_kernels(masks), want):
    np.testing.assert_array_equal(m, e)


def _linear(p, x):
  return x @ p["w1"] @ p["w2"]


@pytest.mark.parametrize("steps", [1, 3])
def test_synflow_matches_the_closed_form_of_a_linear_net(steps):
  rng = np.random.default_rng(4)
  params = {
    "w1": jnp.asarray(rng.standard_normal((6, 5)), jnp.float32),
    "w2": jnp.asarray(rng.standard_normal((5, 3)), jnp.float32),
  }
  sparsity = 0.6
  total = 6 * 5 + 5 * 3
  masks = [np.ones((6, 5), bool), np.ones((5, 3), bool)]
  for k in range(steps):
    a1 = np.abs(np.asarray(params["w1"], np.float64)) * masks[0]
    a2 = np.abs(np.asarray(params["w2"], np.float64)) * masks[1]
    # R = 1^T |W1| |W2| 1: dR/dW1[i,j] = (|W2| 1)_j, dR/dW2[j,l] = (1^T |W1|)_j.
    s1 = a1 * a2.sum(1)[None, :]
    s2 = a2 * a1.sum(0)[:, None]
    ratio = (1 - sparsity) ** ((k + 1) / steps)
    masks = _topk([s1, s2], int(np.float32(ratio) * total), masks)
  got = seven_jax.prune_before_finetuning(
    None,
    params,
    method="synflow",
    steps=steps,
    sparsity=sparsity,
    apply_fn=_linear,
    input_shape=(1, 6),
  )
  np.testing.assert_array_equal(np.asarray(got["w1"]), masks[0])
  np.testing.assert_array_equal(np.asarray(got["w2"]), masks[1])
  assert sum(int(m.sum()) for m in masks) == int((1 - sparsity) * total)


@pytest.mark.parametrize("method", ["force", "iter_snip"])
def test_force_and_iterative_snip_match_a_reference_loop(method):
  params, batches = _mlp(5), _batches(4, seed=6)
  steps, sparsity = 4, 0.8
  grad = jax.jit(jax.grad(loss))
  dense = _kernels(params)
  masks = [np.ones_like(w, bool) for w in dense]
  resurrected = False
  for k in range(steps):
    eff = jax.tree.map(lambda x: x, params)
    for (a, b), w, m in zip(KERNELS, dense, masks):
      eff[a][b] = jnp.asarray(w * m)
    g = _kernels(grad(eff, batches[k]))
    if method == "force":  # dense weights, pruned ones may come back
      scores = [np.abs(w * gl) for w, gl in zip(dense, g)]
      new = _topk(scores, int(np.float32((1 - sparsity) ** ((k + 1) / steps)) * TOTAL))
      resurrected |= any(bool(np.any(n & ~m)) for n, m in zip(new, masks))
    else:  # masked weights, pruned ones at the minimum, never back
      scores = [np.abs(w * m * gl) for w, m, gl in zip(dense, masks, g)]
      new = _topk(scores, int(np.float32((1 - sparsity) ** ((k + 1) / steps)) * TOTAL), masks)
    masks = new
  got = seven_jax.prune_before_finetuning(
    loss, params, iter(batches), method=method, steps=steps, sparsity=sparsity
  )
  for m, e in zip(_kernels(got), masks):
    np.testing.assert_array_equal(m, e)
  assert sum(int(m.sum()) for m in masks) == int((1 - sparsity) * TOTAL)
  if method == "force":
    assert resurrected  # the reference run really exercised resurrection


def _seven_pre_reference(params, batches, steps, sparsity, *, lr=0.0, train=False, correction=True):
  """SEVEN_pre by the one numpy reference of SEVEN's loop (tests/_reference.py):
  window = schedule = K steps from step 0, gradients of the masked model."""
  grad = jax.jit(jax.grad(loss))
  flat = {(a, b): np.asarray(v) for a, d in params.items() for b, v in d.items()}

  def grad_at(t, w):
    eff = {a: {b: jnp.asarray(w[(a, b)], jnp.float32) for b in params[a]} for a in params}
    g = grad(eff, batches[t])
    return {(a, b): np.asarray(g[a][b]) for a, b in w}

  history, w = seven_loop(
    flat,
    grad_at,
    steps,
    prunable={k: k[1] == "kernel" for k in flat},
    sparsity=sparsity,
    start=0,
    window=steps,
    schedule_n=steps,
    lr=lr,
    train=train,
    correction=correction,
  )
  return [history[-1][k] for k in KERNELS], w


@pytest.mark.parametrize("with_optimizer", [False, True])
def test_seven_pre_matches_a_numpy_loop(with_optimizer):
  params, batches = _mlp(7), _batches(6, seed=8)
  steps, sparsity, lr = 6, 0.75, 0.1
  masks, w = _seven_pre_reference(params, batches, steps, sparsity, lr=lr, train=with_optimizer)
  opt = optax.sgd(lr) if with_optimizer else None
  got, new_params = seven_jax.prune_before_finetuning(
    loss,
    params,
    batches,
    sparsity=sparsity,
    steps=steps,
    optimizer=opt,
    return_params=True,
    **KEEP_ALL_TIES,
  )
  for gm, e in zip(_kernels(got), masks):
    np.testing.assert_array_equal(gm, e)
  assert sum(int(x.sum()) for x in masks) == int((1 - sparsity) * TOTAL)
  for a_, b_ in KERNELS:
    np.testing.assert_allclose(np.asarray(new_params[a_][b_]), w[(a_, b_)], rtol=1e-5, atol=1e-6)
  if not with_optimizer:  # the weights were not trained, only masked
    np.testing.assert_array_equal(
      np.asarray(new_params["l1"]["bias"]), np.asarray(params["l1"]["bias"])
    )


def test_seven_pre_without_correction_is_the_accumulated_taylor_score():
  # The ablation of issue 15: correction=False accumulates |W g| along the
  # same cubic schedule. Small noisy batches (4 examples), so that the
  # correction changes some masks here (4 weights in the reference).
  params, batches = _mlp(0), _batches(8, seed=20, size=4)
  masks, _ = _seven_pre_reference(params, batches, 8, 0.5, correction=False)
  corrected, _ = _seven_pre_reference(params, batches, 8, 0.5, correction=True)
  assert sum(int((a != b).sum()) for a, b in zip(masks, corrected)) > 0
  got = seven_jax.prune_before_finetuning(
    loss, params, batches, sparsity=0.5, steps=8, correction=False, **KEEP_ALL_TIES
  )
  for gm, e in zip(_kernels(got), masks):
    np.testing.assert_array_equal(gm, e)
  with_correction = seven_jax.prune_before_finetuning(
    loss, params, batches, sparsity=0.5, steps=8, **KEEP_ALL_TIES
  )
  for gm, e in zip(_kernels(with_correction), corrected):
    np.testing.assert_array_equal(gm, e)


def test_random_is_seeded_and_exact():
  params = _mlp()
  a = seven_jax.prune_before_finetuning(None, params, method="random", sparsity=0.5, seed=1)
  b = seven_jax.prune_before_finetuning(None, params, method="random", sparsity=0.5, seed=1)
  c = seven_jax.prune_before_finetuning(None, params, method="random", sparsity=0.5, seed=2)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert any(np.any(x != y) for x, y in zip(_kernels(a), _kernels(c)))
  assert sum(int(x.sum()) for x in _kernels(a)) == TOTAL // 2


def test_magnitude_per_leaf_and_nm():
  params = _mlp()
  got = seven_jax.prune_before_finetuning(
    None, params, method="magnitude", sparsity=0.5, scope="per_leaf"
  )
  for m, w in zip(_kernels(got), _kernels(params)):
    np.testing.assert_array_equal(m, _topk([np.abs(w)], w.size // 2)[0])
  got = seven_jax.prune_before_finetuning(None, params, method="magnitude", pattern="2:4")
  for m, w in zip(_kernels(got), _kernels(params)):
    groups = np.abs(w).reshape(w.shape[0] // 4, 4, -1)
    order = np.argsort(-groups, axis=1, kind="stable")
    want = np.zeros_like(groups, bool)
    np.put_along_axis(want, order[:, :2], True, axis=1)
    np.testing.assert_array_equal(m, want.reshape(w.shape))


def test_fixed_mask_keeps_pruned_weights_exactly_zero():
  params, batches = _mlp(), _batches(5)
  masks = seven_jax.prune_before_finetuning(
    loss, params, batches, method="snip", steps=1, sparsity=0.6
  )
  tx = seven_jax.fixed_mask(optax.adamw(1e-2, weight_decay=0.1), masks)
  state = tx.init(params)
  step = jax.jit(lambda p, s, b: tx.update(jax.grad(loss)(p, b), s, p))
  for b in batches:
    updates, state = step(params, state, b)
    params = optax.apply_updates(params, updates)
    for m, w in zip(_kernels(masks), _kernels(params)):
      assert np.all(w[~m] == 0.0)
      assert np.any(w[m] != 0.0)
  jax.tree.map(np.testing.assert_array_equal, seven_jax.masks(state), masks)
  report = seven_jax.sparsity_report(state)
  assert report.total == TOTAL and report.kept == int(0.4 * TOTAL)
  with pytest.raises(ValueError, match="mask of 'l1/kernel' has shape"):
    bad = jax.tree.map(lambda m: m, masks)
    bad["l1"]["kernel"] = np.ones((2, 2), bool)
    seven_jax.fixed_mask(optax.sgd(0.1), bad).init(params)


def test_bad_input():
  params = _mlp()

  def short():
    yield from _batches(3)

  with pytest.raises(
    ValueError,
    match=r"batches ran out: method 'seven' needs 5 "
    r"mini-batches \(steps=5\) but only 3 came",
  ):
    seven_jax.prune_before_finetuning(loss, params, short(), sparsity=0.5, steps=5)
  with pytest.raises(
    ValueError,
    match=r"needs 8 mini-batches \(steps=4 x batches_per_step=2\)"
    r" but only 3 came",
  ):
    seven_jax.prune_before_finetuning(
      loss, params, _batches(3), method="force", steps=4, batches_per_step=2, sparsity=0.5
    )
  with pytest.raises(
    ValueError, match="unknown method 'snipp'.*valid names: force, grasp, iter_snip, magnitude"
  ):
    seven_jax.prune_before_finetuning(loss, params, _batches(1), method="snipp", sparsity=0.5)
  odd = {"w": jnp.ones((6, 4)), "ok": jnp.ones((8, 4))}
  with pytest.raises(ValueError, match="divisible by 4, but leaf 'w' has shape"):
    seven_jax.prune_before_finetuning(None, odd, method="magnitude", pattern="2:4")
  with pytest.raises(ValueError, match="sparsity must be in"):
    seven_jax.prune_before_finetuning(None, params, method="magnitude", sparsity=1.0)
  with pytest.raises(ValueError, match="synflow.*apply_fn"):
    seven_jax.prune_before_finetuning(None, params, method="synflow", sparsity=0.5)
  with pytest.raises(ValueError, match="optimizer= applies to"):
    seven_jax.prune_before_finetuning(
      loss, params, _batches(1), method="snip", sparsity=0.5, optimizer=optax.sgd(0.1)
    )
  with pytest.raises(ValueError, match="needs 1 mini-batches.*pass batches="):
    seven_jax.prune_before_finetuning(loss, params, None, method="snip", sparsity=0.5)


def test_rule_methods_take_nnx_state_params():
  """SEVEN_pre on an nnx ``State`` (Param-boxed leaves) gives the masks of the
  same weights as a plain dict (the masks reader unboxes Variables)."""
  from flax import nnx

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.l1 = nnx.Linear(4, 8, rngs=rngs)
      self.l2 = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):
      return self.l2(jax.nn.relu(self.l1(x)))

  graphdef, state = nnx.split(Net(nnx.Rngs(0)), nnx.Param)
  rng = np.random.default_rng(3)
  batches = [
    {"x": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), "y": jnp.ones((3, 2))}
    for _ in range(4)
  ]

  def loss_boxed(p, batch):
    return jnp.mean((nnx.merge(graphdef, p)(batch["x"]) - batch["y"]) ** 2)

  plain = nnx.to_pure_dict(state)

  def loss_plain(p, batch):
    return jnp.mean((nnx.merge(graphdef, p)(batch["x"]) - batch["y"]) ** 2)

  kw = dict(method="seven_pre", sparsity=0.5, steps=4)
  boxed_masks = seven_jax.prune_before_finetuning(loss_boxed, state, batches, **kw)
  plain_masks = seven_jax.prune_before_finetuning(loss_plain, plain, batches, **kw)
  got = [np.asarray(x) for x in jax.tree.leaves(boxed_masks)]
  want = [np.asarray(x) for x in jax.tree.leaves(plain_masks)]
  assert len(got) == len(want) == 4
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g, w)
  assert 0 < sum(int(g.sum()) for g in got if g.ndim == 2) < 4 * 8 + 8 * 2
