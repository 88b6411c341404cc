"""``seven_mask``: SEVEN_dyn pruning as an optax gradient transformation."""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp  # noqa: F401 - the doctest below
import optax

from seven_jax import engine, validation
from seven_jax.prunable import PrunableSpec
from seven_jax.scores import get_rule
from seven_jax.state import SevenMaskState, find_state, masks

__all__ = ["seven_mask", "SevenMaskState", "masks", "find_state"]


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
  correction: bool = True,
  stats_dtype="float32",
  ties: Optional[str] = None,
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
    start_step: ``t_i``, dense update calls before pruning starts (an
      integer >= 0).
    pruning_steps: ``N`` (an integer >= 2), length of the cubic ramp; the
      official code updates the mask on ``N - 1`` steps.
    b1: EMA rate of ``|g|`` (official ``alpha_1``), in ``[0, 1)``.
    b2: EMA rate of ``g**2`` (official ``alpha_2``), in ``[0, 1)``.
    prunable: pytree of bools shaped like params, or a callable
      ``params -> such a pytree``; ``None`` prunes every floating array with
      ``ndim >= 2`` except embedding tables (a path with ``embed`` in a key,
      see :func:`seven_jax.default_prunable`). Use a model preset for
      Transformers.
    eps: added after the square root (official ``1e-9``), >= 0.
    update_every: recompute the mask every this many window steps (an
      integer >= 1; the last window step always updates it); statistics are
      updated every step.
    scope: ``"global"`` (one pool, the official behaviour) or ``"per_leaf"``
      (every leaf pruned to the same ratio).
    resurrect: if True, pruned weights keep their score and may come back;
      by default masks only shrink.
    signed_first_moment: use the EMA of the signed gradient for ``m`` (the
      Balles & Hennig sign-aware variant, ``|m_hat|`` in the score) instead
      of the official EMA of ``|g|``.
    correction: if False, the ablation without SEVEN's noise correction: the
      increment is ``|W_p * g|`` (the accumulated first-order Taylor score
      along the same cubic schedule).
    stats_dtype: storage of the EMAs ``m`` and ``v``: ``"float32"`` (with
      the float32 score ``S`` and the mask, 13 bytes per prunable weight) or
      ``"bfloat16"`` (9 bytes), stochastically rounded so that they stay
      unbiased (:mod:`seven_jax.storage`); the dtypes ``jnp.float32`` /
      ``jnp.bfloat16`` work too. ``S`` is always float32 (a bfloat16 ``S``
      drifts by ~``0.0013 sqrt(P)`` after ``P`` steps, and its clustered
      values slowed the threshold). Every step computes in float32.
    ties: how the threshold treats scores tied with the k-th
      (:func:`seven_jax.selection.select_masks`); ``None`` takes its default.

  Under ``optax.inject_hyperparams`` pass ``static_args=("prunable",)``
  (and ``"stats_dtype"`` if you pass a dtype object rather than its name: a
  dtype is callable, so inject_hyperparams would take it for a schedule).
  ``sparsity``, ``start_step``, ``pruning_steps``, ``update_every``, ``b1``
  and ``b2`` can be injected; values out of range are clipped where they are
  used, as they cannot raise under ``jit``: ``sparsity`` into
  ``[0, 1 - 1/D]`` (``D`` prunable weights: at least one is kept),
  ``start_step`` to ``>= 0``, ``pruning_steps`` to ``>= 2``,
  ``update_every`` to ``>= 1``, ``b1`` and ``b2`` into ``[0, 1)`` (the
  largest float32 below 1).

  Works inside ``optax.chain``, ``optax.masked``, ``optax.MultiSteps``,
  Flax's ``TrainState`` and ``nnx.Optimizer``; ``inner`` may be
  ``optax.lookahead(...)`` (params then are ``optax.LookaheadParams``: fast
  and slow weights are both exactly 0 where pruned) or
  ``optax.contrib.schedule_free(...)`` (its ``z`` is masked too, so
  ``optax.contrib.schedule_free_eval_params`` is exactly 0 where pruned).
  As the *outer* transformation of ``seven_mask``, ``optax.lookahead`` would
  average pruned slow weights towards 0 without reaching it: put it inside.
  Complex prunable leaves raise a TypeError naming the leaf.

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
  engine.check_schedule_args(sparsity, start_step, pruning_steps)
  validation.check_fraction("b1", b1)
  validation.check_fraction("b2", b2)
  validation.check_range("eps", eps, 0.0)
  validation.check_int("update_every", update_every, 1)
  validation.check_choice("scope", scope, ("global", "per_leaf"))
  hp = dict(
    b1=b1,
    b2=b2,
    eps=eps,
    signed_first_moment=validation.check_bool("signed_first_moment", signed_first_moment),
    correction=validation.check_bool("correction", correction),
  )
  return engine.build_transform(
    inner,
    get_rule("seven"),
    engine.clip_traced_rates(hp),
    sparsity=sparsity,
    start_step=start_step,
    pruning_steps=pruning_steps,
    prunable=prunable,
    scope=scope,
    resurrect=validation.check_bool("resurrect", resurrect),
    update_every=update_every,
    stats_dtype=stats_dtype,
    state_type=SevenMaskState,
    name="seven_mask",
    ties=engine.check_ties(ties),
  )
