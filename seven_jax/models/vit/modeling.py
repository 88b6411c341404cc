"""Vision Transformer (ViT) for image classification in Flax NNX.

Attribute names mirror Hugging Face's ViT (``vit.embeddings.patch_embeddings
.projection``, ``vit.encoder.layer.<i>.attention.attention.query``,
``layernorm_before``/``layernorm_after``, ...) so checkpoint keys map by
rename. Pre-LayerNorm blocks; the classifier reads the final-LayerNorm [CLS]
token. Parameters are float32; ``ViTConfig.dtype`` is the compute dtype.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Optional

import jax.numpy as jnp
from flax import nnx

from seven_jax.models import _hf
from seven_jax.models import _layers


@dataclasses.dataclass
class ViTConfig:
  """Hyper-parameters of a ViT (Hugging Face ``config.json`` names).

  Attributes:
    image_size: side of the square input image.
    patch_size: side of a square patch; must divide ``image_size``.
    num_channels: input channels.
    hidden_size, num_hidden_layers, num_attention_heads, intermediate_size:
      Transformer shape.
    hidden_act: ``"gelu"`` (exact), ``"gelu_new"`` (tanh) or another name of
      :data:`seven_jax.models._layers.ACTIVATIONS`.
    hidden_dropout_prob, attention_probs_dropout_prob: dropout rates.
    initializer_range: scale of the initialisers.
    layer_norm_eps: LayerNorm epsilon.
    qkv_bias: whether Q/K/V projections have biases.
    pooler_output_size: width of the optional pooler (``None``: hidden size).
    num_labels: classifier outputs.
    dtype: compute dtype; parameters stay float32.
  """

  image_size: int = 224
  patch_size: int = 16
  num_channels: int = 3
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.0
  attention_probs_dropout_prob: float = 0.0
  initializer_range: float = 0.02
  layer_norm_eps: float = 1e-12
  qkv_bias: bool = True
  pooler_output_size: Optional[int] = None
  num_labels: int = 1000
  dtype: Any = jnp.float32

  MODEL_TYPES: ClassVar[tuple[str, ...]] = ("vit",)

  def __post_init__(self):
    _hf.check_config(self)
    _hf.check_divides(self, "num_attention_heads", "hidden_size")
    _hf.check_divides(self, "patch_size", "image_size")
    if self.pooler_output_size is None:
      self.pooler_output_size = self.hidden_size
    _layers.activation(self.hidden_act)

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  @classmethod
  def from_dict(cls, d: dict, **overrides) -> "ViTConfig":
    """Builds a config from a Hugging Face ``config.json`` dict."""
    if d.get("pooler_act", "tanh") != "tanh":
      raise ValueError(f"only pooler_act='tanh' is supported, got {d['pooler_act']!r}")
    return _hf.config_from_dict(cls, d, overrides)

  def to_hf_dict(self) -> dict:
    """Returns a ``config.json`` dict that transformers' ``ViTConfig`` reads."""
    return _hf.config_to_hf_dict(self, architectures=["ViTModel"], pooler_act="tanh")


def _init(cfg: ViTConfig):
  # Same family as Hugging Face's Flax ViT: truncated normal, fan-in scaled.
  return nnx.initializers.variance_scaling(cfg.initializer_range**2, "fan_in", "truncated_normal")


def _dense(cfg, din, dout, rngs, use_bias=True):
  return _layers.dense(
    din, dout, dtype=cfg.dtype, kernel_init=_init(cfg), rngs=rngs, use_bias=use_bias
  )


def _layer_norm(cfg, rngs):
  return _layers.layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs)


class ViTPatchEmbeddings(nnx.Module):
  def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
    self.projection = _layers.patch_conv(
      cfg.num_channels,
      cfg.hidden_size,
      cfg.patch_size,
      dtype=cfg.dtype,
      kernel_init=_init(cfg),
      rngs=rngs,
    )

  def __call__(self, x):
    y = self.projection(x)
    return y.reshape(y.shape[0], -1, y.shape[-1])


class ViTEmbeddings(nnx.Module):
  """[CLS] token + patch embeddings + learned positions."""

  def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
    init = _init(cfg)
    self.cls_token = nnx.Param(init(rngs.params(), (1, 1, cfg.hidden_size)))
    self.patch_embeddings = ViTPatchEmbeddings(cfg, rngs=rngs)
    self.position_embeddings = nnx.Param(
      init(rngs.params(), (1, cfg.num_patches + 1, cfg.hidden_size))
    )
    self.dropout = nnx.Dropout(cfg.hidden_dropout_prob, rngs=rngs)
    self.dtype = cfg.dtype

  def __call__(self, pixel_values):
    x = self.patch_embeddings(pixel_values)
    cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=1)
    return self.dropout(x + self.position_embeddings[...].astype(x.dtype))


class ViTSelfAttention(nnx.Module):
  def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
    h = cfg.hidden_size
    self.query = _dense(cfg, h, h, rngs, cfg.qkv_bias)
    self.key = _dense(cfg, h, h, rngs, cfg.qkv_bias)
    self.value = _dense(cfg, h, h, rngs, cfg.qkv_bias)
    self.dropout = nnx.Dropout(cfg.attention_probs_dropout_prob, rngs=rngs)
    self.num_heads = cfg.num_attention_heads
    self.dtype = cfg.dtype

  def __call__(self, x):
    return _layers.attention(
      self.query(x),
      self.key(x),
      self.value(x),
      num_heads=self.num_heads,
      dropout=self.dropout,
      dtype=self.dtype,
    )


class ViTSelfOutput(nnx.Module):
  def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
    self.dense = _dense(cfg, cfg.hidden_size, cfg.hidden_size, rngs)
    self.dropout = nnx.Dropout(cfg.hidden_dropout_prob, rngs=rngs)

  def __call__(self, x):
    return self.dropout(self.dense(x))


class ViTAttention(nnx.Module):
  def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
    self.attention = ViTSelfAttention(cfg, rngs=rngs)
    self.output = ViTSelfOutput(cfg, rngs=rngs)

  def __call__(self, x):
    return self.output(self.attention(x))


class ViTIntermediate(nnx.Module):
  def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
    self.dense = _dense(cfg, cfg.hidden_size, cfg.intermediate_size, rngs)
    self.act = _layers.activation(cfg.hidden_act)

  def __call__(self, x):
    return self.act(self.dense(x))


class ViTOutput(nnx.Module):
  def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
    self.dense = _dense(cfg, cfg.intermediate_size, cfg.hidden_size, rngs)
    self.dropout = nnx.Dropout(cfg.hidden_dropout_prob, rngs=rngs)

  def __call__(self, x, residual):
    return self.dropout(self.dense(x)) + residual


class ViTLayer(nnx.Module):
  """Pre-LN block: x + attn(LN(x)), then h + mlp(LN(h))."""

  def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
    self.attention = ViTAttention(cfg, rngs=rngs)
    self.intermediate = ViTIntermediate(cfg, rngs=rngs)
    self.output = ViTOutput(cfg, rngs=rngs)
    self.layernorm_before = _layer_norm(cfg, rngs)
    self.layernorm_after = _layer_norm(cfg, rngs)
    self.dtype = cfg.dtype

  def __call__(self, x):
    h = self.attention(self.layernorm_before(x).astype(self.dtype)) + x
    return self.output(self.intermediate(self.layernorm_after(h).astype(self.dtype)), h)


class ViTEncoder(nnx.Module):
  def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
    self.layer = nnx.List([ViTLayer(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])

  def __call__(self, x):
    for layer in self.layer:
      x = layer(x)
    return x


class ViTPooler(nnx.Module):
  def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
    self.dense = _dense(cfg, cfg.hidden_size, cfg.pooler_output_size, rngs)

  def __call__(self, h):
    return jnp.tanh(self.dense(h[:, 0]))


class ViTModel(nnx.Module):
  """ViT backbone. Returns ``(last_hidden_state, pooler_output or None)``.

  ``pixel_values`` is NCHW by default (as Hugging Face); pass
  ``channels_last=True`` for NHWC.
  """

  def __init__(self, cfg: ViTConfig, *, add_pooling_layer: bool = True, rngs: nnx.Rngs):
    self.config = cfg
    self.embeddings = ViTEmbeddings(cfg, rngs=rngs)
    self.encoder = ViTEncoder(cfg, rngs=rngs)
    self.layernorm = _layer_norm(cfg, rngs)
    self.pooler = ViTPooler(cfg, rngs=rngs) if add_pooling_layer else None

  def __call__(self, pixel_values, *, channels_last: bool = False):
    cfg = self.config
    x = _layers.pixels_to_nhwc(
      pixel_values, num_channels=cfg.num_channels, channels_last=channels_last, dtype=cfg.dtype
    )
    h = self.layernorm(self.encoder(self.embeddings(x)))
    return h, (self.pooler(h) if self.pooler is not None else None)


class ViTForImageClassification(nnx.Module):
  """ViT with a linear classifier on the final [CLS] token."""

  def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.vit = ViTModel(cfg, add_pooling_layer=False, rngs=rngs)
    self.classifier = _dense(cfg, cfg.hidden_size, cfg.num_labels, rngs)

  def __call__(self, pixel_values, *, channels_last: bool = False):
    h, _ = self.vit(pixel_values, channels_last=channels_last)
    return self.classifier(h[:, 0].astype(self.config.dtype)).astype(jnp.float32)
