"""Loading CLIP vision-tower weights and the SEVEN prunable preset."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from seven_jax.models import _hf
from seven_jax.models.clip_vision import modeling

TASKS = {
  "base": (modeling.CLIPVisionModel, ()),
  "image_classification": (modeling.CLIPVisionForImageClassification, ("classifier",)),
}


def load_config(path_or_id: str | os.PathLike, **overrides) -> modeling.CLIPVisionConfig:
  """Reads ``config.json`` (tower or full CLIP) into a :class:`CLIPVisionConfig`.

  Raises:
    ValueError, TypeError: naming the file and the field.
  """
  return _hf.load_config(modeling.CLIPVisionConfig, _hf.resolve_dir(path_or_id), overrides)


def from_pretrained(
  path_or_id: str | os.PathLike,
  *,
  task: str = "base",
  seed: int = 0,
  return_info: bool = False,
  **overrides,
):
  """Loads a ``CLIPVisionModel`` or full ``CLIPModel`` checkpoint's tower.

  Text-tower and projection tensors of a full CLIP checkpoint are ignored.

  Args:
    path_or_id: checkpoint directory or a cached Hub id.
    task: ``"base"`` or ``"image_classification"`` (fresh classifier unless
      the checkpoint has a fitting ``classifier``).
    seed: seed for the fresh parts.
    return_info: also return ``{"newly_initialized": [...]}``.
    **overrides: :class:`CLIPVisionConfig` fields.

  Raises:
    ValueError, TypeError: naming the file for a damaged ``config.json`` or
      weights file, and the field for a bad config value.
  """
  return _hf.from_pretrained(
    path_or_id,
    config_cls=modeling.CLIPVisionConfig,
    tasks=TASKS,
    task=task,
    prefix="vision_model",
    seed=seed,
    return_info=return_info,
    overrides=overrides,
  )


def to_hf_state_dict(model_or_params) -> dict[str, np.ndarray]:
  """PyTorch-layout state dict with Hugging Face ``CLIPVisionModel`` key names."""
  return _hf.to_hf_state_dict(model_or_params)


def is_prunable_path(
  names: tuple[str, ...], *, include_patch_embedding: bool = False, include_head: bool = False
) -> bool:
  """Encoder Q/K/V/out and MLP kernels; options add patch conv and head."""
  if not names or names[-1] != "kernel":
    return False
  if "encoder" in names:
    return True
  if "patch_embedding" in names:
    return include_patch_embedding
  return include_head and names[0] == "classifier"


def prunable(
  params_or_model: Any, *, include_patch_embedding: bool = False, include_head: bool = False
):
  """Bool pytree (structure of ``nnx.as_pure(param_state)``)."""
  return _hf.prunable_tree(
    params_or_model,
    lambda names: is_prunable_path(
      names, include_patch_embedding=include_patch_embedding, include_head=include_head
    ),
  )
