"""pruning_mask: every dynamic score rule against a numpy loop over a fixed
gradient sequence, N:M patterns, scopes, resurrection and bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import seven_jax
from seven_jax.engine import TIES_SUPPORTED
from tests._helpers import PRUNABLE, SHAPES, grad_sequence, random_params
from tests._reference import grads_from_sequence, seven_loop

# Parity with the official loops keeps every tie at the threshold.
KEEP_ALL_TIES = {"ties": "keep_all"} if TIES_SUPPORTED else {}

NAMES = [k for k in SHAPES if PRUNABLE[k]]
TOTAL = sum(int(np.prod(SHAPES[k])) for k in NAMES)


_params = random_params
_grad_sequence = grad_sequence


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def reference_rule(method, hp, w_before, w_after, g, stats, score, p, is_last):
  """Each method's score, written from its paper / the spec, in numpy (SEVEN's
  is the official loop of tests/_reference.py)."""
  if method in ("platon", "platon_seven_repo"):
    mean, ibar, ubar = stats
    dt = hp.get("delta_t", 1)
    i_now = np.abs(w_after * g)
    q = p % dt
    mean = (mean * q + i_now) / (q + 1)
    if (p + 1) % dt == 0 or is_last:
      ibar = hp["b1"] * ibar + (1 - hp["b1"]) * mean
      ubar = hp["b2"] * ubar + (1 - hp["b2"]) * np.abs(mean - ibar)
    return (mean, ibar, ubar), ibar * ubar
  if method == "movement":
    return stats, score - w_before * g
  if method == "taylor_instant":
    return stats, np.abs(w_after * g)
  if method == "magnitude":
    return stats, np.abs(w_after)
  if method == "soft_movement":
    sig = _sigmoid(score)
    return stats, score - hp["score_lr"] * (w_before * g + hp["penalty"] * sig * (1 - sig) / TOTAL)
  raise AssertionError(method)


NUM_STATS = {"platon": 3, "platon_seven_repo": 3}
SIGNED = {"movement", "soft_movement"}


def reference_loop(
  method,
  hp,
  params,
  grads_seq,
  lr,
  sparsity,
  t_i,
  n_iter,
  *,
  resurrect,
  update_every=1,
  scope="global",
):
  """The shared loop: masked SGD step, score on the window, sort-based top-k."""
  w = {k: np.asarray(v, np.float64) for k, v in params.items()}
  mask = {k: np.ones(SHAPES[k], bool) for k in NAMES}
  stats = {k: tuple(np.zeros(SHAPES[k]) for _ in range(NUM_STATS.get(method, 0))) for k in NAMES}
  score = {k: np.zeros(SHAPES[k]) for k in NAMES}
  signed = method in SIGNED
  history = []
  for t, grads in enumerate(grads_seq):
    g = {k: np.asarray(grads[k], np.float64) * (mask[k] if k in mask else 1.0) for k in grads}
    before = {k: v.copy() for k, v in w.items()}
    for k in w:
      w[k] = w[k] - lr * g[k]
    if t_i <= t < t_i + n_iter - 1:
      p = t - t_i
      is_last = p == n_iter - 2
      for k in NAMES:
        stats[k], score[k] = reference_rule(
          method, hp, before[k], w[k], g[k], stats[k], score[k], p, is_last
        )
        if not resurrect and not signed:
          score[k] = np.where(mask[k], score[k], 0.0)
      if (p + 1) % update_every == 0 or is_last:
        ratio = (1 - sparsity) + sparsity * (1 - (p + 1) / n_iter) ** 3
        fill = -np.inf if signed else 0.0
        sel = {k: score[k] if resurrect else np.where(mask[k], score[k], fill) for k in NAMES}
        groups = [NAMES] if scope == "global" else [[k] for k in NAMES]
        for group in groups:
          flat = np.concatenate([sel[k].ravel() for k in group])
          tau = np.sort(flat)[::-1][int(ratio * flat.size) - 1]
          for k in group:
            mask[k] = (sel[k] >= tau) if resurrect else (sel[k] >= tau) & mask[k]
      for k in NAMES:
        w[k] = w[k] * mask[k]
    history.append({k: mask[k].copy() for k in NAMES})
  return history


CASES = [
  ("seven", dict(b1=0.8, b2=0.9), {}),
  ("platon", dict(b1=0.85, b2=0.95, delta_t=3), dict(delta_t=3)),
  ("platon_seven_repo", dict(b1=0.8, b2=0.9), {}),
  ("movement", {}, {}),
  ("taylor_instant", {}, {}),
  ("magnitude", {}, {}),
  ("soft_movement", dict(score_lr=0.5, penalty=50.0), dict(score_lr=0.5, penalty=50.0)),
]


@pytest.mark.parametrize("method,hp,kwargs", CASES, ids=[c[0] for c in CASES])
def test_every_rule_matches_a_numpy_loop(method, hp, kwargs):
  params = _params()
  start, n_iter, sparsity, lr = 2, 9, 0.7, 0.05
  grads_seq = _grad_sequence(start + n_iter + 1)
  tx = seven_jax.pruning_mask(
    optax.sgd(lr),
    method,
    sparsity=sparsity,
    start_step=start,
    pruning_steps=n_iter,
    prunable=PRUNABLE,
    **kwargs,
    **KEEP_ALL_TIES,
  )
  rule = seven_jax.scores.get_rule(method)
  update_every = rule.update_every(seven_jax.scores.resolve_hparams(rule, kwargs))
  if method == "seven":
    expected, _ = seven_loop(
      params,
      grads_from_sequence(grads_seq),
      len(grads_seq),
      prunable=PRUNABLE,
      sparsity=sparsity,
      start=start,
      window=n_iter - 1,
      schedule_n=n_iter,
      lr=lr,
      **hp,
    )
  else:
    expected = reference_loop(
      method,
      hp,
      params,
      grads_seq,
      lr,
      sparsity,
      start,
      n_iter,
      resurrect=rule.resurrect,
      update_every=update_every,
    )
  state = tx.init(params)
  step = jax.jit(tx.update)
  for t, grads in enumerate(grads_seq):
    updates, state = step(jax.tree.map(jnp.asarray, grads), state, params)
    params = optax.apply_updates(params, updates)
    got = seven_jax.masks(state)
    for k, mask in expected[t].items():
      np.testing.assert_array_equal(np.asarray(got[k]), mask, err_msg=f"step {t}, leaf {k}")
      assert np.all(np.asarray(params[k])[~mask] == 0.0)
  kept = sum(int(m.sum()) for m in expected[-1].values())
  assert kept == math.floor(((1 - sparsity) + sparsity / n_iter**3) * TOTAL)


@pytest.mark.parametrize("method", ["platon_seven_repo", "movement"])
def test_per_leaf_scope_and_resurrect_override_match_the_numpy_loop(method):
  params = _params(3)
  hp = dict(b1=0.8, b2=0.9) if method == "platon_seven_repo" else {}
  grads_seq = _grad_sequence(8, seed=4)
  resurrect = method == "platon_seven_repo"  # the opposite of each default
  expected = reference_loop(
    method, hp, params, grads_seq, 0.05, 0.6, 0, 8, resurrect=resurrect, scope="per_leaf"
  )
  tx = seven_jax.pruning_mask(
    optax.sgd(0.05),
    method,
    sparsity=0.6,
    pruning_steps=8,
    prunable=PRUNABLE,
    scope="per_leaf",
    resurrect=resurrect,
  )
  state = tx.init(params)
  step = jax.jit(tx.update)
  for t, grads in enumerate(grads_seq):
    updates, state = step(jax.tree.map(jnp.asarray, grads), state, params)
    params = optax.apply_updates(params, updates)
    for k, mask in expected[t].items():
      np.testing.assert_array_equal(np.asarray(seven_jax.masks(state)[k]), mask)
  for k in NAMES:  # every leaf at the same ratio
    ratio = 0.4 + 0.6 / 8**3
    assert int(expected[-1][k].sum()) == int(ratio * np.prod(SHAPES[k]))


def test_pruning_mask_seven_is_seven_mask():
  params = _params()
  kwargs = dict(sparsity=0.5, start_step=1, pruning_steps=5, prunable=PRUNABLE)
  a = seven_jax.seven_mask(optax.adam(1e-2), **kwargs)
  b = seven_jax.pruning_mask(optax.adam(1e-2), "seven", **kwargs)
  sa, sb = a.init(params), b.init(params)
  pa = pb = params
  step_a, step_b = jax.jit(a.update), jax.jit(b.update)
  for g in _grad_sequence(7):
    g = jax.tree.map(jnp.asarray, g)
    ua, sa = step_a(g, sa, pa)
    ub, sb = step_b(g, sb, pb)
    pa, pb = optax.apply_updates(pa, ua), optax.apply_updates(pb, ub)
  jax.tree.map(np.testing.assert_array_equal, sa.masks, sb.masks)
  jax.tree.map(np.testing.assert_array_equal, sa.scores, sb.scores)
  jax.tree.map(np.testing.assert_array_equal, sa.grad_ema, sb.stats[0])
  assert isinstance(sa, seven_jax.SevenMaskState) and isinstance(sb, seven_jax.PruningState)


NM_SHAPES = {"a": (8, 6), "b": (16, 3), "c": (3,)}
NM_PRUNABLE = {"a": True, "b": True, "c": False}


@pytest.mark.parametrize("pattern,method", [("2:4", "seven"), ("4:8", "movement")])
def test_nm_keeps_exactly_n_per_group_and_follows_the_ramp(pattern, method):
  n, m = map(int, pattern.split(":"))
  params = _params(shapes=NM_SHAPES)
  n_iter = 6
  tx = seven_jax.pruning_mask(
    optax.sgd(0.05),
    method,
    pattern=pattern,
    pruning_steps=n_iter,
    prunable=NM_PRUNABLE,
    resurrect=False,
  )
  state = tx.init(params)
  step = jax.jit(tx.update)
  prev = None
  for t, g in enumerate(_grad_sequence(n_iter, shapes=NM_SHAPES)):
    updates, state = step(jax.tree.map(jnp.asarray, g), state, params)
    params = optax.apply_updates(params, updates)
    cur = seven_jax.masks(state)
    ratio = n / m + (1 - n / m) * (1 - (t + 1) / n_iter) ** 3
    want = n if t == n_iter - 2 else max(n, math.floor(ratio * m))
    if t <= n_iter - 2:
      for k in ("a", "b"):
        groups = np.asarray(cur[k]).reshape(NM_SHAPES[k][0] // m, m, -1).sum(axis=1)
        assert np.all(groups == want), (t, k, groups)
        if prev is not None:
          assert not np.any(np.asarray(cur[k]) & ~np.asarray(prev[k]))
    prev = cur
  assert bool(np.all(np.asarray(cur["c"])))


def test_nm_errors():
  params = _params(shapes={"a": (8, 6), "odd": (6, 4)})
  with pytest.raises(ValueError, match="divisible by 4, but leaf 'odd' has shape"):
    seven_jax.pruning_mask(optax.sgd(0.1), "seven", pattern="2:4").init(params)
  with pytest.raises(ValueError, match="contradicts pattern"):
    seven_jax.pruning_mask(optax.sgd(0.1), "seven", pattern="2:4", sparsity=0.7)
  with pytest.raises(ValueError, match="pattern must be None or 'N:M'"):
    seven_jax.pruning_mask(optax.sgd(0.1), "seven", pattern="2-4")
  with pytest.raises(ValueError, match="0 < N < M"):
    seven_jax.pruning_mask(optax.sgd(0.1), "seven", pattern="4:4")


@pytest.mark.parametrize(
  "method,can_grow",
  [
    # Scores of weights that are exactly 0 are 0 for SEVEN's increment, |W g|
    # and |W|, so even with resurrection on they stay out; accumulated signed
    # scores keep their value and can come back.
    ("seven", False),
    ("taylor_instant", False),
    ("movement", True),
  ],
)
def test_resurrection_only_where_allowed(method, can_grow):
  # Tiny learning rate, big noise: with resurrection on, scores cross and
  # masks regrow; with it off, masks only shrink.
  for resurrect in (False, True):
    params = _params(5)
    tx = seven_jax.pruning_mask(
      optax.sgd(1e-3),
      method,
      sparsity=0.5,
      pruning_steps=12,
      prunable=PRUNABLE,
      resurrect=resurrect,
    )
    state = tx.init(params)
    step = jax.jit(tx.update)
    prev, grew = seven_jax.masks(state), False
    for g in _grad_sequence(11, seed=9):
      updates, state = step(jax.tree.map(jnp.asarray, g), state, params)
      params = optax.apply_updates(params, updates)
      cur = seven_jax.masks(state)
      grew |= any(bool(np.any(np.asarray(cur[k]) & ~np.asarray(prev[k]))) for k in NAMES)
      prev = cur
    assert grew == (resurrect and can_grow)


def test_soft_movement_threshold_and_penalty():
  params = _params()
  tx = seven_jax.pruning_mask(
    optax.sgd(0.05),
    "soft_movement",
    sparsity=0.5,
    pruning_steps=6,
    prunable=PRUNABLE,
    threshold=0.55,
    score_lr=2.0,
  )
  state = tx.init(params)
  step = jax.jit(tx.update)
  for g in _grad_sequence(5):
    updates, state = step(jax.tree.map(jnp.asarray, g), state, params)
    params = optax.apply_updates(params, updates)
  for k in NAMES:
    np.testing.assert_array_equal(
      np.asarray(state.masks[k]), _sigmoid(np.asarray(state.scores[k], np.float64)) > 0.55
    )
  # The penalty the training step adds: lambda/D * sum(sigmoid(S)) over prunable leaves,
  # and its gradient is the term the rule applies to the scores.
  value = seven_jax.soft_movement_penalty(state, penalty=3.0)
  expected = (
    3.0 * sum(_sigmoid(np.asarray(state.scores[k], np.float64)).sum() for k in NAMES) / TOTAL
  )
  np.testing.assert_allclose(float(value), expected, rtol=1e-5)
  wrapped = (optax.EmptyState(), state)  # as inside an optax.chain
  np.testing.assert_allclose(
    float(seven_jax.soft_movement_penalty(wrapped, 3.0)), expected, rtol=1e-5
  )
  s = [state.scores[k] for k in NAMES]
  grad = jax.grad(lambda s: seven_jax.soft_movement_penalty(s, 3.0))(s)
  sig = jax.nn.sigmoid(s[0])
  np.testing.assert_allclose(grad[0], 3.0 * sig * (1 - sig) / TOTAL, rtol=1e-5)


def test_bad_method_names_and_arguments():
  with pytest.raises(ValueError, match="unknown method 'snap'.*valid names: magnitude, movement"):
    seven_jax.pruning_mask(optax.sgd(0.1), "snap", sparsity=0.5)
  with pytest.raises(ValueError, match="unknown argument.*b3.*its arguments: b1, b2, delta_t"):
    seven_jax.pruning_mask(optax.sgd(0.1), "platon", sparsity=0.5, b3=0.1)
  with pytest.raises(ValueError, match="sparsity is required"):
    seven_jax.pruning_mask(optax.sgd(0.1), "seven")
  with pytest.raises(ValueError, match="scope must be one of"):
    seven_jax.pruning_mask(optax.sgd(0.1), "seven", sparsity=0.5, scope="layer")
  with pytest.raises(ValueError, match="delta_t must be an int >= 1"):
    seven_jax.pruning_mask(optax.sgd(0.1), "platon", sparsity=0.5, delta_t=0)
  with pytest.raises(ValueError, match=r"threshold of soft_movement must be in \(0, 1\)"):
    seven_jax.pruning_mask(optax.sgd(0.1), "soft_movement", sparsity=0.5, threshold=2.0)


def test_registry_lists_every_method():
  assert seven_jax.methods("dynamic") == [
    "magnitude",
    "movement",
    "platon",
    "platon_seven_repo",
    "seven",
    "soft_movement",
    "taylor_instant",
  ]
  assert set(seven_jax.methods("pre")) >= {
    "seven",
    "magnitude",
    "random",
    "snip",
    "grasp",
    "synflow",
    "force",
    "iter_snip",
  }
  assert seven_jax.method_kind("platon") == "dynamic"
  assert seven_jax.method_kind("seven_pre") == seven_jax.method_kind("grasp") == "pre"
  with pytest.raises(ValueError, match="unknown method 'nope'; valid names: force"):
    seven_jax.method_kind("nope")
  assert seven_jax.methods() == sorted(
    set(seven_jax.methods("pre")) | set(seven_jax.methods("dynamic"))
  )


def test_a_new_rule_is_one_function_and_one_line_and_works_with_inject_hyperparams():
  # A new method in a few lines: distance of each weight from a centre c, a
  # hyper-parameter that changes the ranking (|W - c|, not a power of |W|).
  def distance_rule(hp, x, stats, score):
    return stats, jnp.abs(x.param - hp["centre"])

  rule = seven_jax.ScoreRule("distance_test_only", 0, distance_rule, dict(centre=0.0))
  assert rule.name not in seven_jax.methods()  # registering is the one line:
  # seven_jax.register_rule(rule); here the rule object is passed directly.
  params = _params()
  kept = {}
  for centre in (0.0, 1.0):
    tx = optax.inject_hyperparams(seven_jax.pruning_mask, static_args=("method", "prunable"))(
      optax.sgd(0.0), method=rule, sparsity=0.5, pruning_steps=3, prunable=PRUNABLE, centre=centre
    )
    state = tx.init(params)
    step = jax.jit(tx.update)
    for g in _grad_sequence(2):
      updates, state = step(jax.tree.map(jnp.asarray, g), state, params)
    kept[centre] = seven_jax.masks(state)
    # numpy: the weights never move (lr 0), so the last mask is the global
    # top-k of |W - c| at the last keep ratio (no ties among random floats).
    flat = np.concatenate([np.abs(np.asarray(params[k]) - centre).ravel() for k in NAMES])
    k = math.floor((0.5 + 0.5 / 27) * TOTAL)
    tau = np.sort(flat)[::-1][k - 1]
    for name in NAMES:
      expected = np.abs(np.asarray(params[name]) - centre) >= tau
      np.testing.assert_array_equal(np.asarray(kept[centre][name]), expected)
    assert float(state.hyperparams["sparsity"]) == 0.5
  assert any(bool(np.any(kept[0.0][k] != kept[1.0][k])) for k in NAMES)


def test_seven_without_correction_matches_the_numpy_loop():
  # Issue 15's ablation while fine-tuning: correction=False is the
  # accumulated |W_p g| on SEVEN's schedule (tests/_reference.py).
  params, grads_seq = _params(5), _grad_sequence(9, seed=6)
  expected, _ = seven_loop(
    params,
    grads_from_sequence(grads_seq),
    len(grads_seq),
    prunable=PRUNABLE,
    sparsity=0.7,
    start=1,
    window=6,
    schedule_n=7,
    lr=0.05,
    correction=False,
  )
  tx = seven_jax.seven_mask(
    optax.sgd(0.05),
    sparsity=0.7,
    start_step=1,
    pruning_steps=7,
    prunable=PRUNABLE,
    correction=False,
    **KEEP_ALL_TIES,
  )
  state = tx.init(params)
  step = jax.jit(tx.update)
  for t, grads in enumerate(grads_seq):
    updates, state = step(jax.tree.map(jnp.asarray, grads), state, params)
    params = optax.apply_updates(params, updates)
    for k, mask in expected[t].items():
      np.testing.assert_array_equal(np.asarray(seven_jax.masks(state)[k]), mask, err_msg=f"{t} {k}")


@pytest.mark.parametrize("with_score_from_stats", [True, False])
def test_next_stat_gives_the_values_of_update(with_score_from_stats):
  """``score_leaf`` on PLATON's rule (statistics one at a time, ``next_stat``)
  equals the same rule without ``next_stat`` (``update`` all at once): same
  statistics and scores in float32, at a closing and a non-closing step."""
  from seven_jax.engine import score_leaf
  from seven_jax.scores import ScoreInputs, get_rule

  rule = get_rule("platon")
  plain = rule._replace(next_stat=None)
  if not with_score_from_stats:
    rule = rule._replace(score_from_stats=None)
  hp = dict(rule.defaults, delta_t=3)
  rng = np.random.default_rng(0)
  arr = lambda: jnp.asarray(rng.random((6, 8)).astype(np.float32))
  for p in (1, 2):  # step 2 closes a window of 3
    x = ScoreInputs(arr(), arr(), arr(), arr() > 0.3, jnp.int32(p), jnp.bool_(False), 48)
    stats, score = (arr(), arr(), arr()), arr()
    got = score_leaf(rule, hp, x, stats, score, resurrect=True)
    want = score_leaf(plain, hp, x, stats, score, resurrect=True)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
