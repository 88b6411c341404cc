"""SEVEN's per-weight gradient statistics and score (spec 2.1, equations E1-E7).

For every prunable weight SEVEN keeps Adam-like exponential moving averages of
the absolute gradient and of the squared gradient,

.. math::

   m_p = \\alpha_1 m_{p-1} + (1 - \\alpha_1)\\,|g_p|, \\qquad
   v_p = \\alpha_2 v_{p-1} + (1 - \\alpha_2)\\,g_p^2,

bias-corrected by the local step ``p + 1``, and accumulates the score

.. math::

   S_p = S_{p-1} + \\left| W_p \\odot |g_p| \\odot
         \\frac{\\hat m_p}{\\sqrt{\\hat v_p} + \\epsilon} \\right|.

The factor :math:`\\hat m / (\\sqrt{\\hat v} + \\epsilon) \\approx
1 / \\sqrt{1 + \\eta^2}` shrinks the score of weights whose gradient varies a
lot between batches (large relative gradient variation :math:`\\eta`): those
are the *temporary sentinels* one-shot scores such as SNIP's keep by mistake.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["SevenStats", "init_seven_stats", "update_seven_stats", "seven_score_increment"]


class SevenStats(NamedTuple):
  """EMAs for one weight array (float32, the weight's shape)."""

  grad_ema: jax.Array  # m: EMA of |g| (or of g with ``signed_first_moment``)
  sq_grad_ema: jax.Array  # v: EMA of g**2


def init_seven_stats(param: jax.Array) -> SevenStats:
  zeros = jnp.zeros(jnp.shape(param), jnp.float32)
  return SevenStats(zeros, zeros)


def finite_or_zero(x: jax.Array) -> jax.Array:
  """Non-finite gradient entries count as zero: no NaN reaches the scores."""
  x = jnp.asarray(x, jnp.float32)
  return jnp.where(jnp.isfinite(x), x, 0.0)


def update_seven_stats(
  stats: SevenStats, grad: jax.Array, b1, b2, *, signed_first_moment: bool = False
) -> SevenStats:
  """(E2)-(E3): one EMA step with this call's (masked) gradient."""
  g = finite_or_zero(grad)
  first = g if signed_first_moment else jnp.abs(g)
  m = b1 * stats.grad_ema + (1.0 - b1) * first
  v = b2 * stats.sq_grad_ema + (1.0 - b2) * g * g
  return SevenStats(m, v)


def seven_score_increment(
  weight_after_step: jax.Array, grad: jax.Array, stats: SevenStats, local_step, b1, b2, eps
) -> jax.Array:
  """(E4)-(E6): ``|W * |g| * m_hat / (sqrt(v_hat) + eps)|``, float32.

  Args:
    weight_after_step: ``W_p``, the weights after this step's optimizer update
      and before this step's new mask (the official ordering).
    grad: this step's gradient (already masked).
    stats: the statistics *after* :func:`update_seven_stats`.
    local_step: ``p``, 0 at the first pruning step; the bias correction uses
      ``p + 1``.
  """
  count = jnp.asarray(local_step, jnp.float32) + 1.0
  m_hat = stats.grad_ema / (1.0 - b1**count)
  denominator = jnp.sqrt(stats.sq_grad_ema / (1.0 - b2**count)) + eps
  g = jnp.abs(finite_or_zero(grad))
  w = jnp.asarray(weight_after_step, jnp.float32)
  return jnp.abs(w * g * m_hat / denominator)
