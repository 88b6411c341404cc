"""Prunable-leaf presets, checked by shape evaluation (nothing downloaded)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from seven_jax.models import _hf
from seven_jax.models import bert
from seven_jax.models import vit

BERT_BASE = bert.BertConfig(
  vocab_size=30522,
  hidden_size=768,
  num_hidden_layers=12,
  num_attention_heads=12,
  intermediate_size=3072,
)


def _abstract_state(cls, cfg):
  model = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0)))
  return nnx.state(model, nnx.Param)


def _selected(state, mask):
  leaves = jax.tree.leaves(state)
  flags = jax.tree.leaves(mask)
  assert len(leaves) == len(flags)
  return [x for x, f in zip(leaves, flags) if f]


@pytest.mark.parametrize("cls", [bert.BertModel, bert.BertForSequenceClassification])
def test_bert_base_preset_73_matrices(cls):
  state = _abstract_state(cls, BERT_BASE)
  mask = bert.prunable(state)
  assert jax.tree.structure(mask) == jax.tree.structure(nnx.as_pure(state))
  sel = _selected(state, mask)
  assert len(sel) == 73
  assert sum(int(np.prod(x.shape)) for x in sel) == 85_524_480
  assert all(x.ndim == 2 for x in sel)


def test_bert_preset_by_name():
  state = _abstract_state(
    bert.BertForSequenceClassification,
    bert.BertConfig(
      **dict(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
      )
    ),
  )
  mask = bert.prunable(state)
  names = {".".join(_hf.path_names(p)) for p, f in jax.tree_util.tree_leaves_with_path(mask) if f}
  assert names == {
    "bert.encoder.layer.0.attention.self.query.kernel",
    "bert.encoder.layer.0.attention.self.key.kernel",
    "bert.encoder.layer.0.attention.self.value.kernel",
    "bert.encoder.layer.0.attention.output.dense.kernel",
    "bert.encoder.layer.0.intermediate.dense.kernel",
    "bert.encoder.layer.0.output.dense.kernel",
    "bert.pooler.dense.kernel",
  }
  no_pool = bert.prunable(state, include_pooler=False)
  assert sum(jax.tree.leaves(no_pool)) == 6


def test_preset_on_pure_dict_and_model_agree():
  cfg = bert.BertConfig(
    vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
  )
  model = bert.BertModel(cfg, rngs=nnx.Rngs(0))
  a = jax.tree.leaves(bert.prunable(model))
  b = jax.tree.leaves(bert.prunable(nnx.to_pure_dict(nnx.state(model, nnx.Param))))
  assert a == b and sum(a) == 13


def test_preset_matches_hf_flax_params():
  transformers = pytest.importorskip("transformers")
  cfg = transformers.BertConfig(
    vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
  )
  hf = transformers.FlaxBertModel(cfg, _do_init=False)
  shapes = jax.eval_shape(lambda: hf.init_weights(jax.random.key(0), (1, 4)))
  assert sum(jax.tree.leaves(bert.prunable(shapes))) == 13


def test_preset_plugs_into_optax_and_nnx_optimizer():
  """The bool tree has exactly the structure nnx.Optimizer hands to tx.init."""
  cfg = bert.BertConfig(
    vocab_size=50,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    num_labels=2,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
  )
  model = bert.BertForSequenceClassification(cfg, rngs=nnx.Rngs(0))
  mask = bert.prunable(nnx.state(model, nnx.Param))
  # Update only the prunable leaves: frozen leaves must not move. (masked
  # alone passes unmasked updates through, hence the set_to_zero branch.)
  tx = optax.chain(
    optax.masked(optax.sgd(0.1), mask),
    optax.masked(optax.set_to_zero(), jax.tree.map(lambda f: not f, mask)),
  )
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
  before = jax.tree.map(jnp.array, nnx.state(model, nnx.Param))
  ids = jnp.array([[1, 2, 3, 4], [5, 6, 7, 8]])

  def loss_fn(m):
    return bert.sequence_classification_loss(m(ids), jnp.array([0, 1]))

  @nnx.jit
  def step(m, o):
    o.update(m, nnx.grad(loss_fn)(m))

  step(model, opt)
  after = nnx.state(model, nnx.Param)
  for f, b, a in zip(jax.tree.leaves(mask), jax.tree.leaves(before), jax.tree.leaves(after)):
    assert (not np.array_equal(a, b)) == f


def test_vit_preset_defaults_and_options():
  cfg = vit.ViTConfig()  # ViT-B/16 shape
  state = _abstract_state(vit.ViTForImageClassification, cfg)
  sel = _selected(state, vit.prunable(state))
  assert len(sel) == 72
  assert sum(int(np.prod(x.shape)) for x in sel) == 12 * (4 * 768 * 768 + 2 * 768 * 3072)
  with_all = _selected(state, vit.prunable(state, include_patch_embedding=True, include_head=True))
  assert len(with_all) == 74
  assert {x.shape for x in with_all} >= {(16, 16, 3, 768), (768, 1000)}
