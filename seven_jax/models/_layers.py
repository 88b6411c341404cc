r"""Building blocks shared by the NNX models (BERT, ViT, CLIP's vision tower).

Each model keeps its own module classes, so that attribute names (and hence
parameter paths, checkpoint keys and prunable presets) mirror its Hugging
Face counterpart; what is computed inside them lives here once:

* :func:`activation`: the ``hidden_act`` names of ``config.json``.
* :func:`dense`, :func:`layer_norm`, :func:`patch_conv`: float32 parameters,
  compute in the config's dtype (LayerNorm statistics always in float32).
* :func:`attention`: multi-head scaled dot-product attention,
  :math:`\mathrm{softmax}(QK^\top/\sqrt{d_h} + B)\,V` with scores and softmax
  in float32.
* :func:`pixels_to_nhwc`: the image input check and layout change.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx


def _quick_gelu(x):
  return x * jax.nn.sigmoid(1.702 * x)


def _gelu_exact(x):
  return jax.nn.gelu(x, approximate=False)


def _gelu_tanh(x):
  return jax.nn.gelu(x, approximate=True)


# Hugging Face ``hidden_act`` names (transformers.activations.ACT2FN) that the
# models support: "gelu" is the exact erf GELU, the "*_new/_tanh/_fast" names
# its tanh approximation, "quick_gelu" CLIP's x * sigmoid(1.702 x).
ACTIVATIONS: dict[str, Callable] = {
  "gelu": _gelu_exact,
  "gelu_new": _gelu_tanh,
  "gelu_pytorch_tanh": _gelu_tanh,
  "gelu_fast": _gelu_tanh,
  "quick_gelu": _quick_gelu,
  "relu": jax.nn.relu,
}


def activation(name: str) -> Callable:
  """The activation function for a ``hidden_act`` name.

  Raises:
    ValueError: naming ``hidden_act`` and the supported names.
  """
  if not isinstance(name, str) or name not in ACTIVATIONS:
    raise ValueError(
      f"hidden_act {name!r} is not supported (use one of {', '.join(sorted(ACTIVATIONS))})"
    )
  return ACTIVATIONS[name]


def dense(
  din: int,
  dout: int,
  *,
  dtype,
  kernel_init,
  rngs: nnx.Rngs,
  use_bias: bool = True,
) -> nnx.Linear:
  """A linear layer with float32 parameters, zero bias, compute in ``dtype``."""
  return nnx.Linear(
    din,
    dout,
    use_bias=use_bias,
    dtype=dtype,
    param_dtype=jnp.float32,
    kernel_init=kernel_init,
    bias_init=nnx.initializers.zeros,
    rngs=rngs,
  )


def layer_norm(width: int, epsilon: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
  """LayerNorm whose statistics and output are float32 even under bf16 compute.

  Callers cast the result back to the compute dtype where the next op needs it.
  """
  return nnx.LayerNorm(
    width, epsilon=epsilon, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs
  )


def patch_conv(
  channels: int,
  width: int,
  patch: int,
  *,
  dtype,
  kernel_init,
  rngs: nnx.Rngs,
  use_bias: bool = True,
) -> nnx.Conv:
  """Non-overlapping ``patch x patch`` convolution (NHWC) embedding image patches."""
  return nnx.Conv(
    channels,
    width,
    kernel_size=(patch, patch),
    strides=(patch, patch),
    padding="VALID",
    use_bias=use_bias,
    dtype=dtype,
    param_dtype=jnp.float32,
    kernel_init=kernel_init,
    rngs=rngs,
  )


def attention(
  q,
  k,
  v,
  *,
  num_heads: int,
  dropout: nnx.Dropout,
  dtype,
  bias: jax.Array | None = None,
):
  r"""Multi-head attention of already projected ``(batch, seq, width)`` inputs.

  Each of the ``num_heads`` heads of width :math:`d_h` = ``width / num_heads``
  computes :math:`\mathrm{softmax}(q k^\top / \sqrt{d_h} + B)\, v`; the heads
  are concatenated back to ``(batch, seq, width)``.

  Args:
    q, k, v: projections, in the compute dtype.
    num_heads: number of heads.
    dropout: applied to the attention probabilities.
    dtype: compute dtype of the probabilities times values.
    bias: additive bias broadcastable to ``(batch, heads, q_len, k_len)``
      (a padding mask); ``None`` for none.
  """
  head_dim = q.shape[-1] // num_heads
  split = lambda t: t.reshape(t.shape[:-1] + (num_heads, head_dim))
  q, k, v = split(q), split(k), split(v)
  q = q / jnp.asarray(math.sqrt(head_dim), q.dtype)
  # Scores and softmax in float32: a bf16 softmax over long rows loses mass.
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
  if bias is not None:
    scores = scores + bias
  probs = dropout(jax.nn.softmax(scores, axis=-1)).astype(dtype)
  out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
  return out.reshape(out.shape[:2] + (-1,))


def pixels_to_nhwc(pixel_values, *, num_channels: int, channels_last: bool, dtype):
  """Checks a 4-D image batch and returns it NHWC in ``dtype``.

  Raises:
    ValueError: naming ``pixel_values`` when it is not 4-D or has another
      channel count than the config.
  """
  x = jnp.asarray(pixel_values)
  if x.ndim != 4:
    raise ValueError(f"pixel_values must be 4-D, got shape {x.shape}")
  if not channels_last:
    x = jnp.transpose(x, (0, 2, 3, 1))
  if x.shape[-1] != num_channels:
    raise ValueError(
      f"pixel_values has {x.shape[-1]} channels but the config expects "
      f"{num_channels} (channels_last={channels_last})"
    )
  return x.astype(dtype)
