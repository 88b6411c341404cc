"""seven-jax: SEVEN pruning for JAX/Flax, as optax gradient transformations.

The core is :func:`seven_mask`, which wraps any optax optimizer and prunes
while fine-tuning (SEVEN_dyn); :func:`masks` reads the masks back and
:func:`sparsity_report` tabulates them.
"""

from seven_jax.prunable import default_prunable, resolve_prunable
from seven_jax.report import SparsityReport, sparsity_report
from seven_jax.schedules import cubic_keep_ratio, exponential_keep_ratio, keep_count
from seven_jax.statistics import SevenStats
from seven_jax.threshold import (
  canonicalize_scores,
  kth_largest_threshold,
  sort_reference_threshold,
  topk_masks,
)
from seven_jax.transform import SevenMaskState, find_state, masks, seven_mask
from seven_jax.scores import (
  ScoreInputs,
  ScoreRule,
  method_kind,
  methods,
  register_rule,
  soft_movement_penalty,
)
from seven_jax.engine import PruningState, pruning_mask
from seven_jax.prepruning import FixedMaskState, fixed_mask, freeze, prune_before_finetuning
from seven_jax import data, metrics, models  # subpackages, cheap to import
from seven_jax.checkpoint import CheckpointManager
from seven_jax.export import export_pruned, sparse_memory_report

__version__ = "0.1.0"

__all__ = [
  "seven_mask",
  "SevenMaskState",
  "masks",
  "find_state",
  "sparsity_report",
  "SparsityReport",
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
