"""Keep-ratio schedules: which fraction of the prunable weights survives a step.

All functions accept traced values (they are used inside ``jax.jit`` and under
``optax.inject_hyperparams``) and return float32 scalars.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["cubic_keep_ratio", "exponential_keep_ratio", "keep_count"]


def cubic_keep_ratio(step, pruning_steps, final_keep):
  """Cubic schedule of Zhu & Gupta (2017), as in the official SEVEN code.

  .. math::

     r_p = r_f + (1 - r_f) \\left(1 - \\frac{p + 1}{N}\\right)^3

  Args:
    step: 0-based pruning step ``p`` (the official ``iter_num`` counter).
    pruning_steps: ``N``; with ``p = 0 .. N - 2`` the last ratio is
      ``r_f + (1 - r_f) / N^3``, within a hair of ``r_f``.
    final_keep: ``r_f = 1 - sparsity``.
  """
  progress = jnp.clip(
    (jnp.asarray(step, jnp.float32) + 1.0) / jnp.asarray(pruning_steps, jnp.float32), 0.0, 1.0
  )
  final_keep = jnp.asarray(final_keep, jnp.float32)
  return final_keep + (1.0 - final_keep) * (1.0 - progress) ** 3


def exponential_keep_ratio(step, num_steps, final_keep):
  """Exponential schedule of FORCE / Iterative SNIP: ``r_f ** ((p + 1) / K)``."""
  progress = jnp.clip(
    (jnp.asarray(step, jnp.float32) + 1.0) / jnp.asarray(num_steps, jnp.float32), 0.0, 1.0
  )
  return jnp.asarray(final_keep, jnp.float32) ** progress


def keep_count(ratio, total: int) -> jax.Array:
  """``floor(ratio * total)`` as int32, the official ``int(keep_ratio * D)``.

  Computed in float32: for ``total`` beyond 2**24 the product can differ from
  a float64 evaluation by a few weights.
  """
  return jnp.floor(jnp.asarray(ratio, jnp.float32) * jnp.float32(total)).astype(jnp.int32)
