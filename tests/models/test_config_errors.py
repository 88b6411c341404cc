"""Damaged config.json / model.safetensors and bad config values: a clear error
that names the file (and the field), for every model family. Small fake files
in tmp_path; no model is built before the error."""

import json
import re

import numpy as np
import pytest
from safetensors.numpy import save_file

from seven_jax.models import bert
from seven_jax.models import clip_vision
from seven_jax.models import vit

# (package, a small valid config of that family)
FAMILIES = {
  "bert": (
    bert,
    dict(
      model_type="bert",
      vocab_size=50,
      hidden_size=16,
      num_hidden_layers=1,
      num_attention_heads=2,
      intermediate_size=32,
    ),
  ),
  "vit": (
    vit,
    dict(
      model_type="vit",
      image_size=8,
      patch_size=4,
      hidden_size=16,
      num_hidden_layers=1,
      num_attention_heads=2,
      intermediate_size=32,
    ),
  ),
  "clip_vision": (
    clip_vision,
    dict(
      model_type="clip_vision_model",
      image_size=8,
      patch_size=4,
      hidden_size=16,
      num_hidden_layers=1,
      num_attention_heads=2,
      intermediate_size=32,
    ),
  ),
}
family = pytest.mark.parametrize("name", sorted(FAMILIES))


def _ckpt(tmp_path, config_text, weights=True):
  """A checkpoint directory with the given config.json text and a tiny,
  well-formed model.safetensors (the config is read and checked first)."""
  (tmp_path / "config.json").write_text(config_text)
  if weights:
    save_file({"dummy.weight": np.zeros((2, 2), np.float32)}, str(tmp_path / "model.safetensors"))
  return tmp_path


def _names(path):
  return re.escape(str(path))


def _entry_points(pkg):
  """load_config and from_pretrained: both must give the same clear error."""
  return [pkg.load_config, pkg.from_pretrained]


@family
@pytest.mark.parametrize(
  "text, what",
  [
    ("", "is empty"),
    ("   \n", "is empty"),
    ('{"hidden_size": 16, "num_hidden', "not valid JSON"),
    ("[1, 2, 3]", "JSON list, not an object"),
    ('"bert"', "JSON str, not an object"),
  ],
  ids=["empty", "blank", "truncated", "list", "string"],
)
def test_damaged_config_json_names_the_file(tmp_path, name, text, what):
  pkg, _ = FAMILIES[name]
  d = _ckpt(tmp_path, text)
  for load in _entry_points(pkg):
    with pytest.raises(ValueError, match=_names(d / "config.json")) as e:
      load(d)
    assert what in str(e.value), str(e.value)


def test_config_json_that_is_not_text_names_the_file(tmp_path):
  (tmp_path / "config.json").write_bytes(b"\xff\xfe\x00garbage\x80")
  with pytest.raises(ValueError, match=_names(tmp_path / "config.json")):
    bert.load_config(tmp_path)


@family
@pytest.mark.parametrize(
  "field, value, error, message",
  [
    ("hidden_size", "eight", TypeError, r"hidden_size must be an integer, got 'eight' \(str\)"),
    ("num_hidden_layers", True, TypeError, r"num_hidden_layers must be an integer, got True"),
    ("num_attention_heads", 2.0, TypeError, r"num_attention_heads must be an integer, got 2\.0"),
    ("intermediate_size", 0, ValueError, r"intermediate_size must be >= 1, got 0"),
    ("hidden_size", -16, ValueError, r"hidden_size must be >= 1, got -16"),
    ("layer_norm_eps", "1e-5", TypeError, r"layer_norm_eps must be a number, got '1e-5'"),
    ("layer_norm_eps", 0.0, ValueError, r"layer_norm_eps must be > 0, got 0\.0"),
    ("initializer_range", None, TypeError, r"initializer_range must be a number, got None"),
    ("hidden_act", "swish", ValueError, r"hidden_act 'swish' is not supported"),
    ("hidden_act", 3, TypeError, r"hidden_act must be a string, got 3 \(int\)"),
    ("num_attention_heads", 3, ValueError, r"hidden_size \(16\) must be divisible by"),
  ],
)
def test_bad_field_in_config_json_names_the_file_and_the_field(
  tmp_path, name, field, value, error, message
):
  pkg, good = FAMILIES[name]
  d = _ckpt(tmp_path, json.dumps({**good, field: value}))
  for load in _entry_points(pkg):
    with pytest.raises(error, match=_names(d / "config.json") + ": " + message):
      load(d)


@pytest.mark.parametrize(
  "name, field", [("bert", "hidden_dropout_prob"), ("vit", "attention_probs_dropout_prob")]
)
@pytest.mark.parametrize("value", [1.0, -0.1, 1.5, float("nan")])
def test_dropout_rate_out_of_range(tmp_path, name, field, value):
  pkg, good = FAMILIES[name]
  d = _ckpt(tmp_path, json.dumps({**good, field: value}))
  with pytest.raises(ValueError, match=_names(d / "config.json") + f": {field}"):
    pkg.load_config(d)


def test_vit_image_geometry_is_checked(tmp_path):
  _, good = FAMILIES["vit"]
  d = _ckpt(tmp_path, json.dumps({**good, "patch_size": 3}))
  with pytest.raises(
    ValueError, match=r"config\.json: image_size \(8\) must be divisible by patch"
  ):
    vit.from_pretrained(d)


def test_good_config_loads_and_optional_fields_accept_none(tmp_path):
  # The checks above must not refuse what a real config holds.
  _, good = FAMILIES["bert"]
  cfg = bert.load_config(_ckpt(tmp_path, json.dumps({**good, "classifier_dropout": None})))
  assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.classifier_dropout) == (16, 1, None)
  assert cfg.layer_norm_eps == 1e-12
  v = vit.ViTConfig(**{k: w for k, w in FAMILIES["vit"][1].items() if k != "model_type"})
  assert v.pooler_output_size == 16 and v.qkv_bias is True


def test_bad_override_names_the_override(tmp_path):
  _, good = FAMILIES["bert"]
  d = _ckpt(tmp_path, json.dumps(good))
  with pytest.raises(
    TypeError, match=r"with overrides num_labels\): num_labels must be an integer"
  ):
    bert.from_pretrained(d, task="sequence_classification", num_labels="2")
  with pytest.raises(TypeError, match=r"unknown BertConfig field\(s\) hidden_sizes"):
    bert.load_config(d, hidden_sizes=8)


def test_direct_construction_names_the_field():
  with pytest.raises(TypeError, match=r"^hidden_size must be an integer, got 'eight' \(str\)$"):
    bert.BertConfig(hidden_size="eight")
  with pytest.raises(TypeError, match="qkv_bias must be true or false"):
    vit.ViTConfig(qkv_bias="yes")
  with pytest.raises(ValueError, match="num_labels must be >= 1"):
    clip_vision.CLIPVisionConfig(num_labels=0)


@pytest.mark.parametrize(
  "name, other",
  [("bert", "vit"), ("vit", "bert"), ("clip_vision", "bert"), ("bert", "clip_vision")],
)
def test_config_of_another_family_is_refused(tmp_path, name, other):
  pkg, _ = FAMILIES[name]
  _, other_cfg = FAMILIES[other]
  d = _ckpt(tmp_path, json.dumps(other_cfg))
  with pytest.raises(ValueError, match=_names(d / "config.json") + ": model_type '"):
    pkg.from_pretrained(d)


def test_full_clip_config_is_a_clip_vision_config(tmp_path):
  _, tower = FAMILIES["clip_vision"]
  d = _ckpt(tmp_path, json.dumps({"model_type": "clip", "vision_config": tower}))
  assert clip_vision.load_config(d).hidden_size == 16
  d2 = tmp_path / "wrong"
  d2.mkdir()
  _ckpt(d2, json.dumps({"model_type": "clip", "vision_config": {**tower, "hidden_size": "x"}}))
  with pytest.raises(TypeError, match=_names(d2 / "config.json") + ": hidden_size must be"):
    clip_vision.load_config(d2)


@family
@pytest.mark.parametrize("keep", [0, 7, 0.5], ids=["empty", "header-cut", "half"])
def test_truncated_safetensors_names_the_file(tmp_path, name, keep):
  pkg, good = FAMILIES[name]
  d = _ckpt(tmp_path, json.dumps(good), weights=False)
  f = d / "model.safetensors"
  save_file({"w": np.arange(64, dtype=np.float32).reshape(8, 8)}, str(f))
  data = f.read_bytes()
  f.write_bytes(data[: int(keep * len(data)) if isinstance(keep, float) else keep])
  with pytest.raises(ValueError, match=_names(f) + " is not a readable safetensors file") as e:
    pkg.from_pretrained(d)
  assert "truncated" in str(e.value)


def test_sharded_checkpoint_errors_name_the_index_or_the_shard(tmp_path):
  _, good = FAMILIES["bert"]
  d = _ckpt(tmp_path, json.dumps(good), weights=False)
  index = d / "model.safetensors.index.json"
  index.write_text('{"weight_map": {"a.weight": "model-00001.safetensors"}')  # cut
  with pytest.raises(ValueError, match=_names(index) + " is not a safetensors index"):
    bert.from_pretrained(d)
  index.write_text(json.dumps({"weight_map": {"a.weight": "model-00001.safetensors"}}))
  with pytest.raises(
    FileNotFoundError, match=_names(d / "model-00001.safetensors") + " is missing"
  ):
    bert.from_pretrained(d)
  (d / "model-00001.safetensors").write_bytes(b"\x10\x00")
  with pytest.raises(
    ValueError, match=_names(d / "model-00001.safetensors") + " is not a readable"
  ):
    bert.from_pretrained(d)
