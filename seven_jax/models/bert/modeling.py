"""BERT encoder and task heads in Flax NNX.

The module tree mirrors the attribute names of Hugging Face's BERT
(``embeddings.word_embeddings``, ``encoder.layer.<i>.attention.self.query``,
...) so that the mapping to checkpoint keys in :mod:`.params` is a mechanical
rename, and so that the prunable-leaf preset can be stated by name.

Parameters are always created in float32. ``BertConfig.dtype`` only sets the
*compute* dtype (e.g. ``jnp.bfloat16``): matmul inputs are cast, while
LayerNorm statistics and the attention softmax stay in float32.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from seven_jax.models import _hf
from seven_jax.models import _layers


@dataclasses.dataclass
class BertConfig:
  """Hyper-parameters of a BERT encoder (Hugging Face ``config.json`` names).

  Attributes:
    vocab_size: number of word-piece tokens.
    hidden_size: width of the residual stream.
    num_hidden_layers: number of Transformer layers.
    num_attention_heads: number of attention heads; must divide
      ``hidden_size``.
    intermediate_size: width of the feed-forward block.
    hidden_act: ``"gelu"`` (exact erf GELU, as Hugging Face), its tanh
      approximation ``"gelu_new"``/``"gelu_pytorch_tanh"``, or another name
      of :data:`seven_jax.models._layers.ACTIVATIONS` (``"relu"``, ...).
    hidden_dropout_prob: dropout on embeddings and residual branches.
    attention_probs_dropout_prob: dropout on attention probabilities.
    max_position_embeddings: number of learned positions.
    type_vocab_size: number of token-type (segment) ids.
    initializer_range: stddev of the truncated-free normal initialiser.
    layer_norm_eps: LayerNorm epsilon.
    num_labels: outputs of the classification head (1 means regression).
    classifier_dropout: dropout before the head; ``None`` uses
      ``hidden_dropout_prob`` (as Hugging Face).
    dtype: compute dtype; parameters stay float32 regardless.
  """

  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  initializer_range: float = 0.02
  layer_norm_eps: float = 1e-12
  num_labels: int = 2
  classifier_dropout: Optional[float] = None
  dtype: Any = jnp.float32

  MODEL_TYPES: ClassVar[tuple[str, ...]] = ("bert",)

  def __post_init__(self):
    _hf.check_config(self)
    _hf.check_divides(self, "num_attention_heads", "hidden_size")
    _layers.activation(self.hidden_act)  # fail early on an unknown activation

  @classmethod
  def from_dict(cls, d: dict, **overrides) -> "BertConfig":
    """Builds a config from a Hugging Face ``config.json`` dict.

    Unknown keys (``architectures``, ...) are ignored, and ``num_labels`` is
    inferred from ``id2label`` when present.
    """
    if d.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError(
        "only position_embedding_type='absolute' is supported, got "
        f"{d['position_embedding_type']!r}"
      )
    return _hf.config_from_dict(cls, d, overrides)

  def to_hf_dict(self) -> dict:
    """Returns a ``config.json`` dict that transformers' ``BertConfig`` reads."""
    return _hf.config_to_hf_dict(
      self, architectures=["BertModel"], position_embedding_type="absolute", pad_token_id=0
    )


def _dense(cfg: BertConfig, din: int, dout: int, rngs: nnx.Rngs) -> nnx.Linear:
  init = nnx.initializers.normal(cfg.initializer_range)
  return _layers.dense(din, dout, dtype=cfg.dtype, kernel_init=init, rngs=rngs)


def _layer_norm(cfg: BertConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return _layers.layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs)


class BertEmbeddings(nnx.Module):
  """Word + position + token-type embeddings, then LayerNorm and dropout."""

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    init = nnx.initializers.normal(cfg.initializer_range)
    emb = lambda n: nnx.Embed(
      n, cfg.hidden_size, param_dtype=jnp.float32, embedding_init=init, rngs=rngs
    )
    self.word_embeddings = emb(cfg.vocab_size)
    self.position_embeddings = emb(cfg.max_position_embeddings)
    self.token_type_embeddings = emb(cfg.type_vocab_size)
    self.LayerNorm = _layer_norm(cfg, rngs)  # pylint: disable=invalid-name
    self.dropout = nnx.Dropout(cfg.hidden_dropout_prob, rngs=rngs)
    self.dtype = cfg.dtype

  def __call__(self, input_ids, token_type_ids, position_ids):
    h = (
      self.word_embeddings(input_ids)
      + self.token_type_embeddings(token_type_ids)
      + self.position_embeddings(position_ids)
    )
    return self.dropout(self.LayerNorm(h).astype(self.dtype))


class BertSelfAttention(nnx.Module):
  """Multi-head scaled dot-product self-attention (Q, K, V projections)."""

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    h = cfg.hidden_size
    self.query = _dense(cfg, h, h, rngs)
    self.key = _dense(cfg, h, h, rngs)
    self.value = _dense(cfg, h, h, rngs)
    self.dropout = nnx.Dropout(cfg.attention_probs_dropout_prob, rngs=rngs)
    self.num_heads = cfg.num_attention_heads
    self.dtype = cfg.dtype

  def __call__(self, x, attention_bias):
    return _layers.attention(
      self.query(x),
      self.key(x),
      self.value(x),
      num_heads=self.num_heads,
      dropout=self.dropout,
      dtype=self.dtype,
      bias=attention_bias,
    )


class BertResidualOutput(nnx.Module):
  """Output projection, dropout, residual and LayerNorm (HF ``*Output`` blocks).

  The attention output (``din = hidden_size``) and the FFN output
  (``din = intermediate_size``) differ only in the projection's input width.
  """

  def __init__(self, cfg: BertConfig, din: int, *, rngs: nnx.Rngs):
    self.dense = _dense(cfg, din, cfg.hidden_size, rngs)
    self.LayerNorm = _layer_norm(cfg, rngs)  # pylint: disable=invalid-name
    self.dropout = nnx.Dropout(cfg.hidden_dropout_prob, rngs=rngs)
    self.dtype = cfg.dtype

  def __call__(self, h, residual):
    h = self.dropout(self.dense(h))
    return self.LayerNorm(h + residual).astype(self.dtype)


class BertAttention(nnx.Module):
  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    self.self = BertSelfAttention(cfg, rngs=rngs)
    self.output = BertResidualOutput(cfg, cfg.hidden_size, rngs=rngs)

  def __call__(self, x, attention_bias):
    return self.output(self.self(x, attention_bias), x)


class BertIntermediate(nnx.Module):
  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    self.dense = _dense(cfg, cfg.hidden_size, cfg.intermediate_size, rngs)
    self.act = _layers.activation(cfg.hidden_act)

  def __call__(self, x):
    return self.act(self.dense(x))


class BertLayer(nnx.Module):
  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    self.attention = BertAttention(cfg, rngs=rngs)
    self.intermediate = BertIntermediate(cfg, rngs=rngs)
    self.output = BertResidualOutput(cfg, cfg.intermediate_size, rngs=rngs)

  def __call__(self, x, attention_bias):
    a = self.attention(x, attention_bias)
    return self.output(self.intermediate(a), a)


class BertEncoder(nnx.Module):
  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    self.layer = nnx.List([BertLayer(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])

  def __call__(self, x, attention_bias):
    for layer in self.layer:
      x = layer(x, attention_bias)
    return x


class BertPooler(nnx.Module):
  """tanh(dense(h[:, 0])): the [CLS] summary used by the classifier."""

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    self.dense = _dense(cfg, cfg.hidden_size, cfg.hidden_size, rngs)

  def __call__(self, h):
    return jnp.tanh(self.dense(h[:, 0]))


class BertModel(nnx.Module):
  """BERT encoder with pooler.

  Call with int arrays of shape ``(batch, seq)``; returns
  ``(last_hidden_state, pooler_output)`` (``None`` without a pooler).
  Dropout follows NNX conventions: it is active after ``model.train()`` and
  off after ``model.eval()``.
  """

  def __init__(self, cfg: BertConfig, *, add_pooling_layer: bool = True, rngs: nnx.Rngs):
    self.config = cfg
    self.embeddings = BertEmbeddings(cfg, rngs=rngs)
    self.encoder = BertEncoder(cfg, rngs=rngs)
    self.pooler = BertPooler(cfg, rngs=rngs) if add_pooling_layer else None

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None):
    input_ids = jnp.asarray(input_ids)
    if input_ids.ndim != 2:
      raise ValueError(f"input_ids must have shape (batch, seq), got {input_ids.shape}")
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    if position_ids is None:
      position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape)
    # Additive bias: finfo.min (not -inf) keeps fully padded rows finite.
    bias = jnp.where(
      jnp.asarray(attention_mask)[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min
    ).astype(jnp.float32)
    h = self.embeddings(input_ids, token_type_ids, position_ids)
    h = self.encoder(h, bias)
    return h, (self.pooler(h) if self.pooler is not None else None)


class BertForSequenceClassification(nnx.Module):
  """Classifier on the pooler output (as the official SEVEN code).

  With ``num_labels == 1`` the single logit is a regression output (STS-B);
  see :func:`sequence_classification_loss`.
  """

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.bert = BertModel(cfg, rngs=rngs)
    p = cfg.hidden_dropout_prob if cfg.classifier_dropout is None else cfg.classifier_dropout
    self.dropout = nnx.Dropout(p, rngs=rngs)
    self.classifier = _dense(cfg, cfg.hidden_size, cfg.num_labels, rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None):
    _, pooled = self.bert(input_ids, attention_mask, token_type_ids, position_ids)
    return self.classifier(self.dropout(pooled)).astype(jnp.float32)


class BertForQuestionAnswering(nnx.Module):
  """Span extraction (SQuAD): per-token start and end logits.

  Like Hugging Face, the encoder has no pooler here.
  """

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.bert = BertModel(cfg, add_pooling_layer=False, rngs=rngs)
    self.qa_outputs = _dense(cfg, cfg.hidden_size, 2, rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None):
    h, _ = self.bert(input_ids, attention_mask, token_type_ids, position_ids)
    logits = self.qa_outputs(h).astype(jnp.float32)
    return logits[..., 0], logits[..., 1]


def sequence_classification_loss(logits, labels):
  """Mean loss for :class:`BertForSequenceClassification`.

  Cross-entropy for ``num_labels > 1`` (integer labels); mean squared error
  for ``num_labels == 1`` (float targets), as Hugging Face.
  """
  if logits.shape[-1] == 1:
    return jnp.mean((logits[..., 0] - labels.astype(logits.dtype)) ** 2)
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], -1))


def span_loss(start_logits, end_logits, start_positions, end_positions):
  """Mean of start and end cross-entropies (SQuAD), as Hugging Face."""

  def ce(lg, pos):
    logp = jax.nn.log_softmax(lg, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, pos[..., None], -1))

  return 0.5 * (ce(start_logits, start_positions) + ce(end_logits, end_positions))
