r"""Comparing masks: sentinel sets, overlap, and stability over a run.

Given two masks at the same sparsity, one from a one-shot score (SNIP) and one
from SEVEN, every prunable weight falls in one of four sets (spec 1.4-1.5):

* ``both``: kept by both: sensitive by any reading (the sentinels, SW, that
  both keep);
* ``only_oneshot``: kept only by the one-shot method: the **TSW candidates**,
  sensitive on the scoring batches but not consistently (their relative
  gradient variation should be high if the paper is right);
* ``only_seven``: kept only by SEVEN: the consistently sensitive weights the
  one-shot method dropped;
* ``neither``: pruned by both.

The per-leaf functions are pure ``jnp`` (jit-able); the summaries turn the
handful of resulting scalars into Python numbers, per layer and globally.
Leaves are named ``a/b/c`` (:func:`seven_jax.prunable.path_str`). Only
prunable leaves count: pass ``prunable`` (a bool pytree), otherwise leaves
with ``ndim >= 2`` are taken as prunable (the library's default).
"""

from __future__ import annotations

import functools

from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seven_jax.prunable import path_str

__all__ = [
  "SentinelSets",
  "SET_NAMES",
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

SET_NAMES = ("both", "only_oneshot", "only_seven", "neither")
GLOBAL = "<global>"


class SentinelSets(NamedTuple):
  """Four bool pytrees (like the masks) partitioning the prunable weights."""

  both: Any
  only_oneshot: Any
  only_seven: Any
  neither: Any


def _is_box(x) -> bool:
  # flax.nnx State leaves are Variable boxes (nnx.Param(...)) around the array.
  return hasattr(x, "value") and not isinstance(x, (jax.Array, np.ndarray))


def _unbox(x):
  return x.value if _is_box(x) else x


def named_leaves(tree: Any, prunable: Optional[Any] = None) -> list[tuple[str, Any]]:
  """``[(path, leaf)]`` of the prunable leaves (``ndim >= 2`` by default).

  ``flax.nnx`` Variable boxes count as leaves (their value is returned), so
  an ``nnx.State`` of parameters pairs with a plain bool ``prunable`` tree.
  """
  flat = [
    (path_str(p), _unbox(leaf))
    for p, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_box)[0]
  ]
  if prunable is None:
    return [(name, leaf) for name, leaf in flat if np.ndim(leaf) >= 2]
  # Matched by path, so containers may differ (an nnx.State and a dict).
  spec = {
    path_str(p): bool(_unbox(x))
    for p, x in jax.tree_util.tree_flatten_with_path(prunable, is_leaf=_is_box)[0]
  }
  missing = [name for name, _ in flat if name not in spec]
  if missing:
    raise ValueError(
      f"prunable has no entry for leaves {missing[:3]} (and {len(missing) - 3} more)."
      if len(missing) > 3
      else f"prunable has no entry for leaves {missing}."
    )
  return [(name, leaf) for name, leaf in flat if spec[name]]


def _check_same(a_named, b_named, what="masks"):
  if [n for n, _ in a_named] != [n for n, _ in b_named]:
    raise ValueError(
      f"the two {what} have different prunable leaves: "
      f"{[n for n, _ in a_named]} vs {[n for n, _ in b_named]}."
    )
  for (n, a), (_, b) in zip(a_named, b_named):
    if np.shape(a) != np.shape(b):
      raise ValueError(f"leaf '{n}' has shape {np.shape(a)} in one and {np.shape(b)} in the other.")


def sentinel_sets(oneshot_mask: Any, seven_mask: Any) -> SentinelSets:
  """The four sets of a (one-shot, SEVEN) mask pair, leaf by leaf (pure)."""
  a = jax.tree.map(lambda m: jnp.asarray(m, jnp.bool_), oneshot_mask)
  b = jax.tree.map(lambda m: jnp.asarray(m, jnp.bool_), seven_mask)
  if jax.tree.structure(a) != jax.tree.structure(b):
    raise ValueError("oneshot_mask and seven_mask must have the same tree structure.")
  return SentinelSets(
    jax.tree.map(lambda x, y: x & y, a, b),
    jax.tree.map(lambda x, y: x & ~y, a, b),
    jax.tree.map(lambda x, y: ~x & y, a, b),
    jax.tree.map(lambda x, y: ~x & ~y, a, b),
  )


def set_counts(sets: SentinelSets, prunable: Optional[Any] = None) -> dict:
  """``{layer: {set: count}}`` plus ``"<global>"``."""
  per = {name: named_leaves(getattr(sets, name), prunable) for name in SET_NAMES}
  out = {}
  for j, (layer, _) in enumerate(per["both"]):
    out[layer] = {name: int(jnp.sum(per[name][j][1])) for name in SET_NAMES}
  out[GLOBAL] = {name: sum(out[layer][name] for layer in out) for name in SET_NAMES}
  return out


@jax.jit
def _leaf_stats(values, selector, qs):
  x = jnp.asarray(values, jnp.float32)
  finite = selector & jnp.isfinite(x)
  n = jnp.sum(finite)
  total = jnp.sum(jnp.where(finite, x, 0.0))
  quant = jnp.nanquantile(jnp.where(finite, x, jnp.nan), qs)
  return jnp.sum(selector), n, total, quant


def summarize_by_set(
  values: Any,
  sets: SentinelSets,
  *,
  prunable: Optional[Any] = None,
  quantiles: Sequence[float] = (0.1, 0.5, 0.9),
) -> dict:
  """Distribution of a per-weight quantity (RGV, a score) inside each set.

  Returns ``{layer: {set: {"count", "finite", "mean", "q10", "q50", ...}}}``
  plus ``"<global>"``. Non-finite values (an RGV of ``inf``/``nan``) are
  counted in ``count`` but left out of the mean and quantiles (``finite``
  says how many were used); an empty set gives ``nan``.
  """
  qs = jnp.asarray(quantiles, jnp.float32)
  qnames = [f"q{round(100 * q):d}" for q in quantiles]
  vals = named_leaves(values, prunable)
  out, gathered = {}, {name: [] for name in SET_NAMES}
  for name in SET_NAMES:
    sel = named_leaves(getattr(sets, name), prunable)
    _check_same(vals, sel, "values and sets")
    for (layer, v), (_, s) in zip(vals, sel):
      count, n, total, quant = _leaf_stats(v, jnp.asarray(s, jnp.bool_), qs)
      n = int(n)
      row = {"count": int(count), "finite": n, "mean": float(total) / n if n else float("nan")}
      row.update(zip(qnames, (float(q) for q in np.asarray(quant))))
      out.setdefault(layer, {})[name] = row
      gathered[name].append(
        jnp.where(jnp.asarray(s, jnp.bool_), jnp.asarray(v, jnp.float32), jnp.nan).reshape(-1)
      )
  out[GLOBAL] = {}
  for name in SET_NAMES:
    flat = jnp.concatenate(gathered[name]) if gathered[name] else jnp.zeros([0])
    count = sum(out[layer][name]["count"] for layer in out if layer != GLOBAL)
    c, n, total, quant = _leaf_stats(flat, ~jnp.isnan(flat), qs)
    n = int(n)
    row = {"count": count, "finite": n, "mean": float(total) / n if n else float("nan")}
    row.update(zip(qnames, (float(q) for q in np.asarray(quant))))
    out[GLOBAL][name] = row
  return out


def masked_histogram(
  values: Any, selector: Any, bins, *, prunable: Optional[Any] = None, log10: bool = True
) -> np.ndarray:
  """Counts of ``values`` (``log10`` of them by default) over ``bins`` edges,
  summed over the prunable leaves, counting only where ``selector`` is True
  and the value is finite (and positive, with ``log10``)."""
  edges = jnp.asarray(bins, jnp.float32)
  total = np.zeros(len(bins) - 1, np.int64)
  vals = named_leaves(values, prunable)
  sel = named_leaves(selector, prunable)
  _check_same(vals, sel, "values and selector")
  for (_, v), (_, s) in zip(vals, sel):
    total += np.asarray(_hist(jnp.asarray(v, jnp.float32), jnp.asarray(s, jnp.bool_), edges, log10))
  return total


@functools.partial(jax.jit, static_argnums=(3,))
def _hist(v, s, edges, log10):
  ok = s & jnp.isfinite(v)
  if log10:
    ok = ok & (v > 0)
    v = jnp.log10(jnp.where(ok, v, 1.0))
  counts, _ = jnp.histogram(v, edges, weights=ok.astype(jnp.float32))
  return jnp.round(counts).astype(jnp.int32)


def _overlap_leaf(a, b):
  a, b = jnp.asarray(a, jnp.bool_), jnp.asarray(b, jnp.bool_)
  return jnp.sum(a), jnp.sum(b), jnp.sum(a & b), jnp.sum(a | b)


def mask_overlap(mask_a: Any, mask_b: Any, *, prunable: Optional[Any] = None) -> dict:
  """Overlap of the kept sets per layer and globally.

  Returns ``{layer: {"kept_a", "kept_b", "intersection", "union", "iou",
  "size"}}`` plus ``"<global>"``; ``iou`` (Jaccard) is
  :math:`|A \\cap B| / |A \\cup B|`, 1 when both keep nothing.
  """
  a_named, b_named = named_leaves(mask_a, prunable), named_leaves(mask_b, prunable)
  _check_same(a_named, b_named)
  out = {}
  for (layer, a), (_, b) in zip(a_named, b_named):
    ka, kb, inter, union = (int(x) for x in jax.jit(_overlap_leaf)(a, b))
    out[layer] = dict(kept_a=ka, kept_b=kb, intersection=inter, union=union, size=int(np.size(a)))
  glob = {k: sum(r[k] for r in out.values()) for k in ("kept_a", "kept_b", "intersection", "union")}
  glob["size"] = sum(r["size"] for r in out.values())
  out[GLOBAL] = glob
  for r in out.values():
    r["iou"] = r["intersection"] / r["union"] if r["union"] else 1.0
  return out


def mask_flips(before: Any, after: Any, *, prunable: Optional[Any] = None) -> dict:
  """Weights whose mask changed between two updates, per layer and globally.

  Returns ``{layer: {"pruned": kept -> pruned, "revived": pruned -> kept,
  "kept": kept after}}`` plus ``"<global>"``.
  """
  a_named, b_named = named_leaves(before, prunable), named_leaves(after, prunable)
  _check_same(a_named, b_named)
  out = {}
  for (layer, a), (_, b) in zip(a_named, b_named):
    a, b = jnp.asarray(a, jnp.bool_), jnp.asarray(b, jnp.bool_)
    out[layer] = dict(
      pruned=int(jnp.sum(a & ~b)), revived=int(jnp.sum(~a & b)), kept=int(jnp.sum(b))
    )
  out[GLOBAL] = {k: sum(r[k] for r in out.values()) for k in ("pruned", "revived", "kept")}
  return out


def flips_over_history(
  history: Sequence[tuple[int, Any]], *, prunable: Optional[Any] = None
) -> list[dict]:
  """Global flips between consecutive masks of ``[(step, masks), ...]``.

  Returns one row per update after the first: ``{"step", "pruned",
  "revived", "kept"}`` (the first mask is compared with nothing).
  """
  rows = []
  for (_, prev), (step, cur) in zip(history[:-1], history[1:]):
    rows.append({"step": int(step), **mask_flips(prev, cur, prunable=prunable)[GLOBAL]})
  return rows


def early_pruning_regret(
  history: Sequence[tuple[int, Any]],
  reference_scores: Any,
  keep: Optional[int] = None,
  *,
  prunable: Optional[Any] = None,
) -> list[dict]:
  """How many weights pruned at each update the reference ranking would keep.

  ``reference_scores`` rank the weights at the end (e.g. the final scores of
  a run with ``resurrect=True``, or scores measured on the dense model, so
  that pruned weights still have one); its global top-``keep`` (ties at the
  ``keep``-th value kept) is the set the reference keeps. ``keep`` defaults
  to the number of weights the last mask of ``history`` keeps.

  Returns one row per mask: ``{"step", "pruned", "would_keep", "fraction"}``,
  ``would_keep`` the pruned weights inside the reference's top-``keep`` and
  ``fraction = would_keep / pruned`` (0 when nothing is pruned).
  """
  from seven_jax.threshold import topk_masks

  if not history:
    raise ValueError("history is empty: pass [(step, masks), ...].")
  ref = named_leaves(reference_scores, prunable)
  if keep is None:
    keep = sum(int(jnp.sum(m)) for _, m in named_leaves(history[-1][1], prunable))
  if keep < 0:
    raise ValueError(f"keep must be >= 0, got {keep!r}.")
  ref_keep = topk_masks([jnp.asarray(s, jnp.float32) for _, s in ref], keep)
  rows = []
  for step, masks in history:
    named = named_leaves(masks, prunable)
    _check_same(ref, named, "reference scores and masks")
    pruned = sum(int(jnp.sum(~jnp.asarray(m, jnp.bool_))) for _, m in named)
    would = sum(int(jnp.sum(~jnp.asarray(m, jnp.bool_) & r)) for (_, m), r in zip(named, ref_keep))
    rows.append(
      dict(
        step=int(step), pruned=pruned, would_keep=would, fraction=would / pruned if pruned else 0.0
      )
    )
  return rows
