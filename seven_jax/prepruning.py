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

from seven_jax import engine, schedules, selection, validation
from seven_jax.engine import FixedMaskState, fixed_mask
from seven_jax.prunable import PrunableSpec, path_str, resolve_prunable
from seven_jax.scores import DYNAMIC_RULES, PreMethod, pre_method, resolve_hparams
from seven_jax.state import freeze, masks as state_masks
from seven_jax.threshold import canonicalize_scores

__all__ = [
  "prune_before_finetuning",
  "fixed_mask",
  "FixedMaskState",
  "freeze",
  "PreMethod",
  "PreContext",
  "BatchFeed",
  "mean_grad",
  "rule_transform",
  "RUNNERS",
]


class BatchFeed:
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


class PreContext(NamedTuple):
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
  batches: BatchFeed
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
  spec: Any = None  # the resolved prunable tree
  ties: Optional[str] = None

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
      **engine.select_kwargs(self.ties),
    )

  def ones(self):
    return [jnp.ones_like(p, jnp.bool_) for p in self.prunable_leaves(self.params)]


def mean_grad(ctx: PreContext, grad_fn, params, count: int):
  """Mean gradient over ``count`` fresh batches, and the batches."""
  total, used = None, []
  for _ in range(count):
    batch = ctx.batches.next()
    used.append(batch)
    g = grad_fn(params, batch)
    total = g if total is None else jax.tree.map(jnp.add, total, g)
  return jax.tree.map(lambda x: x / count, total), used


# ------------------------------------------------------------------ runners


def rule_transform(ctx: PreContext) -> optax.GradientTransformationExtraArgs:
  """SEVEN_pre and every dynamic rule before fine-tuning: the pruning engine
  itself, over a window of ``steps`` updates from step 0, with the cubic keep
  ratio of ``K = steps`` (exactly ``1 - sparsity`` on the last step) and a
  mask chosen every step. Without ``optimizer`` the inner optimizer is
  ``optax.set_to_zero()``: the weights do not move, only pruned ones become
  0 (``W_p = W_0 * M``)."""
  return engine.build_transform(
    ctx.optimizer if ctx.optimizer is not None else optax.set_to_zero(),
    DYNAMIC_RULES[ctx.rule],
    ctx.hp,
    sparsity=1.0 - ctx.final_keep,
    start_step=0,
    pruning_steps=ctx.steps,
    prunable=ctx.spec,
    scope=ctx.scope,
    resurrect=ctx.resurrect,
    update_every=1,
    nm=ctx.nm,
    window=ctx.steps,
    name="prune_before_finetuning",
    ties=ctx.ties,
  )


def _run_rule(ctx: PreContext):
  """Any dynamic score rule along the cubic schedule over ``steps`` batches."""
  grad_fn = jax.jit(jax.grad(ctx.loss_fn))
  tx = rule_transform(ctx)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params, state = ctx.params, tx.init(ctx.params)
  for _ in range(ctx.steps):
    # The weights entering a step are already masked (the engine's update
    # zeroes pruned weights): the gradient is that of the masked model.
    grads, _ = mean_grad(ctx, grad_fn, params, ctx.per_step)
    params, state = step(params, state, grads)
  # seven_jax.masks unboxes nnx Variables, so its tree is not the params'
  # treedef; its leaves are still in the params' leaf order, one per leaf.
  flat_masks = jax.tree.leaves(state_masks(state))
  return [flat_masks[i] for i in ctx.idx], params


def _run_magnitude(ctx: PreContext):
  scores = [jnp.abs(w.astype(jnp.float32)) for w in ctx.prunable_leaves(ctx.params)]
  return ctx.select(scores, ctx.ones(), ctx.final_keep, True), ctx.params


def _run_random(ctx: PreContext):
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


def _run_snip(ctx: PreContext):
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


def _run_grasp(ctx: PreContext):
  batches = [ctx.batches.next() for _ in range(ctx.steps)]
  s = grasp_scores(ctx.loss_fn, ctx.params, batches, ctx.prunable_leaves, ctx.with_prunable)
  # GraSP removes the highest S: keep the top-k of -S.
  keep_scores = [-x for x in s]
  return ctx.select(keep_scores, ctx.ones(), ctx.final_keep, True, signed=True), ctx.params


def force_like_scores(ctx: PreContext, params, masks, grads, *, dense: bool):
  """``|W g|`` per prunable leaf: FORCE scores the dense weights (``dense``),
  Iterative SNIP the masked ones."""
  weights = ctx.prunable_leaves(params)
  if not dense:
    weights = [jnp.where(m, w, jnp.zeros_like(w)) for w, m in zip(weights, masks)]
  return [
    jnp.abs(w.astype(jnp.float32) * g.astype(jnp.float32))
    for w, g in zip(weights, ctx.prunable_leaves(grads))
  ]


def _run_force_like(ctx: PreContext, *, dense: bool):
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
    grads, _ = mean_grad(ctx, grad_fn, ctx.apply_masks(ctx.params, masks), ctx.per_step)
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


def _run_synflow(ctx: PreContext):
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


RUNNERS: dict[str, Callable] = {
  "rule": _run_rule,
  "magnitude": _run_magnitude,
  "random": _run_random,
  "snip": _run_snip,
  "grasp": _run_grasp,
  "synflow": _run_synflow,
  "force": lambda c: _run_force_like(c, dense=True),
  "iter_snip": lambda c: _run_force_like(c, dense=False),
}
"""What computes each ``PreMethod.runner`` (the table is :data:`seven_jax.scores.PRE_METHODS`)."""


def check_rule_hparams(hp: dict) -> dict:
  """Range and type checks of the hyper-parameters the rules share."""
  for name in ("b1", "b2"):
    if name in hp:
      validation.check_fraction(name, hp[name])
  for name in ("signed_first_moment", "correction"):
    if name in hp:
      validation.check_bool(name, hp[name])
  if "eps" in hp:
    validation.check_range("eps", hp["eps"], 0.0)
  return hp


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
  ties: Optional[str] = None,
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
    ties: how the threshold treats scores tied with the k-th
      (:func:`seven_jax.selection.select_masks`); ``None`` takes its default.
    **method_kwargs: hyper-parameters of a dynamic rule (e.g. ``b1``, ``b2``;
      ``correction=False`` for SEVEN_pre without its noise correction).

  Returns:
    A pytree of bools shaped like ``params`` (``True`` = kept; non-prunable
    leaves all ``True``), or ``(masks, params)`` with ``return_params``.
    Fine-tune with :func:`fixed_mask`.
  """
  pre = pre_method(method)
  nm = selection.parse_pattern(pattern)
  if nm is not None:
    implied = 1.0 - nm[0] / nm[1]
    if sparsity is None:
      sparsity = implied
    elif abs(validation.check_fraction("sparsity", sparsity) - implied) > 1e-6:
      raise ValueError(
        f"sparsity={sparsity!r} contradicts pattern={pattern!r}, "
        f"which prunes exactly {implied:g}; drop one of them."
      )
  if sparsity is None:
    raise ValueError("sparsity is required: a float in [0, 1) (or a pattern such as '2:4').")
  sparsity = validation.check_fraction("sparsity", sparsity)
  validation.check_choice("scope", scope, selection.SCOPES)
  steps = pre.default_steps if steps is None else validation.check_int("steps", steps, 0)
  if pre.default_steps and steps < 1:
    raise ValueError(f"steps must be >= 1 for method {method!r}, got {steps!r}.")
  batches_per_step = validation.check_int("batches_per_step", batches_per_step, 1)
  validation.check_int("seed", seed)
  validation.check_bool("return_params", return_params)
  if resurrect is not None:
    resurrect = validation.check_bool("resurrect", resurrect)
  if optimizer is not None and pre.runner != "rule":
    raise ValueError(
      f"optimizer= applies to the iterative score rules "
      f"({', '.join(sorted(DYNAMIC_RULES))}), not to {method!r}."
    )
  hp = {}
  if pre.runner == "rule":
    hp = check_rule_hparams(resolve_hparams(DYNAMIC_RULES[pre.rule], method_kwargs))
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
  ctx = PreContext(
    method=method,
    loss_fn=loss_fn,
    params=params,
    treedef=treedef,
    idx=idx,
    total=total,
    final_keep=1.0 - float(sparsity),
    steps=steps,
    per_step=batches_per_step,
    batches=BatchFeed(batches, needed, method, why),
    scope=scope,
    nm=nm,
    resurrect=pre.resurrect if resurrect is None else resurrect,
    optimizer=optimizer,
    seed=seed,
    apply_fn=apply_fn,
    input_shape=input_shape,
    input_dtype=input_dtype,
    hp=hp,
    rule=pre.rule,
    spec=spec,
    ties=engine.check_ties(ties),
  )
  kept, new_params = RUNNERS[pre.runner](ctx)
  full = [jnp.ones_like(leaf, jnp.bool_) for _, leaf in flat]
  for j, i in enumerate(idx):
    full[i] = kept[j]
  masks_tree = treedef.unflatten(full)
  if return_params:
    return masks_tree, ctx.apply_masks(new_params, kept)
  return masks_tree
