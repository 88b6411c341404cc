r"""Pruning before fine-tuning (SEVEN_pre and its baselines), and ``fixed_mask``.

:func:`prune_before_finetuning` scores a pre-trained model and returns masks;
:func:`fixed_mask` then fine-tunes with those masks frozen. Every method shares
the selection step of :mod:`seven_jax.selection` (global / per-leaf budgets,
N:M patterns, the exact counting threshold) with the dynamic methods.

Methods (``seven_jax.methods("pre")``), :math:`g` the mini-batch gradient:

``seven`` or ``seven_pre`` (SEVEN_pre, spec 2.4)
  For :math:`p = 0 \dots K-1` (``steps = K`` mini-batches): the gradient of
  the masked model, SEVEN's statistics and accumulated score (spec 2.1), and
  a global top-k at the cubic keep ratio
  :math:`r_p = r_f + (1-r_f)(1 - (p+1)/K)^3` (so the last step prunes to
  exactly :math:`r_f`). By default the weights are **not** updated (pruning
  before training, like SNIP, GraSP and FORCE): :math:`W_p = W_0 \odot M`.
  With ``optimizer=`` the masked model takes one optimizer step per batch
  and :math:`W_p` are the post-step weights (the SEVEN_dyn ordering);
  ``return_params=True`` then also returns those weights. Every other
  dynamic rule of :mod:`seven_jax.scores` (``platon``, ``movement``, ...)
  runs through the same loop under its name.
``magnitude`` or ``magnitude_pre``
  One-shot :math:`|W|`, no data.
``random``
  One-shot uniform random scores from ``seed`` (exact sparsity).
``snip`` (Lee et al. 2019)
  One-shot :math:`|W \odot \bar g|`, :math:`\bar g` the mean gradient over
  ``steps`` batches (default 1).
``grasp`` (Wang et al. 2020)
  One-shot :math:`S = -W \odot (H \bar g)`, the Hessian-gradient product by
  forward-over-reverse differentiation
  (``jax.jvp(jax.grad(L), (W,), (g,))``, averaged over the ``steps`` batches
  the gradient came from); the *highest* :math:`S` are pruned, i.e. the
  lowest kept. The Hessian is that of the prunable weights (the tangent is
  zero on the other leaves).
``synflow`` (Tanaka et al. 2020)
  Data-free: with every parameter replaced by its absolute value and the
  mask applied, :math:`R = \mathbf 1^\top f(\mathbf 1)` on an all-ones input
  of shape ``input_shape`` through ``apply_fn(params, x)``, score
  :math:`|W \odot \partial R / \partial W|`, iterated ``steps`` times
  (default 100) along the exponential schedule :math:`r_f^{(k+1)/K}`.
``force`` (de Jorge et al. 2021)
  ``steps`` iterations (default 10) on the exponential schedule, each
  scoring :math:`|W_{dense} \odot \nabla_W L(W \odot M)|` on
  ``batches_per_step`` fresh batches: the dense weights times the gradient
  of the masked network, so pruned weights can come back.
``iter_snip`` (de Jorge et al. 2021)
  As FORCE with the masked weights, :math:`|(W \odot M) \odot \nabla L(W
  \odot M)|`; pruned weights score lowest and never return.

References:
  Lee et al, `SNIP <https://arxiv.org/abs/1810.02340>`_, ICLR 2019.
  Wang et al, `GraSP <https://arxiv.org/abs/2002.07376>`_, ICLR 2020.
  Tanaka et al, `SynFlow <https://arxiv.org/abs/2006.05467>`_, NeurIPS 2020.
  de Jorge et al, `FORCE <https://arxiv.org/abs/2006.09081>`_, ICLR 2021.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from seven_jax import schedules, selection, transform
from seven_jax.prunable import PrunableSpec, path_str, resolve_prunable
from seven_jax.scores import DYNAMIC_RULES, PRE_METHODS, ScoreInputs, methods, resolve_hparams
from seven_jax.threshold import canonicalize_scores

__all__ = ["prune_before_finetuning", "fixed_mask", "FixedMaskState", "freeze", "PreMethod"]


# ---------------------------------------------------------------- fixed mask


class FixedMaskState(NamedTuple):
  """State of :func:`fixed_mask`: the frozen masks and the inner state."""

  count: jax.Array
  masks: Any
  inner_state: Any


transform._MASK_STATE_TYPES.append(FixedMaskState)


def fixed_mask(
  inner: optax.GradientTransformation, masks: Any
) -> optax.GradientTransformationExtraArgs:
  """Fine-tunes with a frozen mask; pruned weights are exactly 0 after every step.

  The gradient is masked (the gradient of the masked network ``W * M``), the
  inner optimizer moves the kept weights, and the emitted update is
  ``where(M, u, -W)``, so after ``optax.apply_updates`` every pruned weight is
  exactly 0, also on the first step if the weights were not zeroed yet.

  Args:
    inner: the optimizer of the kept weights.
    masks: pytree of bools shaped like params (``True`` = kept), e.g. from
      :func:`prune_before_finetuning`; non-prunable leaves all ``True``.
  """
  masks = jax.tree.map(lambda m: jnp.asarray(m, jnp.bool_), masks)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    if type(params).__name__ == "_ParamsPlaceholder":
      return FixedMaskState(jnp.zeros([], jnp.int32), params, inner.init(params))
    p_def, m_def = jax.tree.structure(params), jax.tree.structure(masks)
    if p_def != m_def:
      raise ValueError(f"masks must have the structure of params; params: {p_def}, masks: {m_def}.")
    for (path, p), m in zip(
      jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(masks)
    ):
      if np.shape(p) != np.shape(m):
        raise ValueError(
          f"mask of '{path_str(path)}' has shape {np.shape(m)}, the parameter {np.shape(p)}."
        )
    return FixedMaskState(jnp.zeros([], jnp.int32), masks, inner.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(
        "fixed_mask needs the current parameters: call tx.update(grads, state, params)."
      )
    grads = jax.tree.map(lambda g, m: jnp.where(m, g, jnp.zeros_like(g)), updates, state.masks)
    u, inner_state = inner.update(grads, state.inner_state, params, **extra_args)
    final = jax.tree.map(
      lambda u_, p, m: jnp.where(m, u_, -p.astype(u_.dtype)), u, params, state.masks
    )
    return final, FixedMaskState(optax.safe_increment(state.count), state.masks, inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def freeze(opt_state: Any) -> Any:
  """Swaps every pruning state in ``opt_state`` for a :class:`FixedMaskState`.

  After the pruning window the masks never change, yet ``seven_mask`` (and
  every ``pruning_mask``) still carries its statistics, 12 bytes per prunable
  weight, through a ``lax.cond`` every step. Freezing keeps the masks, the
  step count and the inner optimizer's state (so Adam's moments carry on)
  and drops the rest; continue with :func:`fixed_mask` in the same place of
  the optimizer, which gives the same updates (up to float rounding)::

    tx = seven_jax.fixed_mask(optax.adamw(2e-5), seven_jax.masks(opt_state))
    opt_state = seven_jax.freeze(opt_state)

  The optimizer changes, so the training step is traced and compiled again.
  """
  types = tuple(t for t in transform._MASK_STATE_TYPES if t is not FixedMaskState)
  is_mask_state = lambda x: isinstance(x, types)
  transform.find_state(opt_state)  # a clear error when there is none

  def to_fixed(x):
    if not is_mask_state(x):
      return x
    return FixedMaskState(x.count, transform.masks(x), x.inner_state)

  return jax.tree.map(to_fixed, opt_state, is_leaf=is_mask_state)


# ---------------------------------------------------------- pre-pruning core


class PreMethod(NamedTuple):
  """A pre-pruning method: its runner and defaults.

  ``run(ctx) -> (prunable masks, params)``; ``batches(steps, per_step)`` is the
  number of mini-batches it reads.
  """

  name: str
  run: Callable
  default_steps: int
  batches: Callable[[int, int], int]
  resurrect: bool = False
  summary: str = ""
  rule: Optional[str] = None  # the dynamic score rule ``_run_rule`` uses


class _Batches:
  """Hands out mini-batches and says clearly when the iterator ran short."""

  def __init__(self, batches, needed: int, method: str, why: str):
    self.needed, self.method, self.why, self.count = needed, method, why, 0
    if needed and batches is None:
      raise ValueError(f"method {method!r} needs {needed} mini-batches ({why}); pass batches=.")
    if needed and hasattr(batches, "__len__") and len(batches) < needed:
      raise ValueError(
        f"batches ran out: method {method!r} needs {needed} "
        f"mini-batches ({why}) but only {len(batches)} came."
      )
    self.it = iter(batches) if needed else iter(())

  def next(self):
    try:
      batch = next(self.it)
    except StopIteration:
      raise ValueError(
        f"batches ran out: method {self.method!r} needs "
        f"{self.needed} mini-batches ({self.why}) but only "
        f"{self.count} came."
      ) from None
    self.count += 1
    return batch


class _Context(NamedTuple):
  """Everything a runner needs, flattened over the prunable leaves."""

  method: str
  loss_fn: Callable
  params: Any
  treedef: Any
  idx: list  # positions of the prunable leaves in the flat params
  total: int
  final_keep: float
  steps: int
  per_step: int
  batches: _Batches
  scope: str
  nm: Optional[tuple]
  resurrect: bool
  optimizer: Optional[optax.GradientTransformation]
  seed: int
  apply_fn: Optional[Callable]
  input_shape: Optional[tuple]
  input_dtype: Any
  hp: dict
  rule: Optional[str]

  def flat(self, tree):
    return self.treedef.flatten_up_to(tree)

  def prunable_leaves(self, tree):
    flat = self.flat(tree)
    return [flat[i] for i in self.idx]

  def with_prunable(self, tree, leaves):
    flat = list(self.flat(tree))
    for j, i in enumerate(self.idx):
      flat[i] = leaves[j]
    return self.treedef.unflatten(flat)

  def apply_masks(self, params, masks):
    leaves = [
      jnp.where(m, p, jnp.zeros_like(p)) for p, m in zip(self.prunable_leaves(params), masks)
    ]
    return self.with_prunable(params, leaves)

  def select(self, scores, masks, ratio, is_last, *, signed=False, resurrect=None):
    scores = [canonicalize_scores(s) for s in scores]
    nm_keep = selection.nm_keep_count(ratio, self.nm, is_last) if self.nm else None
    return selection.select_masks(
      scores,
      masks,
      ratio,
      scope=self.scope,
      nm=self.nm,
      nm_keep=nm_keep,
      resurrect=self.resurrect if resurrect is None else resurrect,
      signed=signed,
    )

  def ones(self):
    return [jnp.ones(jnp.shape(p), jnp.bool_) for p in self.prunable_leaves(self.params)]


def _mean_grad(ctx: _Context, grad_fn, params, count: int):
  """Mean gradient over ``count`` fresh batches, and the batches."""
  total, used = None, []
  for _ in range(count):
    batch = ctx.batches.next()
    used.append(batch)
    g = grad_fn(params, batch)
    total = g if total is None else jax.tree.map(jnp.add, total, g)
  return jax.tree.map(lambda x: x / count, total), used


# ------------------------------------------------------------------ runners


def _run_rule(ctx: _Context):
  """Any dynamic score rule along the cubic schedule over ``steps`` batches."""
  rule = DYNAMIC_RULES[ctx.rule]
  grad_fn = jax.jit(jax.grad(ctx.loss_fn))
  opt = ctx.optimizer
  signed = rule.signed

  @jax.jit
  def step(params, masks, stats, scores, opt_state, grads, p):
    flat_g = ctx.prunable_leaves(grads)
    flat_g = [jnp.where(m, g, jnp.zeros_like(g)) for g, m in zip(flat_g, masks)]
    if opt is not None:
      grads = ctx.with_prunable(grads, flat_g)
      u, opt_state = opt.update(grads, opt_state, params)
      after = optax.apply_updates(params, u)
    else:
      after = params
    is_last = p == ctx.steps - 1
    new_stats, new_scores = [], []
    for j, (w, wa, g) in enumerate(
      zip(ctx.prunable_leaves(params), ctx.prunable_leaves(after), flat_g)
    ):
      w32 = w.astype(jnp.float32)
      x = ScoreInputs(w32, wa.astype(jnp.float32), g, masks[j], p, is_last, ctx.total)
      st, s = rule.update(ctx.hp, x, stats[j], scores[j])
      s = canonicalize_scores(s)
      if not ctx.resurrect and not signed:
        s = jnp.where(masks[j], s, 0.0)  # SEVEN's (E7)
      new_stats.append(tuple(st))
      new_scores.append(s)
    ratio = schedules.cubic_keep_ratio(p, ctx.steps, ctx.final_keep)
    new_masks = ctx.select(new_scores, masks, ratio, is_last, signed=signed)
    after = ctx.apply_masks(after, new_masks)
    return after, new_masks, new_stats, new_scores, opt_state

  params = ctx.params
  masks = ctx.ones()
  zeros = [jnp.zeros(jnp.shape(w), jnp.float32) for w in ctx.prunable_leaves(params)]
  stats = [tuple(jnp.zeros_like(z) for _ in range(rule.num_stats)) for z in zeros]
  scores = zeros
  opt_state = opt.init(params) if opt is not None else None
  for p in range(ctx.steps):
    grads, _ = _mean_grad(ctx, grad_fn, ctx.apply_masks(params, masks), ctx.per_step)
    params, masks, stats, scores, opt_state = step(
      ctx.apply_masks(params, masks), masks, stats, scores, opt_state, grads, jnp.int32(p)
    )
  return masks, params


def _run_magnitude(ctx: _Context):
  scores = [jnp.abs(w.astype(jnp.float32)) for w in ctx.prunable_leaves(ctx.params)]
  return ctx.select(scores, ctx.ones(), ctx.final_keep, True), ctx.params


def _run_random(ctx: _Context):
  key = jax.random.PRNGKey(ctx.seed)
  scores = [
    jax.random.uniform(jax.random.fold_in(key, j), jnp.shape(w))
    for j, w in enumerate(ctx.prunable_leaves(ctx.params))
  ]
  return ctx.select(scores, ctx.ones(), ctx.final_keep, True), ctx.params


def snip_scores(loss_fn, params, batches, leaves_of):
  """``|W * mean_b grad L_b(W)|`` for the leaves ``leaves_of(tree)`` selects."""
  grad_fn = jax.jit(jax.grad(loss_fn))
  g = None
  for batch in batches:
    gb = grad_fn(params, batch)
    g = gb if g is None else jax.tree.map(jnp.add, g, gb)
  g = jax.tree.map(lambda x: x / len(batches), g)
  return [
    jnp.abs(w.astype(jnp.float32) * gl.astype(jnp.float32))
    for w, gl in zip(leaves_of(params), leaves_of(g))
  ]


def _run_snip(ctx: _Context):
  batches = [ctx.batches.next() for _ in range(ctx.steps)]
  scores = snip_scores(ctx.loss_fn, ctx.params, batches, ctx.prunable_leaves)
  return ctx.select(scores, ctx.ones(), ctx.final_keep, True), ctx.params


def grasp_scores(loss_fn, params, batches, leaves_of, with_prunable):
  r"""GraSP's :math:`S = -W \odot (H g)` on the selected leaves.

  :math:`g` is the mean gradient over ``batches`` and :math:`H g` the mean of
  the per-batch Hessian-vector products, by forward-over-reverse
  differentiation; the tangent is :math:`g` on the selected leaves and zero
  elsewhere, so :math:`H` is the Hessian of the selected weights.
  """
  grad_fn = jax.jit(jax.grad(loss_fn))
  g = None
  for batch in batches:
    gb = grad_fn(params, batch)
    g = gb if g is None else jax.tree.map(jnp.add, g, gb)
  g = jax.tree.map(lambda x: x / len(batches), g)
  tangent = with_prunable(jax.tree.map(jnp.zeros_like, params), leaves_of(g))

  @jax.jit
  def hvp(params, tangent, batch):
    return jax.jvp(jax.grad(lambda p: loss_fn(p, batch)), (params,), (tangent,))[1]

  hg = None
  for batch in batches:
    hb = hvp(params, tangent, batch)
    hg = hb if hg is None else jax.tree.map(jnp.add, hg, hb)
  hg = jax.tree.map(lambda x: x / len(batches), hg)
  return [
    -(w.astype(jnp.float32) * h.astype(jnp.float32))
    for w, h in zip(leaves_of(params), leaves_of(hg))
  ]


def _run_grasp(ctx: _Context):
  batches = [ctx.batches.next() for _ in range(ctx.steps)]
  s = grasp_scores(ctx.loss_fn, ctx.params, batches, ctx.prunable_leaves, ctx.with_prunable)
  # GraSP removes the highest S: keep the top-k of -S.
  keep_scores = [-x for x in s]
  return ctx.select(keep_scores, ctx.ones(), ctx.final_keep, True, signed=True), ctx.params


def force_like_scores(ctx: _Context, params, masks, grads, *, dense: bool):
  """``|W g|`` per prunable leaf: FORCE scores the dense weights (``dense``),
  Iterative SNIP the masked ones."""
  weights = ctx.prunable_leaves(params)
  if not dense:
    weights = [jnp.where(m, w, jnp.zeros_like(w)) for w, m in zip(weights, masks)]
  return [
    jnp.abs(w.astype(jnp.float32) * g.astype(jnp.float32))
    for w, g in zip(weights, ctx.prunable_leaves(grads))
  ]


def _run_force_like(ctx: _Context, *, dense: bool):
  grad_fn = jax.jit(jax.grad(ctx.loss_fn))
  masks = ctx.ones()

  @jax.jit
  def step(params, masks, grads, k):
    scores = force_like_scores(ctx, params, masks, grads, dense=dense)
    ratio = schedules.exponential_keep_ratio(k, ctx.steps, ctx.final_keep)
    return ctx.select(scores, masks, ratio, k == ctx.steps - 1)

  for k in range(ctx.steps):
    # Gradient with respect to the *effective* weights W * M (not masked), so
    # a pruned weight still has a saliency: FORCE can bring it back.
    grads, _ = _mean_grad(ctx, grad_fn, ctx.apply_masks(ctx.params, masks), ctx.per_step)
    masks = step(ctx.params, masks, grads, jnp.int32(k))
  return masks, ctx.params


def synflow_scores(apply_fn, params, leaves_of, input_shape, input_dtype=jnp.float32):
  r"""SynFlow's :math:`|W \odot \partial R/\partial W|` with :math:`R = \mathbf
  1^\top f_{|W|}(\mathbf 1)` on the selected leaves (``params`` already masked)."""

  def r(p):
    p = jax.tree.map(lambda x: jnp.abs(x) if jnp.issubdtype(x.dtype, jnp.inexact) else x, p)
    return jnp.sum(apply_fn(p, jnp.ones(input_shape, input_dtype)))

  g = jax.grad(r)(params)
  return [
    jnp.abs(w.astype(jnp.float32) * gl.astype(jnp.float32))
    for w, gl in zip(leaves_of(params), leaves_of(g))
  ]


def _run_synflow(ctx: _Context):
  if ctx.apply_fn is None or ctx.input_shape is None:
    raise ValueError(
      "method 'synflow' is data-free: pass apply_fn=(params, x) "
      "-> outputs and input_shape= (e.g. (1, 784))."
    )
  masks = ctx.ones()

  @jax.jit
  def step(params, masks, k):
    masked = ctx.apply_masks(params, masks)
    scores = synflow_scores(
      ctx.apply_fn, masked, ctx.prunable_leaves, tuple(ctx.input_shape), ctx.input_dtype
    )
    ratio = schedules.exponential_keep_ratio(k, ctx.steps, ctx.final_keep)
    return ctx.select(scores, masks, ratio, k == ctx.steps - 1)

  for k in range(ctx.steps):
    masks = step(ctx.params, masks, jnp.int32(k))
  return masks, ctx.params


def _register(method: PreMethod):
  PRE_METHODS[method.name] = method


_SEVEN_PRE = (
  "SEVEN_pre: SEVEN statistics over steps batches, cubic schedule, no weight updates by default"
)
_register(PreMethod("seven", _run_rule, 100, lambda s, b: s * b, summary=_SEVEN_PRE, rule="seven"))
_register(PreMethod("magnitude", _run_magnitude, 0, lambda s, b: 0, summary="one-shot |W|"))
# Names that only mean pre-pruning, for experiment configs that pick the
# entry point from the name (seven_jax.method_kind).
_register(
  PreMethod("seven_pre", _run_rule, 100, lambda s, b: s * b, summary=_SEVEN_PRE, rule="seven")
)
_register(
  PreMethod(
    "magnitude_pre",
    _run_magnitude,
    0,
    lambda s, b: 0,
    summary="one-shot |W| (as 'magnitude' before fine-tuning)",
  )
)
_register(PreMethod("random", _run_random, 0, lambda s, b: 0, summary="one-shot seeded random"))
_register(
  PreMethod("snip", _run_snip, 1, lambda s, b: s, summary="one-shot |W * g| (Lee et al. 2019)")
)
_register(
  PreMethod(
    "grasp",
    _run_grasp,
    1,
    lambda s, b: s,
    summary="one-shot -W * (H g), highest pruned (Wang et al. 2020)",
  )
)
_register(
  PreMethod(
    "synflow",
    _run_synflow,
    100,
    lambda s, b: 0,
    summary="data-free iterative synaptic flow (Tanaka et al. 2020)",
  )
)
_register(
  PreMethod(
    "force",
    lambda c: _run_force_like(c, dense=True),
    10,
    lambda s, b: s * b,
    resurrect=True,
    summary="FORCE: exponential schedule, dense-weight "
    "saliency, can resurrect (de Jorge et al. 2021)",
  )
)
_register(
  PreMethod(
    "iter_snip",
    lambda c: _run_force_like(c, dense=False),
    10,
    lambda s, b: s * b,
    summary="Iterative SNIP: exponential schedule, masked "
    "weights, no resurrection (de Jorge et al. 2021)",
  )
)


def _lookup(method: str) -> PreMethod:
  if method in PRE_METHODS:
    return PRE_METHODS[method]
  if method in DYNAMIC_RULES:
    rule = DYNAMIC_RULES[method]
    return PreMethod(
      method,
      _run_rule,
      100,
      lambda s, b: s * b,
      resurrect=rule.resurrect,
      summary=rule.summary,
      rule=method,
    )
  raise ValueError(
    f"unknown method {method!r} for pruning before fine-tuning; "
    f"valid names: {', '.join(methods('pre'))}."
  )


def prune_before_finetuning(
  loss_fn: Callable[[Any, Any], jax.Array],
  params: Any,
  batches: Optional[Iterable] = None,
  *,
  sparsity: Optional[float] = None,
  method: str = "seven",
  steps: Optional[int] = None,
  prunable: PrunableSpec = None,
  scope: str = "global",
  pattern: Optional[str] = None,
  resurrect: Optional[bool] = None,
  optimizer: Optional[optax.GradientTransformation] = None,
  batches_per_step: int = 1,
  seed: int = 0,
  apply_fn: Optional[Callable] = None,
  input_shape: Optional[tuple] = None,
  input_dtype: Any = jnp.float32,
  return_params: bool = False,
  **method_kwargs,
):
  r"""Prunes a pre-trained model before fine-tuning; returns the masks.

  See :mod:`seven_jax.prepruning` for every method's formula. With the
  default ``method="seven"`` this is SEVEN_pre (spec 2.4): ``steps``
  mini-batches (default 100), the gradient of the masked model on each,
  SEVEN's statistics and accumulated score, and a global top-k at the cubic
  keep ratio of step ``p`` (exactly ``1 - sparsity`` on the last). The
  weights are not updated unless ``optimizer`` is given.

  Args:
    loss_fn: ``(params, batch) -> scalar`` loss (not needed by ``magnitude``,
      ``random`` and ``synflow``; pass ``None`` there).
    params: the pre-trained parameters.
    batches: an iterable of mini-batches; the method reads
      ``steps * batches_per_step`` of them (``snip``/``grasp``: ``steps``);
      too few raise a ValueError saying how many were needed and how many
      came.
    sparsity: final fraction of pruned prunable weights, in ``[0, 1)``; with
      ``pattern`` it defaults to (and must equal) ``1 - N/M``.
    method: a name from ``seven_jax.methods("pre")``.
    steps: scoring steps; ``None`` takes the method's default (``seven`` and
      the other dynamic rules 100, ``snip``/``grasp`` 1 batch, ``force``/
      ``iter_snip`` 10 iterations, ``synflow`` 100 iterations).
    prunable: which leaves may be pruned, as in :func:`seven_jax.seven_mask`.
    scope: ``"global"`` or ``"per_leaf"`` budget.
    pattern: ``"N:M"`` pattern along axis 0 instead of top-k.
    resurrect: may weights pruned at an earlier step come back (iterative
      methods)? ``None`` takes the method's default (True for ``force``).
    optimizer: if given, ``seven`` and the other dynamic rules take one
      optimizer step of the masked model per batch while scoring (the weights
      the score sees are the post-step ones); by default the weights are
      frozen.
    batches_per_step: mini-batches averaged per step (gradient mean).
    seed: seed of ``random``.
    apply_fn, input_shape, input_dtype: for ``synflow``: ``apply_fn(params,
      x)`` gives the model output on ``x = ones(input_shape, input_dtype)``.
    return_params: also return the parameters (pruned entries exactly 0, and
      updated if ``optimizer`` was given).
    **method_kwargs: hyper-parameters of a dynamic rule (e.g. ``b1``, ``b2``).

  Returns:
    A pytree of bools shaped like ``params`` (``True`` = kept; non-prunable
    leaves all ``True``), or ``(masks, params)`` with ``return_params``.
    Fine-tune with :func:`fixed_mask`.
  """
  pre = _lookup(method)
  nm = selection.parse_pattern(pattern)
  if nm is not None:
    implied = 1.0 - nm[0] / nm[1]
    if sparsity is None:
      sparsity = implied
    elif abs(float(sparsity) - implied) > 1e-6:
      raise ValueError(
        f"sparsity={sparsity!r} contradicts pattern={pattern!r}, "
        f"which prunes exactly {implied:g}; drop one of them."
      )
  if sparsity is None or not 0.0 <= float(sparsity) < 1.0:
    raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}.")
  if scope not in selection.SCOPES:
    raise ValueError(f"scope must be one of {selection.SCOPES}, got {scope!r}.")
  steps = pre.default_steps if steps is None else int(steps)
  if pre.default_steps and steps < 1:
    raise ValueError(f"steps must be >= 1 for method {method!r}, got {steps!r}.")
  if batches_per_step < 1:
    raise ValueError(f"batches_per_step must be >= 1, got {batches_per_step!r}.")
  if optimizer is not None and pre.run is not _run_rule:
    raise ValueError(
      f"optimizer= applies to the iterative score rules "
      f"({', '.join(sorted(DYNAMIC_RULES))}), not to {method!r}."
    )
  hp = {}
  if pre.run is _run_rule:
    hp = resolve_hparams(DYNAMIC_RULES[pre.rule], method_kwargs)
  elif method_kwargs:
    raise ValueError(f"method {method!r} takes no argument(s) {', '.join(sorted(method_kwargs))}.")

  spec = resolve_prunable(prunable, params)
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  flat_spec = treedef.flatten_up_to(spec)
  idx = [i for i, s in enumerate(flat_spec) if s]
  selection.check_pattern_shapes(nm, [flat[i][1] for i in idx], [path_str(flat[i][0]) for i in idx])
  total = int(sum(np.prod(np.shape(flat[i][1]), dtype=np.int64) for i in idx))
  needed = pre.batches(steps, batches_per_step)
  why = f"steps={steps}" + (f" x batches_per_step={batches_per_step}" if needed != steps else "")
  ctx = _Context(
    method=method,
    loss_fn=loss_fn,
    params=params,
    treedef=treedef,
    idx=idx,
    total=total,
    final_keep=1.0 - float(sparsity),
    steps=steps,
    per_step=batches_per_step,
    batches=_Batches(batches, needed, method, why),
    scope=scope,
    nm=nm,
    resurrect=pre.resurrect if resurrect is None else bool(resurrect),
    optimizer=optimizer,
    seed=seed,
    apply_fn=apply_fn,
    input_shape=input_shape,
    input_dtype=input_dtype,
    hp=hp,
    rule=pre.rule,
  )
  kept, new_params = pre.run(ctx)
  full = [jnp.ones(jnp.shape(leaf), jnp.bool_) for _, leaf in flat]
  for j, i in enumerate(idx):
    full[i] = kept[j]
  masks_tree = treedef.unflatten(full)
  if return_params:
    return masks_tree, ctx.apply_masks(new_params, kept)
  return masks_tree
