"""ViT: parity with transformers 4.57.6 Flax ViT on random tiny configs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

import seven_jax.export
from seven_jax.models import vit
from tests._helpers import assert_bf16_close, max_abs_diff

transformers = pytest.importorskip("transformers")

TINY = dict(
  image_size=16,
  patch_size=4,
  num_channels=3,
  hidden_size=32,
  num_hidden_layers=2,
  num_attention_heads=2,
  intermediate_size=64,
  num_labels=5,
)


def _pixels(b=2, seed=0):
  return np.random.default_rng(seed).normal(size=(b, 3, 16, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  cfg = vit.ViTConfig(**TINY)
  model = vit.ViTForImageClassification(cfg, rngs=nnx.Rngs(4))
  d = tmp_path_factory.mktemp("tiny_vit")
  seven_jax.export.export_pruned(model, cfg, d)
  return d


def test_tiny_parity_classifier(tiny_dir):
  x = _pixels()
  ours = vit.from_pretrained(tiny_dir)
  ours.eval()
  hf = transformers.FlaxViTForImageClassification.from_pretrained(tiny_dir)
  d = max_abs_diff(ours(x), hf(x).logits)
  print(f"ViT classifier logits max diff {d:.3g}")
  assert ours(x).shape == (2, 5) and d < 1e-5
  # NHWC input gives the same logits.
  assert max_abs_diff(ours(x.transpose(0, 2, 3, 1), channels_last=True), ours(x)) < 1e-6


def test_tiny_parity_base_with_pooler(tmp_path):
  cfg = vit.ViTConfig(**TINY)
  model = vit.ViTModel(cfg, rngs=nnx.Rngs(5))
  model.eval()
  seven_jax.export.export_pruned(model, cfg, tmp_path)
  hf = transformers.FlaxViTModel.from_pretrained(tmp_path)
  x = _pixels()
  h, pooled = model(x)
  o = hf(x)
  assert max_abs_diff(h, o.last_hidden_state) < 1e-5
  assert max_abs_diff(pooled, o.pooler_output) < 1e-5
  # Round trip through our own loader is exact.
  again = vit.from_pretrained(tmp_path, task="base")
  for a, b in zip(
    jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(nnx.state(again, nnx.Param))
  ):
    np.testing.assert_array_equal(a, b)


def test_backbone_into_new_head(tiny_dir):
  m, info = vit.from_pretrained(tiny_dir, num_labels=3, return_info=True, seed=1)
  # New label count: the checkpoint's classifier does not fit, so it is
  # freshly initialised while the backbone is loaded.
  assert sorted(info["newly_initialized"]) == ["classifier.bias", "classifier.weight"]
  assert m.classifier.kernel.shape == (32, 3)
  # ... and the backbone is the checkpoint's (read here without our loader).
  sd = load_file(str(tiny_dir / "model.safetensors"))
  query = m.vit.encoder.layer[1].attention.attention.query
  np.testing.assert_array_equal(
    np.asarray(query.kernel[...]), sd["vit.encoder.layer.1.attention.attention.query.weight"].T
  )
  np.testing.assert_array_equal(
    np.asarray(m.vit.embeddings.cls_token[...]), sd["vit.embeddings.cls_token"]
  )


def test_bf16_compute(tiny_dir):
  m32 = vit.from_pretrained(tiny_dir)
  m16 = vit.from_pretrained(tiny_dir, dtype=jnp.bfloat16)
  m32.eval()
  m16.eval()
  assert {x.dtype for x in jax.tree.leaves(nnx.state(m16, nnx.Param))} == {jnp.dtype("float32")}
  x = _pixels()
  fwd = nnx.jit(lambda m: (m.vit(x)[0], m(x)))
  (h16, out16), (h32, out32) = fwd(m16), fwd(m32)
  assert out16.dtype == jnp.float32  # (the final LayerNorm output stays float32)
  assert_bf16_close(h16, h32, out16, out32)


def test_errors():
  with pytest.raises(ValueError, match="patch_size"):
    vit.ViTConfig(image_size=30, patch_size=4)
  cfg = vit.ViTConfig(**TINY)
  m = vit.ViTForImageClassification(cfg, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="channels"):
    m(np.zeros((1, 1, 16, 16), np.float32))
