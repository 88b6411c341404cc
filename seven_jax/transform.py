"""``seven_mask``: SEVEN_dyn pruning as an optax gradient transformation."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from seven_jax.prunable import PrunableSpec

__all__ = ["seven_mask", "SevenMaskState", "AllKept", "masks", "find_state"]

_NO_PARAMS_MSG = "seven_mask needs the current parameters: call tx.update(grads, state, params)."
_SCOPES = ("global", "per_leaf")


class SevenMaskState(NamedTuple):
  """State of :func:`seven_mask`. Every field is an array (no ``None``).

  Attributes:
    count: int32, number of ``update`` calls so far (``t``).
    masks: bool, shaped like params for prunable leaves; ``True`` = kept.
      Non-prunable leaves hold an :class:`AllKept` (no memory); :func:`masks`
      returns them as all-``True`` arrays.
    grad_ema: EMA of ``|g|`` (``m``) for prunable leaves, in ``stats_dtype``
      (float32 by default); a 0-d placeholder for the others, so they cost no
      memory.
    sq_grad_ema: EMA of ``g**2`` (``v``), same layout.
    scores: accumulated SEVEN scores ``S``, same layout.
    inner_state: state of the wrapped optimizer.
  """

  count: jax.Array
  masks: Any
  grad_ema: Any
  sq_grad_ema: Any
  scores: Any
  inner_state: Any


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _check_range(name, value, low, high, *, low_open=False, high_open=True):
  """Eager argument checks; skipped for traced values (inject_hyperparams)."""
  if not _is_concrete(value):
    return
  v = float(np.asarray(value))
  too_low = v <= low if low_open else v < low
  too_high = v >= high if high_open else v > high
  if too_low or too_high or not np.isfinite(v):
    lb = "(" if low_open else "["
    rb = ")" if high_open else "]"
    raise ValueError(f"{name} must be in {lb}{low}, {high}{rb}, got {value!r}.")


def seven_mask(
  inner: optax.GradientTransformation,
  sparsity: float = 0.6,
  start_step: int = 1000,
  pruning_steps: int = 4000,
  b1: float = 0.8,
  b2: float = 0.9,
  prunable: PrunableSpec = None,
  *,
  eps: float = 1e-9,
  update_every: int = 1,
  scope: str = "global",
  resurrect: bool = False,
  signed_first_moment: bool = False,
  stats_dtype=jnp.float32,
) -> optax.GradientTransformationExtraArgs:
  r"""Prunes while fine-tuning with SEVEN (SEVEN_dyn), wrapping an optimizer.

  ``seven_mask`` wraps the optimizer that moves the kept weights (``inner``)
  because SEVEN needs the raw gradients while exact zeros need the final
  update. On the ``t``-th call (0-based) of ``update``:

  1. The gradient is masked, ``g <- M * g``, exactly the gradient of the
     official masked forward ``W * M``, and ``inner`` computes ``u``.
  2. Inside the pruning window ``start_step <= t < start_step + N - 1``
     (``N = pruning_steps``), with ``p = t - start_step`` and the weights after
     the inner step ``W_p = params + u``:

     .. math::

        m &\leftarrow \beta_1 m + (1-\beta_1)|g|, \quad
        v \leftarrow \beta_2 v + (1-\beta_2) g^2, \\
        S &\leftarrow S + \left|W_p \odot |g| \odot
            \frac{m / (1-\beta_1^{p+1})}{\sqrt{v / (1-\beta_2^{p+1})}
            + \epsilon}\right|, \qquad S[M = 0] \leftarrow 0, \\
        r_p &= r_f + (1 - r_f)\left(1 - \frac{p+1}{N}\right)^3, \quad
        r_f = 1 - \text{sparsity},

     and the new mask keeps the ``k = floor(r_p D)`` largest scores over all
     ``D`` prunable weights (one global pool, no per-layer quota; entries
     tied with the k-th score are all kept, as ``S >= topk(S, k)[-1]`` in the
     official code). The threshold is exact but found by counting, without
     sorting or concatenating the scores (:mod:`seven_jax.threshold`).
  3. The emitted update is ``where(M, u, -params)``, so after
     ``optax.apply_updates`` every pruned weight is exactly 0. Outside the
     window the mask is frozen and still enforced.

  Non-finite gradient entries count as zero in the statistics and scores
  (they never put NaN into scores or masks); the inner optimizer still sees
  them as they are, so pair with ``optax.apply_if_finite`` if needed.

  Args:
    inner: the optimizer that updates the kept weights, e.g.
      ``optax.adamw(2e-5)``.
    sparsity: final fraction of prunable weights that are exactly zero, in
      ``[0, 1)``.
    start_step: ``t_i``, dense update calls before pruning starts (>= 0).
    pruning_steps: ``N`` (>= 2), length of the cubic ramp; the official code
      updates the mask on ``N - 1`` steps.
    b1: EMA rate of ``|g|`` (official ``alpha_1``), in ``[0, 1)``.
    b2: EMA rate of ``g**2`` (official ``alpha_2``), in ``[0, 1)``.
    prunable: pytree of bools shaped like params, or a callable
      ``params -> such a pytree``; ``None`` prunes every array with
      ``ndim >= 2``. Use a model preset for Transformers. Under
      ``optax.inject_hyperparams`` pass ``static_args=("prunable",)``.
    eps: added after the square root (official ``1e-9``).
    update_every: recompute the mask every this many window steps (the last
      window step always updates it); statistics are updated every step.
    scope: ``"global"`` (one pool, the official behaviour) or ``"per_leaf"``
      (every leaf pruned to the same ratio).
    resurrect: if True, pruned weights keep their score and may come back;
      by default masks only shrink.
    signed_first_moment: use the EMA of the signed gradient for ``m`` (the
      Balles & Hennig sign-aware variant, ``|m_hat|`` in the score) instead
      of the official EMA of ``|g|``.
    stats_dtype: storage of ``m``, ``v`` and ``S``: ``jnp.float32`` (12 bytes
      per prunable weight, plus 1 for the mask) or ``jnp.bfloat16`` (6 + 1),
      stochastically rounded so that the accumulated score stays unbiased
      (:mod:`seven_jax.storage`). Every step computes in float32.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`. Read the masks with
    :func:`seven_jax.masks` (works on the state of any chain or wrapper).

  Examples:
    >>> import jax.numpy as jnp, optax, seven_jax
    >>> params = {"w": jnp.arange(1.0, 7.0).reshape(2, 3), "b": jnp.zeros(3)}
    >>> tx = seven_jax.seven_mask(optax.sgd(0.1), sparsity=0.5,
    ...                           start_step=0, pruning_steps=2)
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> int(seven_jax.masks(state)["w"].sum())
    3

  References:
    Xiao et al, `Pruning Transformer Model by Reserving Sentinels
    <https://arxiv.org/abs/2403.12688>`_, 2024
  """
  _check_range("sparsity", sparsity, 0.0, 1.0)
  _check_range("b1", b1, 0.0, 1.0)
  _check_range("b2", b2, 0.0, 1.0)
  _check_range("eps", eps, 0.0, np.inf)
  if _is_concrete(start_step) and int(np.asarray(start_step)) < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step!r}.")
  if _is_concrete(pruning_steps) and int(np.asarray(pruning_steps)) < 2:
    raise ValueError(f"pruning_steps must be >= 2, got {pruning_steps!r}.")
  if _is_concrete(update_every) and int(np.asarray(update_every)) < 1:
    raise ValueError(f"update_every must be >= 1, got {update_every!r}.")
  if scope not in _SCOPES:
    raise ValueError(f"scope must be one of {_SCOPES}, got {scope!r}.")
  # One engine for every method (seven_jax.engine); SEVEN is its "seven"
  # score rule, with the state laid out in the SevenMaskState fields.
  from seven_jax import engine, scores  # imported here: engine imports us

  hp = dict(b1=b1, b2=b2, eps=eps, signed_first_moment=signed_first_moment)
  return engine.build_transform(
    inner,
    scores.get_rule("seven"),
    hp,
    sparsity=sparsity,
    start_step=start_step,
    pruning_steps=pruning_steps,
    prunable=prunable,
    scope=scope,
    resurrect=resurrect,
    update_every=update_every,
    stats_dtype=stats_dtype,
    pack=lambda c, m, st, s, i: SevenMaskState(c, m, st[0], st[1], s, i),
    unpack=lambda s: (s.count, s.masks, (s.grad_ema, s.sq_grad_ema), s.scores, s.inner_state),
    name="seven_mask",
  )


def _unwrap_variable(x):
  # flax.nnx stores optimizer state leaves in Variable boxes.
  return x.value if hasattr(x, "value") and not isinstance(x, jax.Array) else x


# State types that hold masks: seven_mask's, and those the other entry points
# (seven_jax.engine, seven_jax.prepruning) register when imported.
_MASK_STATE_TYPES = [SevenMaskState]


def find_state(opt_state) -> SevenMaskState:
  """The mask state (:class:`SevenMaskState`, or that of ``pruning_mask`` or
  ``fixed_mask``) inside any chain, wrapper or nnx optimizer."""
  types = tuple(_MASK_STATE_TYPES)
  found = [
    x
    for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, types))
    if isinstance(x, types)
  ]
  if not found:
    raise ValueError("No seven_mask state found in this optimizer state.")
  if len(found) > 1:
    raise ValueError(
      f"Found {len(found)} seven_mask states; pass the one you mean (e.g. opt_state[0])."
    )
  return found[0]


def masks(opt_state) -> Any:
  """Pytree of bool arrays like params (``True`` = kept) from an optimizer state.

  Works on the state of ``seven_mask`` itself, of any ``optax.chain``,
  ``optax.inject_hyperparams`` or ``optax.MultiSteps`` around it, of a Flax
  ``TrainState`` (``state.opt_state``) and of ``nnx.Optimizer.opt_state``.
  """
  state = find_state(opt_state)
  is_leaf = lambda x: hasattr(x, "value") or isinstance(x, AllKept)
  return jax.tree.map(lambda x: _expand_mask(_unwrap_variable(x)), state.masks, is_leaf=is_leaf)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class AllKept:
  """The mask of a leaf that is never pruned: all ``True``, of this shape.

  A static pytree node (no array leaves), so a non-prunable leaf costs no
  memory in the optimizer state, no bytes in a checkpoint and no transfer
  under sharding; :func:`masks` turns it into an array.
  """

  shape: tuple


def _expand_mask(mask):
  return jnp.ones(mask.shape, jnp.bool_) if isinstance(mask, AllKept) else mask
