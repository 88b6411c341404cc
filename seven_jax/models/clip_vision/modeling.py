"""CLIP's vision tower (a pre-LN ViT variant) in Flax NNX.

Differences from :mod:`seven_jax.models.vit` that matter for weights:
no bias on the patch convolution, a ``pre_layrnorm`` (sic, the Hugging Face
name) after the embeddings, ``quick_gelu``, and a ``post_layernorm`` applied
only to the pooled [CLS] token. Attribute names mirror Hugging Face's
``CLIPVisionModel`` (``vision_model.encoder.layers.<i>.self_attn.q_proj``...),
so both ``CLIPVisionModel`` and full ``CLIPModel`` checkpoints load.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax.numpy as jnp
from flax import nnx

from seven_jax.models import _hf
from seven_jax.models import _layers


@dataclasses.dataclass
class CLIPVisionConfig:
  """Hyper-parameters of a CLIP vision tower (Hugging Face names).

  Attributes:
    image_size, patch_size, num_channels: input geometry.
    hidden_size, num_hidden_layers, num_attention_heads, intermediate_size:
      Transformer shape.
    hidden_act: ``"quick_gelu"`` (CLIP), ``"gelu"``, ``"gelu_new"`` or another
      name of :data:`seven_jax.models._layers.ACTIVATIONS`.
    layer_norm_eps: LayerNorm epsilon (CLIP uses 1e-5).
    attention_dropout: dropout on attention probabilities.
    initializer_range: stddev of the normal initialisers.
    num_labels: outputs of :class:`CLIPVisionForImageClassification`.
    dtype: compute dtype; parameters stay float32.
  """

  image_size: int = 224
  patch_size: int = 32
  num_channels: int = 3
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  attention_dropout: float = 0.0
  initializer_range: float = 0.02
  num_labels: int = 1000
  dtype: Any = jnp.float32

  # A CLIPVisionModel checkpoint, or a full CLIPModel one (text tower ignored).
  MODEL_TYPES: ClassVar[tuple[str, ...]] = ("clip_vision_model", "clip")

  def __post_init__(self):
    _hf.check_config(self)
    _hf.check_divides(self, "num_attention_heads", "hidden_size")
    _hf.check_divides(self, "patch_size", "image_size")
    _layers.activation(self.hidden_act)

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  @classmethod
  def from_dict(cls, d: dict, **overrides) -> "CLIPVisionConfig":
    """From a ``CLIPVisionModel`` or a full ``CLIPModel`` ``config.json``."""
    if isinstance(d.get("vision_config"), dict):  # full CLIP: the tower's config is nested
      d = {
        "model_type": d.get("model_type"),
        **d["vision_config"],
        **{k: d[k] for k in ("id2label",) if k in d},
      }
    return _hf.config_from_dict(cls, d, overrides)

  def to_hf_dict(self) -> dict:
    """``config.json`` dict for transformers' ``CLIPVisionConfig``."""
    return _hf.config_to_hf_dict(self, architectures=["CLIPVisionModel"])


def _init(cfg: CLIPVisionConfig):
  return nnx.initializers.normal(cfg.initializer_range)


def _dense(cfg, din, dout, rngs):
  return _layers.dense(din, dout, dtype=cfg.dtype, kernel_init=_init(cfg), rngs=rngs)


def _layer_norm(cfg, rngs):
  return _layers.layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs)


class CLIPVisionEmbeddings(nnx.Module):
  def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs):
    init = _init(cfg)
    self.class_embedding = nnx.Param(init(rngs.params(), (cfg.hidden_size,)))
    self.patch_embedding = _layers.patch_conv(
      cfg.num_channels,
      cfg.hidden_size,
      cfg.patch_size,
      dtype=cfg.dtype,
      kernel_init=init,
      rngs=rngs,
      use_bias=False,
    )
    self.position_embedding = nnx.Embed(
      cfg.num_patches + 1, cfg.hidden_size, param_dtype=jnp.float32, embedding_init=init, rngs=rngs
    )

  def __call__(self, x):
    y = self.patch_embedding(x)
    y = y.reshape(y.shape[0], -1, y.shape[-1])
    cls = jnp.broadcast_to(self.class_embedding[...].astype(y.dtype), (y.shape[0], 1, y.shape[-1]))
    y = jnp.concatenate([cls, y], axis=1)
    return y + self.position_embedding.embedding[...].astype(y.dtype)[None]


class CLIPAttention(nnx.Module):
  def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs):
    h = cfg.hidden_size
    self.k_proj = _dense(cfg, h, h, rngs)
    self.v_proj = _dense(cfg, h, h, rngs)
    self.q_proj = _dense(cfg, h, h, rngs)
    self.out_proj = _dense(cfg, h, h, rngs)
    self.dropout = nnx.Dropout(cfg.attention_dropout, rngs=rngs)
    self.num_heads = cfg.num_attention_heads
    self.dtype = cfg.dtype

  def __call__(self, x):
    out = _layers.attention(
      self.q_proj(x),
      self.k_proj(x),
      self.v_proj(x),
      num_heads=self.num_heads,
      dropout=self.dropout,
      dtype=self.dtype,
    )
    return self.out_proj(out)


class CLIPMLP(nnx.Module):
  def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs):
    self.fc1 = _dense(cfg, cfg.hidden_size, cfg.intermediate_size, rngs)
    self.fc2 = _dense(cfg, cfg.intermediate_size, cfg.hidden_size, rngs)
    self.act = _layers.activation(cfg.hidden_act)

  def __call__(self, x):
    return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nnx.Module):
  def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs):
    self.self_attn = CLIPAttention(cfg, rngs=rngs)
    self.layer_norm1 = _layer_norm(cfg, rngs)
    self.mlp = CLIPMLP(cfg, rngs=rngs)
    self.layer_norm2 = _layer_norm(cfg, rngs)
    self.dtype = cfg.dtype

  def __call__(self, x):
    x = x + self.self_attn(self.layer_norm1(x).astype(self.dtype))
    return x + self.mlp(self.layer_norm2(x).astype(self.dtype))


class CLIPEncoder(nnx.Module):
  def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs):
    self.layers = nnx.List([CLIPEncoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])

  def __call__(self, x):
    for layer in self.layers:
      x = layer(x)
    return x


class CLIPVisionTransformer(nnx.Module):
  """Returns ``(last_hidden_state, pooler_output)`` as Hugging Face."""

  def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.embeddings = CLIPVisionEmbeddings(cfg, rngs=rngs)
    self.pre_layrnorm = _layer_norm(cfg, rngs)
    self.encoder = CLIPEncoder(cfg, rngs=rngs)
    self.post_layernorm = _layer_norm(cfg, rngs)

  def __call__(self, pixel_values, *, channels_last: bool = False):
    cfg = self.config
    x = _layers.pixels_to_nhwc(
      pixel_values, num_channels=cfg.num_channels, channels_last=channels_last, dtype=cfg.dtype
    )
    h = self.embeddings(x)
    h = self.encoder(self.pre_layrnorm(h).astype(cfg.dtype))
    return h, self.post_layernorm(h[:, 0])


class CLIPVisionModel(nnx.Module):
  """CLIP vision tower, keyed ``vision_model.*`` like Hugging Face."""

  def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.vision_model = CLIPVisionTransformer(cfg, rngs=rngs)

  def __call__(self, pixel_values, *, channels_last: bool = False):
    return self.vision_model(pixel_values, channels_last=channels_last)


class CLIPVisionForImageClassification(nnx.Module):
  """Linear classifier on the mean of the patch tokens.

  This is the recipe of transformers' (PyTorch) ``CLIPForImageClassification``
  (which has no Flax counterpart): mean over tokens 1.. of the last hidden
  state, then ``classifier``.
  """

  def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.vision_model = CLIPVisionTransformer(cfg, rngs=rngs)
    self.classifier = _dense(cfg, cfg.hidden_size, cfg.num_labels, rngs)

  def __call__(self, pixel_values, *, channels_last: bool = False):
    h, _ = self.vision_model(pixel_values, channels_last=channels_last)
    feats = jnp.mean(h[:, 1:].astype(jnp.float32), axis=1)
    return self.classifier(feats.astype(self.config.dtype)).astype(jnp.float32)
