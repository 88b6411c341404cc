"""CLIP vision tower: parity with transformers' FlaxCLIPVisionModel."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seven_jax.export import export_pruned
from seven_jax.models import clip_vision
from tests._helpers import assert_bf16_close, max_abs_diff

transformers = pytest.importorskip("transformers")

TINY = dict(
  image_size=16,
  patch_size=4,
  hidden_size=32,
  num_hidden_layers=2,
  num_attention_heads=2,
  intermediate_size=64,
  num_labels=3,
)


def test_tiny_parity_and_full_clip_config(tmp_path):
  cfg = clip_vision.CLIPVisionConfig(**TINY)
  model = clip_vision.CLIPVisionModel(cfg, rngs=nnx.Rngs(0))
  model.eval()
  export_pruned(model, cfg, tmp_path / "tower")
  hf = transformers.FlaxCLIPVisionModel.from_pretrained(tmp_path / "tower")
  x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
  h, pooled = model(x)
  o = hf(x)
  d_h = max_abs_diff(h, o.last_hidden_state)
  d_p = max_abs_diff(pooled, o.pooler_output)
  print(f"CLIP vision parity: hidden {d_h:.3g}, pooled {d_p:.3g}")
  assert d_h < 1e-5 and d_p < 1e-5

  # A full-CLIP config.json (vision_config nested) loads the same tower.
  full = tmp_path / "full"
  full.mkdir()
  (full / "model.safetensors").symlink_to(tmp_path / "tower" / "model.safetensors")
  (full / "config.json").write_text(
    json.dumps({"model_type": "clip", "vision_config": cfg.to_hf_dict(), "text_config": {}})
  )
  m2, info = clip_vision.from_pretrained(full, task="image_classification", return_info=True)
  assert sorted(info["newly_initialized"]) == ["classifier.bias", "classifier.weight"]
  m2.eval()
  assert max_abs_diff(m2.vision_model(x)[0], h) == 0.0
  assert m2(x).shape == (2, 3)


def test_clip_preset():
  cfg = clip_vision.CLIPVisionConfig()  # ViT-B/32 tower shape
  state = nnx.state(
    nnx.eval_shape(lambda: clip_vision.CLIPVisionForImageClassification(cfg, rngs=nnx.Rngs(0))),
    nnx.Param,
  )
  flags = jax.tree.leaves(clip_vision.prunable(state))
  assert sum(flags) == 72
  flags = jax.tree.leaves(
    clip_vision.prunable(state, include_patch_embedding=True, include_head=True)
  )
  assert sum(flags) == 74


def test_bf16(tmp_path):
  cfg = clip_vision.CLIPVisionConfig(**TINY)
  m32 = clip_vision.CLIPVisionModel(cfg, rngs=nnx.Rngs(0))
  m16 = clip_vision.CLIPVisionModel(
    clip_vision.CLIPVisionConfig(**TINY, dtype=jnp.bfloat16), rngs=nnx.Rngs(0)
  )
  x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
  f = nnx.jit(lambda m: m(x))
  (h16, pooled16), (h32, pooled32) = f(m16), f(m32)
  assert h16.dtype == jnp.bfloat16
  assert_bf16_close(h16, h32, pooled16, pooled32)
