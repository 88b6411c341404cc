"""ViT in Flax NNX: modeling, Hugging Face loading, SEVEN prunable preset."""

from seven_jax.models.vit.modeling import (
  ViTConfig,
  ViTForImageClassification,
  ViTModel,
)
from seven_jax.models.vit.params import (
  from_pretrained,
  is_prunable_path,
  load_config,
  prunable,
  to_hf_state_dict,
)
