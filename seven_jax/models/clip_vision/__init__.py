"""CLIP vision tower in Flax NNX: modeling, HF loading, prunable preset."""

from seven_jax.models.clip_vision.modeling import (
  CLIPVisionConfig,
  CLIPVisionForImageClassification,
  CLIPVisionModel,
)
from seven_jax.models.clip_vision.params import (
  from_pretrained,
  is_prunable_path,
  load_config,
  prunable,
  to_hf_state_dict,
)
