r"""Per-weight gradient statistics: relative gradient variation and SEVEN's factor.

Relative gradient variation (RGV, spec 1.6) of weight :math:`i` over a window
of :math:`n` mini-batch gradients :math:`g_{1..n,i}`, in its two readings:

.. math::

   \eta_i^2 = \frac{\operatorname{Var}_t(g_{t,i})}{(\mathbb E_t\, g_{t,i})^2}
   \quad\text{(sign-aware)}, \qquad
   \tilde\eta_i^2 = \frac{\operatorname{Var}_t(|g_{t,i}|)}
   {(\mathbb E_t\, |g_{t,i}|)^2}
   \quad\text{(magnitude)}.

Moments are population moments (``ddof=0``) of the window, so that
:math:`\mathbb E|g| / \sqrt{\mathbb E g^2} = 1/\sqrt{1 + \tilde\eta^2}`
holds exactly: this is the equal-weight version of SEVEN's factor
:math:`\rho = \hat m / (\sqrt{\hat v} + \epsilon)`, which
:func:`seven_factor` reads from a live state (exponential weights instead of
equal ones).

Everything streams: :func:`rgv_init` / :func:`rgv_update` keep Welford's
running mean and sum of squared deviations per weight (4 float32 numbers per
weight, no stack of gradients), :func:`rgv_update` is a pure function of
pytrees (``jax.jit`` it, or use :func:`relative_gradient_variation`, which
does) and :func:`rgv_finalize` gives both ratios.

A ratio with a zero mean is ``inf`` when the variance is positive (a gradient
that averages out), and ``nan`` when the gradient was exactly 0 on every batch
(e.g. a pruned weight): no variation can be measured there.
"""

from __future__ import annotations

import functools

from typing import Any, Callable, Iterable, NamedTuple, Optional

import jax
import jax.numpy as jnp

__all__ = [
  "RGVState",
  "RGV",
  "rgv_init",
  "rgv_update",
  "rgv_finalize",
  "relative_gradient_variation",
  "rgv_from_samples",
  "ema_factor",
  "seven_factor",
  "local_steps",
]


class RGVState(NamedTuple):
  """Welford accumulators over a window of gradients (float32, params' layout).

  Attributes:
    count: int32 number of gradients seen.
    mean: running mean of ``g``.
    m2: running sum of squared deviations of ``g`` from its mean.
    abs_mean: running mean of ``|g|``.
    abs_m2: running sum of squared deviations of ``|g|``.
  """

  count: jax.Array
  mean: Any
  m2: Any
  abs_mean: Any
  abs_m2: Any


class RGV(NamedTuple):
  """Both readings of the relative gradient variation, and the window moments.

  Attributes:
    signed: :math:`\\operatorname{Var}(g)/\\mathbb E[g]^2` per weight.
    magnitude: :math:`\\operatorname{Var}(|g|)/\\mathbb E[|g|]^2` per weight.
    mean: :math:`\\mathbb E[g]`.
    abs_mean: :math:`\\mathbb E[|g|]`.
    count: number of gradients in the window.
  """

  signed: Any
  magnitude: Any
  mean: Any
  abs_mean: Any
  count: jax.Array


def _f32(x):
  return jnp.asarray(x, jnp.float32)


def rgv_init(params: Any) -> RGVState:
  """Empty accumulators shaped like ``params`` (or like a gradient)."""
  zeros = lambda: jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)
  return RGVState(jnp.zeros([], jnp.int32), zeros(), zeros(), zeros(), zeros())


def rgv_update(state: RGVState, grads: Any) -> RGVState:
  """Adds one gradient pytree to the window (Welford's update, pure, jit-able).

  With :math:`n` the new count, :math:`\\delta = x - \\mu_{n-1}`:
  :math:`\\mu_n = \\mu_{n-1} + \\delta/n`,
  :math:`M_{2,n} = M_{2,n-1} + \\delta (x - \\mu_n)`, for ``x = g`` and
  ``x = |g|``. Non-finite entries count as 0 (as in SEVEN's statistics).
  """
  n = state.count + 1
  nf = n.astype(jnp.float32)

  def welford(mean, m2, x):
    delta = x - mean
    new_mean = mean + delta / nf
    return new_mean, m2 + delta * (x - new_mean)

  def one(mean, m2, abs_mean, abs_m2, g):
    g = _f32(g)
    g = jnp.where(jnp.isfinite(g), g, 0.0)
    mean, m2 = welford(mean, m2, g)
    abs_mean, abs_m2 = welford(abs_mean, abs_m2, jnp.abs(g))
    return mean, m2, abs_mean, abs_m2

  treedef = jax.tree.structure(state.mean)
  out = [
    one(*args)
    for args in zip(
      *(treedef.flatten_up_to(t) for t in (state.mean, state.m2, state.abs_mean, state.abs_m2)),
      treedef.flatten_up_to(grads),
    )
  ]
  fields = [treedef.unflatten([o[k] for o in out]) for k in range(4)]
  return RGVState(n, *fields)


def _ratio(var, mean):
  sq = mean * mean
  # 0/0 (no gradient at all) is nan; var/0 is inf.
  return jnp.where(sq > 0, var / jnp.where(sq > 0, sq, 1.0), jnp.where(var > 0, jnp.inf, jnp.nan))


def rgv_finalize(state: RGVState, ddof: int = 0) -> RGV:
  """Both RGV readings from the accumulators.

  Args:
    state: from :func:`rgv_update` (at least ``ddof + 1`` gradients).
    ddof: 0 for population moments (the default, which makes
      ``1/sqrt(1 + magnitude)`` equal ``E|g|/sqrt(E g^2)`` exactly), 1 for
      the unbiased sample variance.
  """
  if ddof not in (0, 1):
    raise ValueError(f"ddof must be 0 or 1, got {ddof!r}.")
  denom = jnp.maximum(state.count - ddof, 1).astype(jnp.float32)
  signed = jax.tree.map(lambda m2, mu: _ratio(m2 / denom, mu), state.m2, state.mean)
  magnitude = jax.tree.map(lambda m2, mu: _ratio(m2 / denom, mu), state.abs_m2, state.abs_mean)
  return RGV(signed, magnitude, state.mean, state.abs_mean, state.count)


def relative_gradient_variation(
  grad_fn: Callable[[Any, Any], Any],
  params: Any,
  batches: Iterable,
  *,
  num_batches: Optional[int] = None,
  ddof: int = 0,
) -> RGV:
  """RGV of every weight over a window of mini-batches, streamed under jit.

  Args:
    grad_fn: ``(params, batch) -> gradient pytree``, e.g.
      ``jax.grad(loss_fn)``; it is jitted together with the Welford update
      (one compiled step per batch shape, reused by later calls with the same
      ``grad_fn`` object) and nothing leaves the device.
    params: where the gradients are taken (held fixed: the pre-pruning
      reading; pass masked weights to measure a pruned model).
    batches: an iterable of batches.
    num_batches: stop after this many (default: exhaust ``batches``).
    ddof: see :func:`rgv_finalize`.
  """
  if num_batches is not None and num_batches < 1:
    raise ValueError(f"num_batches must be >= 1, got {num_batches!r}.")

  state = None
  for i, batch in enumerate(batches):
    if num_batches is not None and i >= num_batches:
      break
    batch = jax.tree.map(jnp.asarray, batch)
    if state is None:
      state = rgv_init(jax.eval_shape(grad_fn, params, batch))
    # params is an argument, not a constant baked into the program; the
    # compiled step is reused across calls with the same grad_fn.
    state = _rgv_step(grad_fn, state, params, batch)
  if state is None:
    raise ValueError("batches is empty: relative_gradient_variation needs at least one batch.")
  return rgv_finalize(state, ddof)


@functools.partial(jax.jit, static_argnums=0)
def _rgv_step(grad_fn, state, params, batch):
  return rgv_update(state, grad_fn(params, batch))


def rgv_from_samples(grads: jax.Array, axis: int = 0, ddof: int = 0) -> RGV:
  """Both readings from a stack of gradients (the window along ``axis``).

  The direct two-pass formula, for small arrays and as a cross-check of the
  streaming :func:`rgv_update`.
  """
  g = _f32(grads)
  mean, abs_mean = g.mean(axis), jnp.abs(g).mean(axis)
  return RGV(
    _ratio(g.var(axis, ddof=ddof), mean),
    _ratio(jnp.abs(g).var(axis, ddof=ddof), abs_mean),
    mean,
    abs_mean,
    jnp.int32(g.shape[axis]),
  )


# ------------------------------------------------------------- SEVEN factor


def ema_factor(grad_ema, sq_grad_ema, steps, b1: float = 0.8, b2: float = 0.9, eps: float = 1e-9):
  r"""SEVEN's per-weight factor :math:`\rho = \hat m / (\sqrt{\hat v} + \epsilon)`.

  :math:`\hat m = m / (1 - \beta_1^n)`, :math:`\hat v = v / (1 - \beta_2^n)`
  with :math:`n` = ``steps``, the number of EMA updates so far (the local
  step ``p + 1`` of spec 2.1, E4-E5). ``steps`` may be an array (it
  broadcasts); where it is 0 no statistics exist and the factor is ``nan``.
  With a signed first moment pass ``|m|``.
  """
  n = _f32(steps)
  valid = n > 0
  n = jnp.where(valid, n, 1.0)
  m_hat = _f32(grad_ema) / (1.0 - b1**n)
  d = jnp.sqrt(_f32(sq_grad_ema) / (1.0 - b2**n)) + eps
  return jnp.where(valid, m_hat / d, jnp.nan)


def local_steps(count, start_step: int, pruning_steps: Optional[int] = None):
  """How many EMA updates a SEVEN state holds after ``count`` update calls.

  The statistics are updated on calls ``t = start_step .. start_step + N - 2``
  (``N = pruning_steps``), and ``count`` is the number of calls made, so the
  bias-correction step is ``clip(count - start_step, 0, N - 1)``. Without
  ``pruning_steps`` the window is assumed still open (no upper clip).
  """
  n = jnp.asarray(count, jnp.int32) - int(start_step)
  n = jnp.maximum(n, 0)
  if pruning_steps is not None:
    n = jnp.minimum(n, int(pruning_steps) - 1)
  return n


def seven_factor(
  opt_state: Any,
  *,
  start_step: int,
  pruning_steps: Optional[int] = None,
  b1: float = 0.8,
  b2: float = 0.9,
  eps: float = 1e-9,
  signed_first_moment: bool = False,
) -> Any:
  r"""SEVEN's factor :math:`\hat m/(\sqrt{\hat v}+\epsilon)` read from a live state.

  Args:
    opt_state: any optimizer state holding one ``seven_mask`` (or
      ``pruning_mask(method="seven")``) state, found with
      :func:`seven_jax.find_state`.
    start_step, pruning_steps: the values the transformation was built with;
      the state's ``count`` alone does not say when the EMAs started, so the
      bias-correction step is derived as in :func:`local_steps`.
    b1, b2, eps: the transformation's (defaults: the official ones).
    signed_first_moment: the state's ``m`` is the signed EMA (use ``|m|``).

  Returns:
    A pytree like the state's ``grad_ema``: the factor (float32) for every
    prunable leaf, ``None`` for non-prunable leaves (which carry a
    placeholder without statistics). Where no EMA update happened yet the factor is ``nan``.
  """
  from seven_jax import find_state  # imported here: seven_jax imports nothing of us

  state = find_state(opt_state)
  for name in ("count", "grad_ema", "sq_grad_ema"):
    if not hasattr(state, name):
      raise TypeError(
        f"the mask state in opt_state is a {type(state).__name__} without "
        f"'{name}': seven_factor needs a SEVEN state (seven_mask)."
      )
  n = local_steps(_unbox(state.count), start_step, pruning_steps)

  def leaf(m, v):
    m, v = _unbox(m), _unbox(v)
    if _is_placeholder(m) or jnp.ndim(m) == 0:  # a non-prunable leaf
      return None
    m = jnp.abs(_f32(m)) if signed_first_moment else m
    return ema_factor(m, v, n, b1, b2, eps)

  is_leaf = lambda x: _is_box(x) or _is_placeholder(x)
  return jax.tree.map(leaf, state.grad_ema, state.sq_grad_ema, is_leaf=is_leaf)


def _is_placeholder(x) -> bool:
  # Non-prunable leaves carry no statistics: a 0-d array, or an empty node
  # (optax.MaskedNode, seven_jax's AllKept) depending on the library version.
  return type(x).__name__ in ("MaskedNode", "AllKept")


def _is_box(x) -> bool:
  # flax.nnx keeps optimizer-state leaves in Variable boxes.
  return hasattr(x, "value") and not isinstance(x, jax.Array)


def _unbox(x):
  return x.value if _is_box(x) else x
