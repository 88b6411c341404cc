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
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import nnx


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
    hidden_act: ``"gelu"`` (exact erf GELU, as Hugging Face) or
      ``"gelu_new"``/``"gelu_pytorch_tanh"`` (tanh approximation) or ``"relu"``.
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

  def __post_init__(self):
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(
        f"hidden_size ({self.hidden_size}) must be divisible by "
        f"num_attention_heads ({self.num_attention_heads})"
      )
    if self.num_labels < 1:
      raise ValueError(f"num_labels must be >= 1, got {self.num_labels}")
    _activation(self.hidden_act)  # fail early on an unknown activation

  @classmethod
  def from_dict(cls, d: dict, **overrides) -> "BertConfig":
    """Builds a config from a Hugging Face ``config.json`` dict.

    Unknown keys (``architectures``, ``model_type``, ...) are ignored, and
    ``num_labels`` is inferred from ``id2label`` when present.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in d.items() if k in names}
    if "num_labels" not in kw and "id2label" in d:
      kw["num_labels"] = len(d["id2label"])
    if d.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError(
        "only position_embedding_type='absolute' is supported, got "
        f"{d['position_embedding_type']!r}"
      )
    kw.update(overrides)
    return cls(**kw)

  def to_hf_dict(self) -> dict:
    """Returns a ``config.json`` dict that transformers' ``BertConfig`` reads."""
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    d.pop("dtype")
    num_labels = d.pop("num_labels")
    d.update(
      model_type="bert",
      architectures=["BertModel"],
      position_embedding_type="absolute",
      pad_token_id=0,
      id2label={str(i): f"LABEL_{i}" for i in range(num_labels)},
      label2id={f"LABEL_{i}": i for i in range(num_labels)},
    )
    return d


def _activation(name: str):
  if name == "gelu":
    return lambda x: jax.nn.gelu(x, approximate=False)
  if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
    return lambda x: jax.nn.gelu(x, approximate=True)
  if name == "relu":
    return jax.nn.relu
  raise ValueError(f"hidden_act {name!r} is not supported (use 'gelu', 'gelu_new' or 'relu')")


def _dense(cfg: BertConfig, din: int, dout: int, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(
    din,
    dout,
    dtype=cfg.dtype,
    param_dtype=jnp.float32,
    kernel_init=nnx.initializers.normal(cfg.initializer_range),
    bias_init=nnx.initializers.zeros,
    rngs=rngs,
  )


def _layer_norm(cfg: BertConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
  # dtype=float32: statistics and normalisation in float32 even for bf16
  # compute; the caller casts the result back to the compute dtype.
  return nnx.LayerNorm(
    cfg.hidden_size,
    epsilon=cfg.layer_norm_eps,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs=rngs,
  )


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
    self.head_dim = h // cfg.num_attention_heads
    self.dtype = cfg.dtype

  def __call__(self, x, attention_bias):
    split = lambda t: t.reshape(t.shape[:-1] + (self.num_heads, self.head_dim))
    q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
    q = q / jnp.asarray(math.sqrt(self.head_dim), q.dtype)
    # Scores and softmax in float32: bf16 softmax over long rows loses mass.
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(scores + attention_bias, axis=-1)
    probs = self.dropout(probs).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    return out.reshape(out.shape[:2] + (-1,))


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
    self.act = _activation(cfg.hidden_act)

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
