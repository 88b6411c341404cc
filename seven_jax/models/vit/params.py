"""Loading Hugging Face ViT checkpoints and the SEVEN prunable preset."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from flax import nnx

from seven_jax.models import _hf
from seven_jax.models.vit import modeling

TASKS = {
  "base": (modeling.ViTModel, ()),
  "image_classification": (modeling.ViTForImageClassification, ("classifier",)),
}


def load_config(path_or_id: str | os.PathLike, **overrides) -> modeling.ViTConfig:
  """Reads ``config.json`` into a :class:`ViTConfig` (overrides win)."""
  return modeling.ViTConfig.from_dict(_hf.read_config(_hf.resolve_dir(path_or_id)), **overrides)


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
  """
  if task not in TASKS:
    raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
  ckpt = _hf.resolve_dir(path_or_id)
  cfg = modeling.ViTConfig.from_dict(_hf.read_config(ckpt), **overrides)
  cls, heads = TASKS[task]
  sd = _hf.load_state_dict(ckpt)
  # A classification checkpoint has no pooler; keep it fresh for "base".
  optional = heads + (("pooler",) if task == "base" else ())
  model, fresh = _hf.build_and_load(
    lambda: cls(cfg, rngs=nnx.Rngs(seed)), sd, prefix="vit", optional=optional
  )
  return (model, {"newly_initialized": fresh}) if return_info else model


def to_hf_state_dict(model_or_params) -> dict[str, np.ndarray]:
  """PyTorch-layout state dict with Hugging Face ViT key names."""
  state = (
    nnx.state(model_or_params, nnx.Param)
    if isinstance(model_or_params, nnx.Module)
    else model_or_params
  )
  return _hf.state_dict_from_params(state)


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
  tree = (
    nnx.state(params_or_model, nnx.Param)
    if isinstance(params_or_model, nnx.Module)
    else params_or_model
  )
  # Strip nnx.Variable wrappers: nnx.Optimizer calls tx.init on the wrapped
  # state but tx.update on nnx.as_pure(state). A tree of bare bools is a
  # tree prefix of both, so it works as an optax mask either way.
  tree = nnx.as_pure(tree)
  return jax.tree_util.tree_map_with_path(
    lambda p, _: is_prunable_path(
      _hf.path_names(p), include_patch_embedding=include_patch_embedding, include_head=include_head
    ),
    tree,
  )
