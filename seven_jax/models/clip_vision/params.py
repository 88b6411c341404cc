"""Loading CLIP vision-tower weights and the SEVEN prunable preset."""

from __future__ import annotations

import os
from typing import Any

import jax
from flax import nnx

from seven_jax.models import _hf
from seven_jax.models.clip_vision import modeling

TASKS = {
  "base": (modeling.CLIPVisionModel, ()),
  "image_classification": (modeling.CLIPVisionForImageClassification, ("classifier",)),
}


def load_config(path_or_id: str | os.PathLike, **overrides) -> modeling.CLIPVisionConfig:
  return modeling.CLIPVisionConfig.from_dict(
    _hf.read_config(_hf.resolve_dir(path_or_id)), **overrides
  )


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
  """
  if task not in TASKS:
    raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
  ckpt = _hf.resolve_dir(path_or_id)
  cfg = modeling.CLIPVisionConfig.from_dict(_hf.read_config(ckpt), **overrides)
  cls, heads = TASKS[task]
  sd = _hf.load_state_dict(ckpt)
  model, fresh = _hf.build_and_load(
    lambda: cls(cfg, rngs=nnx.Rngs(seed)), sd, prefix="vision_model", optional=heads
  )
  return (model, {"newly_initialized": fresh}) if return_info else model


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
  tree = (
    nnx.state(params_or_model, nnx.Param)
    if isinstance(params_or_model, nnx.Module)
    else params_or_model
  )
  tree = nnx.as_pure(tree)
  return jax.tree_util.tree_map_with_path(
    lambda p, _: is_prunable_path(
      _hf.path_names(p), include_patch_embedding=include_patch_embedding, include_head=include_head
    ),
    tree,
  )
