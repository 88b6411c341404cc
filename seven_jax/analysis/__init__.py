"""Seeing sentinels: gradient statistics, mask comparisons and run reports.

Pure functions on arrays, masks and optimizer states (spec 1.4-1.6, 5):

* :mod:`~seven_jax.analysis.gradients`: relative gradient variation over a
  window of batches (sign-aware and magnitude readings, streamed), and
  SEVEN's factor ``m_hat / (sqrt(v_hat) + eps)`` read from a live state;
* :mod:`~seven_jax.analysis.masks`: SW / TSW candidate sets of a (one-shot,
  SEVEN) mask pair, their distributions, mask overlap (IoU) and stability
  (flips, early pruning the final ranking regrets);
* ``python -m seven_jax.analysis RUN_DIR [RUN_DIR ...]``: a markdown report
  with plots over experiment run folders (:mod:`~seven_jax.analysis.report`).

Not imported by ``import seven_jax`` (it stays light); import it explicitly.
"""

from seven_jax.analysis.gradients import (
  RGV,
  RGVState,
  ema_factor,
  local_steps,
  relative_gradient_variation,
  rgv_finalize,
  rgv_from_samples,
  rgv_init,
  rgv_update,
  seven_factor,
)
from seven_jax.analysis.masks import (
  GLOBAL,
  SET_NAMES,
  SentinelSets,
  early_pruning_regret,
  flips_over_history,
  mask_flips,
  mask_overlap,
  masked_histogram,
  named_leaves,
  sentinel_sets,
  set_counts,
  summarize_by_set,
)

__all__ = [
  "RGV",
  "RGVState",
  "rgv_init",
  "rgv_update",
  "rgv_finalize",
  "rgv_from_samples",
  "relative_gradient_variation",
  "ema_factor",
  "local_steps",
  "seven_factor",
  "GLOBAL",
  "SET_NAMES",
  "SentinelSets",
  "named_leaves",
  "sentinel_sets",
  "set_counts",
  "summarize_by_set",
  "masked_histogram",
  "mask_overlap",
  "mask_flips",
  "flips_over_history",
  "early_pruning_regret",
]
