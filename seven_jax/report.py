"""Per-leaf and total sparsity of a set of masks, as a table."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import numpy as np

from seven_jax.prunable import path_str

__all__ = ["sparsity_report", "SparsityReport", "LeafSparsity"]


class LeafSparsity(NamedTuple):
  path: str
  shape: tuple
  kept: int
  total: int
  prunable: bool

  @property
  def sparsity(self) -> float:
    return 1.0 - self.kept / self.total if self.total else 0.0


class SparsityReport(NamedTuple):
  """Rows per leaf; ``sparsity`` is over the prunable leaves only."""

  leaves: list

  @property
  def total(self) -> int:
    return sum(r.total for r in self.leaves if r.prunable)

  @property
  def kept(self) -> int:
    return sum(r.kept for r in self.leaves if r.prunable)

  @property
  def sparsity(self) -> float:
    return 1.0 - self.kept / self.total if self.total else 0.0

  def as_dict(self) -> dict:
    return {
      "sparsity": self.sparsity,
      "kept": self.kept,
      "total": self.total,
      "leaves": [
        dict(
          path=r.path,
          shape=list(r.shape),
          kept=r.kept,
          total=r.total,
          prunable=r.prunable,
          sparsity=r.sparsity,
        )
        for r in self.leaves
      ],
    }

  def __str__(self) -> str:
    rows = [
      (
        r.path,
        "x".join(map(str, r.shape)) or "()",
        f"{r.kept:,}",
        f"{r.total:,}",
        f"{100 * r.sparsity:6.2f}%" if r.prunable else "-",
      )
      for r in self.leaves
    ]
    rows.append(
      ("TOTAL (prunable)", "", f"{self.kept:,}", f"{self.total:,}", f"{100 * self.sparsity:6.2f}%")
    )
    head = ("leaf", "shape", "kept", "total", "sparsity")
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = lambda row: "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(head), sep] + [fmt(r) for r in rows])


def sparsity_report(masks_or_state: Any, prunable: Optional[Any] = None) -> SparsityReport:
  """Per-leaf and total sparsity.

  Args:
    masks_or_state: a pytree of bool masks (``seven_jax.masks(state)``) or an
      optimizer state containing a ``seven_mask`` state.
    prunable: optional bool pytree; by default, when given an optimizer state,
      the prunable leaves are those with SEVEN statistics, and for a bare mask
      tree every leaf with ``ndim >= 2``.

  Returns:
    A :class:`SparsityReport`; ``print(report)`` shows a markdown table.
  """
  from seven_jax.transform import find_state, masks as get_masks

  try:
    state = find_state(masks_or_state)
  except ValueError:
    state = None
  if state is not None:
    mask_tree = get_masks(masks_or_state)
    if prunable is None and getattr(state, "scores", None) is None:
      # fixed_mask keeps no scores: fall back to the bare-mask rule below.
      prunable = jax.tree.map(lambda m: bool(np.ndim(m) >= 2), mask_tree)
    elif prunable is None:
      prunable = jax.tree.map(
        lambda m, s: bool(np.ndim(s) > 0 or np.ndim(m) == 0), mask_tree, state.scores
      )
  else:
    mask_tree = masks_or_state
    if prunable is None:
      prunable = jax.tree.map(lambda m: bool(np.ndim(m) >= 2), mask_tree)
  rows = []
  flat, _ = jax.tree_util.tree_flatten_with_path(mask_tree)
  flat_prunable = jax.tree.leaves(prunable)
  for (path, m), pr in zip(flat, flat_prunable):
    m = np.asarray(m)
    rows.append(LeafSparsity(path_str(path), tuple(m.shape), int(m.sum()), int(m.size), bool(pr)))
  return SparsityReport(rows)
