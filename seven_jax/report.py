"""Per-leaf and total sparsity of a set of masks, as a table."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from seven_jax.prunable import path_str, resolve_prunable

__all__ = ["sparsity_report", "SparsityReport", "LeafSparsity", "count_kept"]


def count_kept(mask) -> jax.Array:
  """The number of ``True`` entries of a bool array, as an int32 device scalar.

  Traceable (use it inside ``jax.jit``): the on-device counterpart of
  ``np.count_nonzero``, for a loop that reads its sparsity without copying the
  masks to the host. The bytes (0 or 1 each) are read four at a time as
  32-bit words, and the popcounts of the words summed: on XLA:CPU that is 14x
  faster than ``jnp.count_nonzero``, whose bool-to-int32 reduction runs at
  about 0.5 GB/s (1.4 vs 19.7 ms for 37 random masks of MiniLM's prunable
  shapes, 10.8M weights, on this project's 2-core CPU). Only
  the last axis is regrouped, so a mask sharded along any axis is counted
  where it lives; a last axis not divisible by 4 falls back to
  ``count_nonzero``.
  """
  mask = jnp.asarray(mask)
  if mask.dtype != jnp.bool_:
    raise TypeError(f"mask: count_kept counts a bool array, got dtype {mask.dtype}")
  if mask.ndim == 0 or mask.shape[-1] % 4:
    return jnp.count_nonzero(mask).astype(jnp.int32)
  words = mask.astype(jnp.uint8).reshape(*mask.shape[:-1], mask.shape[-1] // 4, 4)
  words = jax.lax.bitcast_convert_type(words, jnp.uint32)
  return jnp.sum(jax.lax.population_count(words), dtype=jnp.int32)


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


def _unwrap(x):
  # flax.nnx keeps optimizer state leaves in Variable boxes.
  return x.value if hasattr(x, "value") and not isinstance(x, (jax.Array, np.ndarray)) else x


def _is_array(x) -> bool:
  return isinstance(x, (jax.Array, np.ndarray))


def _state_prunable(state, mask_tree) -> Any:
  """Prunable flags of a pruning state's masks, read from the state itself.

  A leaf is prunable when the state stores a real mask array for it (the
  others hold a placeholder node, whatever its type) and, for a state
  without scores (``fixed_mask``'s, whose masks are all arrays), when it has
  ``ndim >= 2`` as a bare mask tree would.
  """
  # Placeholders (of whatever node type) hold no array leaf and drop out.
  raw = jax.tree_util.tree_flatten_with_path(state.masks, is_leaf=lambda x: _is_array(_unwrap(x)))[
    0
  ]
  stored = {path_str(p).removesuffix("/value") for p, x in raw if _is_array(_unwrap(x))}
  has_scores = getattr(state, "scores", None) is not None
  flat, treedef = jax.tree_util.tree_flatten_with_path(mask_tree)
  flags = [bool(path_str(p) in stored and (has_scores or np.ndim(m) >= 2)) for p, m in flat]
  return jax.tree.unflatten(treedef, flags)


def _check_mask_tree(mask_tree) -> None:
  flat = jax.tree_util.tree_flatten_with_path(mask_tree)[0]
  if not flat:
    raise ValueError("masks_or_state holds no masks (an empty tree).")
  for path, m in flat:
    dtype = getattr(m, "dtype", None)
    if isinstance(m, (bool, np.bool_)) or (dtype is not None and np.dtype(dtype) == np.bool_):
      continue
    what = f"a {np.dtype(dtype)} array" if dtype is not None else f"a {type(m).__name__}"
    raise ValueError(
      f"masks_or_state must be an optimizer state holding a pruning state (seven_mask, "
      f"pruning_mask, fixed_mask) or a pytree of bool masks; found no pruning state, and "
      f"'{path_str(path)}' is {what}, not a bool mask (params, scores or a plain "
      f"optimizer state are not masks)."
    )


def sparsity_report(masks_or_state: Any, prunable: Optional[Any] = None) -> SparsityReport:
  """Per-leaf and total sparsity.

  ``kept`` counts the ``True`` entries of each mask and ``total`` its size;
  the total sparsity is ``1 - kept / total`` over the prunable leaves.

  Args:
    masks_or_state: an optimizer state containing one pruning state
      (:func:`seven_jax.seven_mask`, :func:`seven_jax.pruning_mask` or
      :func:`seven_jax.fixed_mask`, also inside chains, wrappers and
      ``nnx.Optimizer.opt_state``), or a pytree of bool masks
      (``seven_jax.masks(state)``).
    prunable: optional bool pytree (or callable, as for ``seven_mask``) with
      the structure of the masks; by default, when given an optimizer state,
      the prunable leaves are those the pruning state masks, and for a bare
      mask tree every leaf with ``ndim >= 2``.

  Returns:
    A :class:`SparsityReport`; ``print(report)`` shows a markdown table.

  Raises:
    ValueError: ``masks_or_state`` is neither (e.g. params, or the state of
      a plain ``optax.adamw``; the message names the first non-bool leaf), it
      holds several pruning states, or ``prunable`` does not match the masks.
  """
  from seven_jax.transform import find_state, masks as get_masks

  try:
    state = find_state(masks_or_state)
  except ValueError as e:
    if "Found" in str(e):  # several pruning states: ambiguous, say so
      raise ValueError(f"masks_or_state: {e}") from None
    state = None
  if state is not None:
    mask_tree = get_masks(masks_or_state)
    default = _state_prunable(state, mask_tree)
  else:
    mask_tree = jax.tree.map(_unwrap, masks_or_state, is_leaf=lambda x: _is_array(_unwrap(x)))
    _check_mask_tree(mask_tree)
    default = jax.tree.map(lambda m: bool(np.ndim(m) >= 2), mask_tree)
  if prunable is None:
    flags = default
  else:
    if not callable(prunable):  # a tree mapped over nnx Variables holds boxed bools
      prunable = jax.tree.map(_unwrap, prunable, is_leaf=lambda x: x is not _unwrap(x))
    try:
      flags = resolve_prunable(prunable, mask_tree)
    except ValueError as e:
      raise ValueError(f"sparsity_report: {e}") from None
  rows = []
  flat, _ = jax.tree_util.tree_flatten_with_path(mask_tree)
  for (path, m), pr in zip(flat, jax.tree.leaves(flags), strict=True):
    m = np.asarray(jax.device_get(m))
    kept = int(np.count_nonzero(m))
    rows.append(LeafSparsity(path_str(path), tuple(m.shape), kept, int(m.size), bool(pr)))
  return SparsityReport(rows)
