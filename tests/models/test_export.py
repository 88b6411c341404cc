"""export_pruned: HF-format directory, exact zeros, reference loads it."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from seven_jax.export import export_pruned
from seven_jax.models import bert
from seven_jax.models import vit

transformers = pytest.importorskip("transformers")

TINY = dict(
  vocab_size=100,
  hidden_size=32,
  num_hidden_layers=2,
  num_attention_heads=2,
  intermediate_size=64,
  num_labels=2,
)


def _random_masks(params, prunable, keep=0.3, seed=0):
  """Keep-masks on the prunable leaves, None elsewhere."""
  leaves, treedef = jax.tree.flatten(params)
  flags = jax.tree.leaves(prunable)
  rng = np.random.default_rng(seed)
  masks = [rng.random(x.shape) < keep if f else None for x, f in zip(leaves, flags)]
  return jax.tree.unflatten(treedef, masks)


def _apply(params, masks):
  return jax.tree.map(
    lambda w, m: w if m is None else jnp.where(m, w, 0.0),
    params,
    masks,
    is_leaf=lambda x: x is None,
  )


def test_export_bert_masked_loads_in_transformers(tmp_path, minilm_path):
  cfg = bert.BertConfig(**TINY)
  model = bert.BertForSequenceClassification(cfg, rngs=nnx.Rngs(0))
  model.eval()
  params = nnx.as_pure(nnx.state(model, nnx.Param))
  masks = _random_masks(params, bert.prunable(params))

  report = export_pruned(model, cfg, tmp_path, masks=masks, tokenizer_dir=minilm_path)
  files = {p.name for p in tmp_path.iterdir()}
  assert {
    "config.json",
    "model.safetensors",
    "sparsity_report.json",
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
  } <= files
  on_disk = json.loads((tmp_path / "sparsity_report.json").read_text())
  assert on_disk["num_tensors"] == 13 and report["num_tensors"] == 13
  assert on_disk["total_weights"] == 2 * (4 * 32 * 32 + 2 * 32 * 64) + 32 * 32
  assert 0.65 < on_disk["sparsity"] < 0.75

  # Exact zeros, HF key names, PyTorch (out, in) layout.
  sd = load_file(str(tmp_path / "model.safetensors"))
  q = sd["bert.encoder.layer.0.attention.self.query.weight"]
  m = np.asarray(masks["bert"]["encoder"]["layer"][0]["attention"]["self"]["query"]["kernel"])
  assert q.shape == (32, 32)
  assert np.all(q.T[~m] == 0) and np.all(np.signbit(q.T[~m]) == 0)
  assert "bert.embeddings.word_embeddings.weight" in sd
  assert np.count_nonzero(sd["bert.embeddings.word_embeddings.weight"]) > 0

  # transformers loads it and agrees with our model with the masks applied.
  nnx.update(model, _apply(params, masks))
  ids = np.random.default_rng(1).integers(1, 100, (2, 9)).astype(np.int32)
  hf = transformers.FlaxBertForSequenceClassification.from_pretrained(tmp_path)
  np.testing.assert_allclose(np.asarray(model(ids)), np.asarray(hf(ids).logits), atol=1e-5)
  hf_base = transformers.FlaxBertModel.from_pretrained(tmp_path)
  np.testing.assert_allclose(
    np.asarray(model.bert(ids)[0]), np.asarray(hf_base(ids).last_hidden_state), atol=1e-5
  )
  tok = transformers.BertTokenizerFast.from_pretrained(tmp_path)
  assert tok("hello world")["input_ids"][0] == tok.cls_token_id
  # Our own loader reads the pruned directory back bit-exactly.
  back = bert.from_pretrained(tmp_path, task="sequence_classification")
  for a, b in zip(
    jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(nnx.state(back, nnx.Param))
  ):
    np.testing.assert_array_equal(a, b)


def test_export_params_only_and_partial_mask_dict(tmp_path):
  """Params (not a module) and a mask dict holding only one leaf."""
  cfg = bert.BertConfig(**TINY)
  model = bert.BertModel(cfg, rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  k = np.asarray(params["pooler"]["dense"]["kernel"])
  masks = {"pooler": {"dense": {"kernel": np.abs(k) > np.median(np.abs(k))}}}
  report = export_pruned(params, cfg, tmp_path, masks=masks)
  assert report["architecture"] == "BertModel"
  assert report["num_tensors"] == 1
  assert report["zero_weights"] == k.size // 2
  sd = load_file(str(tmp_path / "model.safetensors"))
  assert "pooler.dense.weight" in sd  # unprefixed keys for a bare BertModel
  with pytest.raises(ValueError, match="pooler.dense.kernel"):
    export_pruned(params, cfg, tmp_path, masks={"pooler": {"dense": {"kernel": np.ones((3, 3))}}})
  with pytest.raises(ValueError, match="config"):
    export_pruned(params, {"hidden_size": 32}, tmp_path)


def test_export_vit_masked(tmp_path):
  cfg = vit.ViTConfig(
    image_size=16,
    patch_size=4,
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=64,
    num_labels=4,
  )
  model = vit.ViTForImageClassification(cfg, rngs=nnx.Rngs(0))
  model.eval()
  params = nnx.as_pure(nnx.state(model, nnx.Param))
  masks = _random_masks(params, vit.prunable(params), keep=0.5)
  report = export_pruned(model, cfg, tmp_path, masks=masks)
  assert report["num_tensors"] == 6
  nnx.update(model, _apply(params, masks))
  x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
  hf = transformers.FlaxViTForImageClassification.from_pretrained(tmp_path)
  np.testing.assert_allclose(np.asarray(model(x)), np.asarray(hf(x).logits), atol=1e-5)


def test_sparse_memory_report():
  from seven_jax.export import sparse_memory_report

  cfg = bert.BertConfig(**TINY)
  model = bert.BertModel(cfg, rngs=nnx.Rngs(0))
  params = nnx.as_pure(nnx.state(model, nnx.Param))
  # A 2:4 pattern: keep inputs 0 and 1 of every group of 4.
  keep24 = lambda x: np.broadcast_to((np.arange(x.shape[0]) % 4 < 2)[:, None], x.shape)
  pr = bert.prunable(params)
  masks = jax.tree.map(lambda x, f: keep24(x) if f else None, params, pr)
  rep = sparse_memory_report(params, masks, as_bcoo=True)
  assert rep["two_four_ok"]
  assert rep["nonzeros"] * 2 == rep["dense_bytes"] // 4
  assert rep["bcoo_bytes"] == rep["nonzeros"] * 12
  assert rep["two_four_bytes"] < rep["dense_bytes"] * 0.6
  bq = rep["bcoo"]["encoder.layer.0.attention.self.query.weight"]
  w = np.asarray(params["encoder"]["layer"][0]["attention"]["self"]["query"]["kernel"])
  np.testing.assert_array_equal(bq.todense(), np.where(keep24(w), w, 0))
  # Unstructured random masks are generally not 2:4.
  rand = _random_masks(params, pr, keep=0.5)
  assert not sparse_memory_report(params, rand)["two_four_ok"]
