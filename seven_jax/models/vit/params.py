"""Loading Hugging Face ViT checkpoints and the SEVEN prunable preset."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from seven_jax.models import _hf
from seven_jax.models.vit import modeling

# task: (module, heads a checkpoint may lack: a classification checkpoint
# has no pooler, so "base" keeps a fresh one).
TASKS = {
  "base": (modeling.ViTModel, ("pooler",)),
  "image_classification": (modeling.ViTForImageClassification, ("classifier",)),
}


def load_config(path_or_id: str | os.PathLike, **overrides) -> modeling.ViTConfig:
  """Reads ``config.json`` into a :class:`ViTConfig` (overrides win).

  Raises:
    ValueError, TypeError: naming the file and the field.
  """
  return _hf.load_config(modeling.ViTConfig, _hf.resolve_dir(path_or_id), overrides)


def from_pretrained(
  path_or_id: str | os.PathLike,
  *,
  task: str = "image_classification",
  seed: int = 0,
  return_info: bool = False,
  **overrides,
):
  """Builds a ViT and loads Hugging Face weights (config + safetensors).

  Args:
    path_or_id: checkpoint directory or a cached Hub id.
    task: ``"image_classification"`` or ``"base"`` (with pooler).
    seed: seed for parts the checkpoint lacks (a fresh classifier).
    return_info: also return ``{"newly_initialized": [...]}``.
    **overrides: :class:`ViTConfig` fields (``num_labels``, ``dtype``, ...).

  Raises:
    ValueError, TypeError: naming the file for a damaged ``config.json`` or
      weights file, and the field for a bad config value.
  """
  return _hf.from_pretrained(
    path_or_id,
    config_cls=modeling.ViTConfig,
    tasks=TASKS,
    task=task,
    prefix="vit",
    seed=seed,
    return_info=return_info,
    overrides=overrides,
  )


def to_hf_state_dict(model_or_params) -> dict[str, np.ndarray]:
  """PyTorch-layout state dict with Hugging Face ViT key names."""
  return _hf.to_hf_state_dict(model_or_params)


def is_prunable_path(
  names: tuple[str, ...], *, include_patch_embedding: bool = False, include_head: bool = False
) -> bool:
  """Whether a ViT parameter (by path names) is in the SEVEN preset.

  Default: every encoder ``kernel`` (Q/K/V, attention output, MLP in/out).
  Options add the patch-embedding conv kernel and the classifier / pooler
  kernels. Biases, LayerNorms, [CLS] and position embeddings never match.
  """
  if not names or names[-1] != "kernel":
    return False
  if "encoder" in names:
    return True
  if "patch_embeddings" in names:
    return include_patch_embedding
  if names[0] in ("classifier", "pooler") or "pooler" in names:
    return include_head
  return False


def prunable(
  params_or_model: Any, *, include_patch_embedding: bool = False, include_head: bool = False
):
  """Bool pytree (structure of the param state) selecting prunable kernels.

  Accepts ``nnx.state(model, nnx.Param)``, a pure dict, an abstract state, a
  Hugging Face Flax params dict, or the model itself.
  """
  return _hf.prunable_tree(
    params_or_model,
    lambda names: is_prunable_path(
      names, include_patch_embedding=include_patch_embedding, include_head=include_head
    ),
  )
