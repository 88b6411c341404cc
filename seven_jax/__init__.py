"""seven-jax: SEVEN pruning for JAX/Flax, as optax gradient transformations.

The core is :func:`seven_mask`, which wraps any optax optimizer and prunes
while fine-tuning (SEVEN_dyn); :func:`masks` reads the masks back and
:func:`sparsity_report` tabulates them.

``import seven_jax`` loads only the core (JAX, optax, numpy); the model
presets (``seven_jax.models``), the data registry (``seven_jax.data``), the
metrics, checkpoints (orbax) and export load on first use.
"""

import importlib

from seven_jax.prunable import default_prunable, resolve_prunable
from seven_jax.report import SparsityReport, count_kept, sparsity_report
from seven_jax.schedules import cubic_keep_ratio, exponential_keep_ratio, keep_count
from seven_jax.statistics import SevenStats
from seven_jax.threshold import (
  canonicalize_scores,
  kth_largest_threshold,
  sort_reference_threshold,
  topk_masks,
)
from seven_jax.state import (
  FixedMaskState,
  PruningState,
  SevenMaskState,
  find_state,
  freeze,
  masks,
  prunable_tree,
)
from seven_jax.scores import (
  ScoreInputs,
  ScoreRule,
  method_kind,
  methods,
  register_rule,
  soft_movement_penalty,
)
from seven_jax.engine import fixed_mask, pruning_mask, straight_through_masked
from seven_jax.transform import seven_mask
from seven_jax.prepruning import prune_before_finetuning

__version__ = "0.1.0"

# Loaded on first access (module attribute -> (module, attribute or None)).
_LAZY = {
  "data": ("seven_jax.data", None),
  "metrics": ("seven_jax.metrics", None),
  "models": ("seven_jax.models", None),
  "analysis": ("seven_jax.analysis", None),
  "checkpoint": ("seven_jax.checkpoint", None),
  "export": ("seven_jax.export", None),
  "CheckpointManager": ("seven_jax.checkpoint", "CheckpointManager"),
  "export_pruned": ("seven_jax.export", "export_pruned"),
  "sparse_memory_report": ("seven_jax.export", "sparse_memory_report"),
}


def __getattr__(name):
  if name in _LAZY:
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value
  raise AttributeError(f"module 'seven_jax' has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_LAZY))


__all__ = [
  "seven_mask",
  "SevenMaskState",
  "masks",
  "find_state",
  "prunable_tree",
  "sparsity_report",
  "SparsityReport",
  "count_kept",
  "cubic_keep_ratio",
  "exponential_keep_ratio",
  "keep_count",
  "kth_largest_threshold",
  "topk_masks",
  "sort_reference_threshold",
  "canonicalize_scores",
  "default_prunable",
  "resolve_prunable",
  "SevenStats",
  "pruning_mask",
  "straight_through_masked",
  "PruningState",
  "methods",
  "method_kind",
  "register_rule",
  "ScoreRule",
  "ScoreInputs",
  "soft_movement_penalty",
  "prune_before_finetuning",
  "fixed_mask",
  "FixedMaskState",
  "freeze",
  "CheckpointManager",
  "export_pruned",
  "sparse_memory_report",
]
