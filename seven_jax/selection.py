"""From scores to masks: the one selection step every pruning method shares.

Given the scores of the prunable leaves, the current masks and a keep ratio
``r``, a method keeps

* ``scope="global"``: the ``k = floor(r D)`` largest scores over all ``D``
  prunable weights (one pool, the official SEVEN behaviour);
* ``scope="per_leaf"``: the ``floor(r D_l)`` largest of every leaf;
* ``pattern="N:M"``: in every group of ``M`` consecutive weights along the
  input dimension (axis 0 of a Flax ``(in, out)`` kernel), the ``n`` best,
  where ``n`` follows the schedule from ``M`` down to ``N`` (exactly ``N`` on
  the last step);
* ``threshold=tau``: every weight whose score exceeds ``tau`` (soft movement
  pruning); the sparsity is then whatever the scores give.

Without resurrection, weights pruned earlier take the lowest possible score
before selection (0 for non-negative scores, exactly as SEVEN's (E7); the
most negative float for signed scores such as movement, as FORCE's Iterative
SNIP sets them to the minimum) and the new mask is intersected with the old
one, so masks only shrink. Global and per-leaf budgets use the exact counting
threshold of :mod:`seven_jax.threshold`: ties at the k-th score are all kept,
as ``S >= topk(S, k)[-1]`` in the official code.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seven_jax import schedules
from seven_jax.threshold import kth_largest_threshold

__all__ = [
  "parse_pattern",
  "check_pattern_shapes",
  "nm_masks",
  "select_masks",
  "SCOPES",
  "LOWEST_SCORE",
]

SCOPES = ("global", "per_leaf")
LOWEST_SCORE = np.float32(-np.finfo(np.float32).max)
"""Score given to pruned weights of signed methods (canonical, see threshold)."""


def parse_pattern(pattern: Optional[str]) -> Optional[tuple[int, int]]:
  """``"2:4"`` -> ``(2, 4)``; ``None`` stays ``None``.

  Raises:
    ValueError: not of the form ``"N:M"`` with integers ``0 < N < M``.
  """
  if pattern is None:
    return None
  try:
    n_str, m_str = str(pattern).split(":")
    n, m = int(n_str), int(m_str)
  except ValueError:
    raise ValueError(
      f"pattern must be None or 'N:M' such as '2:4' or '4:8', got {pattern!r}."
    ) from None
  if not 0 < n < m:
    raise ValueError(f"pattern 'N:M' needs 0 < N < M, got {pattern!r}.")
  return n, m


def check_pattern_shapes(nm: Optional[tuple[int, int]], leaves, paths) -> None:
  """Every prunable leaf's axis 0 must split into groups of ``M``."""
  if nm is None:
    return
  n, m = nm
  for leaf, path in zip(leaves, paths):
    shape = np.shape(leaf)
    if len(shape) == 0 or shape[0] % m:
      raise ValueError(
        f"pattern '{n}:{m}' needs the input dimension (axis 0) of every "
        f"prunable leaf to be divisible by {m}, but leaf '{path}' has shape "
        f"{tuple(shape)}. Leave it out with `prunable` or pick another M."
      )


def nm_masks(score: jax.Array, mask: jax.Array, n_keep, m: int) -> jax.Array:
  """Keeps the ``n_keep`` best scores in every group of ``m`` along axis 0.

  Ties are broken in favour of weights that are currently kept, then of the
  lower index, so that exactly ``n_keep`` weights per group survive. The rank
  is computed by pairwise comparison inside each group (``m <= 8`` in
  practice), which costs ``m`` times the leaf size and no sort.
  """
  shape = score.shape
  groups = score.reshape(shape[0] // m, m, -1)
  kept = mask.reshape(shape[0] // m, m, -1)
  si, sj = groups[:, :, None, :], groups[:, None, :, :]
  ki, kj = kept[:, :, None, :], kept[:, None, :, :]
  idx = jnp.arange(m)
  before = (idx[None, :] < idx[:, None])[None, :, :, None]  # j before i
  beats = (sj > si) | ((sj == si) & ((kj & ~ki) | ((kj == ki) & before)))
  rank = jnp.sum(beats, axis=2)  # how many weights of the group beat weight i
  return (rank < n_keep).reshape(shape)


def select_masks(
  scores: Sequence[jax.Array],
  masks: Sequence[jax.Array],
  keep_ratio,
  *,
  scope: str = "global",
  nm: Optional[tuple[int, int]] = None,
  nm_keep=None,
  resurrect: bool = False,
  signed: bool = False,
  threshold=None,
) -> list[jax.Array]:
  """New boolean masks of the prunable leaves.

  Args:
    scores: canonical float32 scores, one per prunable leaf (higher = keep).
    masks: the current masks of those leaves.
    keep_ratio: fraction of weights to keep (may be traced).
    scope: ``"global"`` or ``"per_leaf"``; ignored with ``nm`` or ``threshold``.
    nm: ``(N, M)`` for an N:M pattern, or ``None`` for unstructured top-k.
    nm_keep: weights kept per group of ``M`` (may be traced); defaults to
      ``N``.
    resurrect: if False, pruned weights cannot come back.
    signed: the scores may be negative (pruned weights then score lowest).
    threshold: keep ``score > threshold`` instead of a budget.
  """
  masks = list(masks)
  if not resurrect:
    fill = LOWEST_SCORE if signed else np.float32(0.0)
    scores = [jnp.where(m, s, fill) for s, m in zip(scores, masks)]
  if threshold is not None:
    kept = [s > threshold for s in scores]
  elif nm is not None:
    n, m = nm
    n_keep = n if nm_keep is None else nm_keep
    kept = [nm_masks(s, mk, n_keep, m) for s, mk in zip(scores, masks)]
  elif scope == "global":
    total = int(sum(int(np.prod(s.shape)) for s in scores))
    tau = kth_largest_threshold(scores, schedules.keep_count(keep_ratio, total))
    kept = [s >= tau for s in scores]
  elif scope == "per_leaf":
    kept = [
      s >= kth_largest_threshold([s], schedules.keep_count(keep_ratio, int(np.prod(s.shape))))
      for s in scores
    ]
  else:
    raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}.")
  if not resurrect:
    kept = [k & m for k, m in zip(kept, masks)]
  return kept


def nm_keep_count(keep_ratio, nm: tuple[int, int], is_last) -> jax.Array:
  """Weights kept per group on a schedule step: ``floor(r M)`` clipped to
  ``[N, M]``, and exactly ``N`` on the last step."""
  n, m = nm
  ramp = jnp.clip(jnp.floor(jnp.asarray(keep_ratio, jnp.float32) * m), n, m).astype(jnp.int32)
  return jnp.where(is_last, jnp.int32(n), ramp)
