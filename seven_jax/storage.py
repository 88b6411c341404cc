"""How per-weight statistics are stored: float32, or bfloat16 with stochastic rounding.

SEVEN keeps three float32 arrays per prunable weight (the EMAs ``m``, ``v``
and the accumulated score ``S``: 12 bytes) plus a bool mask (1 byte). With
``stats_dtype=jnp.bfloat16`` the statistics ``m`` and ``v`` are stored in
bfloat16 (9 bytes with ``S`` and the mask) and every step computes in float32
on the upcast values; a step's score reads its own new ``m`` and ``v`` as
stored (rounded), so that XLA writes them once and does not copy the old ones.

The EMAs move by a large fraction every step and barely notice the rounding:
each adds an error of about 0.4 ulp (``2**-8.8`` relative), which the next
steps decay. Stochastic rounding keeps every stored value unbiased
(``E[round(x)] = x``) all the same, so that no statistic drifts.

The accumulated score stays float32. In bfloat16 it would need stochastic
rounding too (``S`` grows about linearly with the window step ``p`` while each
increment is about ``S / p``, so with round-to-nearest increments below half an
ulp vanish once ``p > 2**8`` and ``S`` stalls), and even so its rounding errors
add up, to a relative error of about :math:`0.0013\\sqrt{P}` after ``P``
steps (4.4% at ``P = 1000``, ``tests/test_storage.py``): weights closer than
that to the threshold swap places. It cost time as well: the selection ranks
float32 scores, which then exist besides the stored bfloat16 copy, and the
stored values cluster at bfloat16 steps, which slowed the threshold search.
MiniLM's update alone over adamw's (``python -m benchmarks.window_update
minilm db575cc``, the base storing a bfloat16 ``S``): in the window +86.0 ->
+46.3 ms (float32 statistics +46.6), statistics only +31.7 -> +17.1 ms
(float32 +18.4).

The random bits come from a counter-based hash of (element index, step, leaf,
statistic): no PRNG key in the state, no dependence on the data's own low bits
(which are all zero when gradients come from bfloat16 parameters), and the
same bits on every device for the same element, so sharded and single-device
runs round identically.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["STATS_DTYPES", "check_stats_dtype", "store", "stochastic_round_bf16"]

STATS_DTYPES = (np.dtype(jnp.float32), np.dtype(jnp.bfloat16))


def check_stats_dtype(stats_dtype) -> np.dtype:
  """Returns the dtype of ``"float32"``/``"bfloat16"`` (or of the dtypes
  themselves), or raises a ValueError naming the allowed ones."""
  if isinstance(stats_dtype, jax.Array):
    raise ValueError(
      "stats_dtype must be 'float32' or 'bfloat16', got an array: under "
      "optax.inject_hyperparams a dtype object is taken for a schedule; pass its name "
      "(stats_dtype='bfloat16') or add 'stats_dtype' to static_args."
    )
  try:
    dtype = np.dtype(stats_dtype)
  except TypeError:
    dtype = None
  if dtype not in STATS_DTYPES:
    raise ValueError(
      f"stats_dtype must be 'float32' or 'bfloat16' (or jnp.float32 / jnp.bfloat16), "
      f"got {stats_dtype!r}."
    )
  return dtype


def _hash_bits16(shape, step, salt: int) -> jax.Array:
  """16 pseudo-random bits per element (``uint32`` in ``[0, 2**16)``).

  The flat element index is mixed with the step and a static salt by the
  ``lowbias32`` integer hash (two multiply-xorshift rounds), which passes
  standard avalanche tests; it only has to be unbiased, not cryptographic.
  """
  index = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(shape))):
    index = index + lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride)
    stride = (stride * shape[axis]) % 2**32
  seed = jnp.asarray(step).astype(jnp.uint32) * np.uint32(0x85EBCA6B) + np.uint32(
    (salt * 0xC2B2AE35) % 2**32
  )
  h = index * np.uint32(0x9E3779B1) + seed
  h = h ^ (h >> 16)
  h = h * np.uint32(0x7FEB352D)
  h = h ^ (h >> 15)
  h = h * np.uint32(0x846CA68B)
  h = h ^ (h >> 16)
  return h & np.uint32(0xFFFF)


def stochastic_round_bf16(x: jax.Array, step, salt: int) -> jax.Array:
  """Rounds float32 ``x`` to bfloat16, up in magnitude with probability equal
  to the dropped fraction of an ulp (so ``E[result] = x``).

  bfloat16 is the upper half of a float32, so adding 16 random bits to the
  float32 bit pattern and truncating is exactly stochastic rounding of the
  magnitude (the sign bit is untouched; a carry into the exponent is the
  correct round-up to the next binade).
  """
  bits = lax.bitcast_convert_type(jnp.asarray(x, jnp.float32), jnp.uint32)
  bits = (bits + _hash_bits16(jnp.shape(x), step, salt)) & np.uint32(0xFFFF0000)
  return lax.bitcast_convert_type(bits, jnp.float32).astype(jnp.bfloat16)


def store(x: jax.Array, dtype: np.dtype, step, salt: int) -> jax.Array:
  """``x`` (float32) in the storage dtype: as is, or stochastically rounded."""
  if dtype == np.dtype(jnp.float32):
    return jnp.asarray(x, jnp.float32)
  return stochastic_round_bf16(x, step, salt)
