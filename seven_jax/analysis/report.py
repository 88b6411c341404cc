"""Reports over experiment run folders: masks, sentinel sets, RGV, stability.

A run folder is what the experiment modules write (``experiments/common.py``):
``results.json`` (config, final metrics, per-leaf sparsity with a
``prunable`` flag), ``masks.npz`` (the final masks, keyed by
``jax.tree_util.keystr`` paths), ``log.jsonl`` (loss and sparsity per step).
Two optional files add sections when present:

``grad_stats.npz``
  per-weight RGV at the scoring point, keys ``magnitude/<leaf>`` and
  ``signed/<leaf>`` (:func:`save_grad_stats`; ``experiments.study`` writes one
  per seed as ``grad_stats-seed<k>.npz`` in the grid folder);
``mask_history.npz``
  masks after successive updates, keys ``<step>/<leaf>``
  (:func:`save_mask_history`), for flips over steps and early-pruning regret.

Leaves are named ``a/b/c`` throughout.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np

from seven_jax.analysis import masks as amasks

__all__ = [
  "Run",
  "load_run",
  "keystr_to_name",
  "save_grad_stats",
  "load_grad_stats",
  "find_grad_stats",
  "save_mask_history",
  "load_mask_history",
  "pair_section",
  "write_report",
]

_KEY = re.compile(r"\['((?:[^'\\]|\\.)*)'\]|\[(-?\d+)\]|\.([A-Za-z_][A-Za-z0-9_]*)")


def keystr_to_name(key: str) -> str:
  """``"['bert']['layer'][0]"`` (``jax.tree_util.keystr``) as ``bert/layer/0``;
  a name that is no keystr is returned unchanged."""
  parts = [a or b or c for a, b, c in _KEY.findall(key)]
  return "/".join(parts) if parts and key.startswith(("[", ".")) else key


class Run(NamedTuple):
  """One run folder, read.

  Attributes:
    folder: the path.
    label: the method name (and sparsity, seed) from its config.
    results: ``results.json`` as a dict ({} if missing).
    masks: ``{leaf: bool array}`` of the prunable leaves (None without masks.npz).
    log: the ``log.jsonl`` records.
    history: ``[(step, {leaf: mask})]`` from ``mask_history.npz``, or None.
  """

  folder: pathlib.Path
  label: str
  results: dict
  masks: Optional[dict]
  log: list
  history: Optional[list]

  @property
  def metric(self) -> Optional[tuple[str, float]]:
    name = self.results.get("primary_metric")
    final = self.results.get("final", {})
    return (name, float(final[name])) if name in final else None


def load_run(folder) -> Run:
  """Reads a run folder (a folder holding one run folder is accepted too)."""
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"run folder {folder} does not exist.")
  if not (folder / "results.json").exists() and not (folder / "masks.npz").exists():
    inner = [p.parent for p in folder.glob("*/results.json")]
    if len(inner) == 1:
      folder = inner[0]
  results = {}
  if (folder / "results.json").exists():
    results = json.loads((folder / "results.json").read_text())
  cfg = results.get("config", {})
  if not cfg and (folder / "config.json").exists():
    cfg = json.loads((folder / "config.json").read_text())
  label = cfg.get("method", folder.name)
  if cfg.get("method_args"):
    label += f"({cfg['method_args']})"
  prunable = {r["path"] for r in results.get("sparsity_per_layer", []) if r.get("prunable")}
  masks = None
  if (folder / "masks.npz").exists():
    with np.load(folder / "masks.npz") as z:
      named = {keystr_to_name(k): np.asarray(z[k], bool) for k in z.files}
    if prunable:
      masks = {k: v for k, v in named.items() if k in prunable}
    else:
      masks = {k: v for k, v in named.items() if v.ndim >= 2}
  log = []
  if (folder / "log.jsonl").exists():
    log = [json.loads(x) for x in (folder / "log.jsonl").read_text().splitlines() if x.strip()]
  history = None
  if (folder / "mask_history.npz").exists():
    history = load_mask_history(folder / "mask_history.npz")
    if masks is not None:
      history = [(s, {k: m[k] for k in masks if k in m}) for s, m in history]
  return Run(folder, label, results, masks, log, history)


# ------------------------------------------------------------ side files


def save_grad_stats(path, rgv, prunable: Optional[Any] = None) -> pathlib.Path:
  """Writes both RGV readings of the prunable leaves (float32) to ``path``.

  ``rgv`` is a :class:`seven_jax.analysis.RGV` over the model's parameter
  tree; leaves are named as the masks are (``a/b/c``).
  """
  arrays = {}
  for reading in ("magnitude", "signed"):
    for name, leaf in amasks.named_leaves(getattr(rgv, reading), prunable):
      arrays[f"{reading}/{name}"] = np.asarray(leaf, np.float32)
  path = pathlib.Path(path)
  np.savez(path, **arrays)
  return path


def load_grad_stats(path) -> dict:
  """``{"magnitude": {leaf: array}, "signed": {...}}`` from :func:`save_grad_stats`."""
  out: dict = {"magnitude": {}, "signed": {}}
  with np.load(path) as z:
    for key in z.files:
      reading, _, name = key.partition("/")
      out.setdefault(reading, {})[name] = np.asarray(z[key])
  return out


def find_grad_stats(folders: Sequence, seed: Optional[int] = None) -> Optional[pathlib.Path]:
  """The first ``grad_stats.npz`` (or ``grad_stats-seed<seed>.npz``) in ``folders``
  or their run sub-folders; None if there is none."""
  for folder in folders:
    folder = pathlib.Path(folder)
    names = ["grad_stats.npz"] + ([f"grad_stats-seed{seed}.npz"] if seed is not None else [])
    for name in names:
      for cand in [folder / name, *folder.glob(f"*/{name}")]:
        if cand.exists():
          return cand
  return None


def save_mask_history(path, history: Sequence[tuple[int, Any]], prunable=None) -> pathlib.Path:
  """Writes ``[(step, masks)]`` (masks a pytree) as ``<step>/<leaf>`` keys."""
  arrays = {}
  for step, masks in history:
    for name, leaf in amasks.named_leaves(masks, prunable):
      arrays[f"{int(step)}/{name}"] = np.asarray(leaf, bool)
  path = pathlib.Path(path)
  np.savez_compressed(path, **arrays)
  return path


def load_mask_history(path) -> list:
  steps: dict = {}
  with np.load(path) as z:
    for key in z.files:
      step, _, name = key.partition("/")
      steps.setdefault(int(step), {})[name] = np.asarray(z[key], bool)
  return sorted(steps.items())


# ---------------------------------------------------------------- plots


def _plt():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def _layer_grid(names: Sequence[str]):
  """Rows = first integer path component (the block), columns = the rest."""
  rows, cols, cells = [], [], {}
  for name in names:
    parts = name.split("/")
    idx = next((i for i, p in enumerate(parts) if p.isdigit()), None)
    if idx is None:
      row, col = "-", name
    else:
      row, col = parts[idx], "/".join(parts[idx + 1 :]) or name
      col = col.removesuffix("/kernel")
    if row not in rows:
      rows.append(row)
    if col not in cols:
      cols.append(col)
    cells[name] = (rows.index(row), cols.index(col))
  return rows, cols, cells


def plot_overlap_heatmap(overlap: dict, path: pathlib.Path, title: str) -> pathlib.Path:
  plt = _plt()
  names = [k for k in overlap if k != amasks.GLOBAL]
  rows, cols, cells = _layer_grid(names)
  grid = np.full((len(rows), len(cols)), np.nan)
  for name in names:
    grid[cells[name]] = overlap[name]["iou"]
  fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(cols), 1.0 + 0.45 * len(rows)))
  im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
  for (r, c), v in np.ndenumerate(grid):
    if not np.isnan(v):
      ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v < 0.6 else "k")
  ax.set_xticks(range(len(cols)), cols, rotation=40, ha="right", fontsize=7)
  ax.set_yticks(range(len(rows)), rows, fontsize=7)
  ax.set_ylabel("block")
  ax.set_title(title, fontsize=9)
  fig.colorbar(im, ax=ax, label="IoU of kept weights")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_rgv_histograms(hists: dict, edges: np.ndarray, path: pathlib.Path, title: str):
  """``hists[reading][set] -> counts`` as density curves over log10(RGV)."""
  plt = _plt()
  readings = list(hists)
  fig, axes = plt.subplots(1, len(readings), figsize=(5.2 * len(readings), 3.6))
  centers = (edges[:-1] + edges[1:]) / 2
  for ax, reading in zip(np.atleast_1d(axes), readings):
    for name, counts in hists[reading].items():
      total = counts.sum()
      if total:
        ax.plot(centers, counts / total / np.diff(edges), label=f"{name} ({total:,})")
    ax.set_xlabel(f"log10 RGV ({reading})")
    ax.set_ylabel("density")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_flips(runs: Sequence[Run], path: pathlib.Path) -> Optional[pathlib.Path]:
  """Flips per mask update (from mask histories) or, without one, the weights
  pruned per logged step (the decrease of the kept count; revivals unseen)."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6.4, 3.6))
  drawn = False
  for run in runs:
    if run.history and len(run.history) > 1:
      rows = amasks.flips_over_history(run.history)
      ax.plot([r["step"] for r in rows], [r["pruned"] for r in rows], label=f"{run.label}: pruned")
      if any(r["revived"] for r in rows):
        ax.plot(
          [r["step"] for r in rows],
          [r["revived"] for r in rows],
          "--",
          label=f"{run.label}: revived",
        )
      drawn = True
    elif run.log and run.masks:
      total = sum(m.size for m in run.masks.values())
      pts = [(r["step"], r["sparsity"]) for r in run.log if "sparsity" in r]
      if len(pts) > 1:
        steps = [p[0] for p in pts[1:]]
        pruned = [max(0.0, (b[1] - a[1]) * total) for a, b in zip(pts[:-1], pts[1:])]
        ax.plot(steps, pruned, label=f"{run.label}: pruned per logged step (from sparsity)")
        drawn = True
  if not drawn:
    plt.close(fig)
    return None
  ax.set_xlabel("step")
  ax.set_ylabel("weights")
  ax.set_yscale("symlog")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


# ---------------------------------------------------------------- sections


def _pct(x, total):
  return f"{100 * x / total:.1f}%" if total else "n/a"


def _g(x, digits=3):
  return (
    "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}g}"
  )


RGV_EDGES = np.linspace(-4.0, 6.0, 101)


def pair_section(
  oneshot_run,
  seven_run,
  report_dir,
  *,
  tag: str = "pair",
  grad_stats=None,
  title: Optional[str] = None,
  flips: bool = True,
) -> list[str]:
  """Markdown lines (and PNGs in ``report_dir``) comparing two runs' masks.

  ``oneshot_run`` is read as the one-shot method (its only-kept weights are
  the TSW candidates), ``seven_run`` as SEVEN. With ``grad_stats`` (a path
  from :func:`save_grad_stats`) the sets' RGV distributions are added.
  """
  a = oneshot_run if isinstance(oneshot_run, Run) else load_run(oneshot_run)
  b = seven_run if isinstance(seven_run, Run) else load_run(seven_run)
  if a.masks is None or b.masks is None:
    missing = a.folder if a.masks is None else b.folder
    raise FileNotFoundError(f"{missing} has no masks.npz")
  common = [k for k in a.masks if k in b.masks]
  if not common:
    raise ValueError(f"{a.folder} and {b.folder} share no prunable leaf.")
  ma = {k: a.masks[k] for k in common}
  mb = {k: b.masks[k] for k in common}
  report_dir = pathlib.Path(report_dir)
  report_dir.mkdir(parents=True, exist_ok=True)
  title = title or f"`{a.label}` vs `{b.label}`"
  lines = [f"## {title}", ""]
  sets = amasks.sentinel_sets(ma, mb)
  counts = amasks.set_counts(sets)[amasks.GLOBAL]
  total = sum(counts.values())
  overlap = amasks.mask_overlap(ma, mb)
  g = overlap[amasks.GLOBAL]
  lines += [
    f"Runs: `{a.folder}` (one-shot: `{a.label}`) and `{b.folder}` (`{b.label}`), "
    f"{total:,} prunable weights in {len(common)} leaves.",
    "",
    "| set | weights | share of prunable |",
    "|---|---|---|",
    f"| kept by both | {counts['both']:,} | {_pct(counts['both'], total)} |",
    f"| kept only by `{a.label}` (TSW candidates) | {counts['only_oneshot']:,} | {_pct(counts['only_oneshot'], total)} |",
    f"| kept only by `{b.label}` | {counts['only_seven']:,} | {_pct(counts['only_seven'], total)} |",
    f"| pruned by both | {counts['neither']:,} | {_pct(counts['neither'], total)} |",
    "",
    f"Global IoU (Jaccard) of the kept sets: **{g['iou']:.4f}**.",
    "",
  ]
  heat = plot_overlap_heatmap(
    overlap, report_dir / f"overlap-{tag}.png", f"IoU per layer: {a.label} vs {b.label}"
  )
  lines += [f"![IoU per layer]({heat.name})", ""]
  per_layer = sorted((k for k in overlap if k != amasks.GLOBAL), key=lambda k: overlap[k]["iou"])
  shown = per_layer if len(per_layer) <= 5 else per_layer[:3] + per_layer[-2:]
  text = ", ".join(f"`{k}` {overlap[k]['iou']:.3f}" for k in shown)
  lines += [
    f"Per-layer IoU, lowest to highest{' (3 lowest, 2 highest)' if len(per_layer) > 5 else ''}: {text}.",
    "",
  ]
  if grad_stats is not None:
    lines += _rgv_lines(
      load_grad_stats(grad_stats), sets, common, a.label, b.label, report_dir, tag, grad_stats
    )
  runs = [r for r in (a, b) if r.history]
  if runs and flips:
    path = plot_flips(runs, report_dir / f"flips-{tag}.png")
    if path is not None:
      lines += [f"![mask flips]({path.name})", ""]
  return lines


def _rgv_lines(stats, sets, names, la, lb, report_dir, tag, source) -> list[str]:
  set_labels = {
    "both": "kept by both",
    "only_oneshot": f"only {la} (TSW cand.)",
    "only_seven": f"only {lb}",
    "neither": "pruned by both",
  }
  lines = [
    f"RGV at the scoring point (`{source}`): per-weight Var/E² over the window; "
    "median [10%, 90%] and the share of weights with a finite value. "
    "The magnitude reading gives SEVEN's factor 1/sqrt(1+RGV).",
    "",
    "| set | RGV magnitude median [q10, q90] | factor 1/sqrt(1+median) | RGV sign-aware median [q10, q90] | finite |",
    "|---|---|---|---|---|",
  ]
  summaries, hists = {}, {}
  for reading in ("magnitude", "signed"):
    values = stats.get(reading, {})
    if not all(n in values for n in names):
      continue
    vals = {n: values[n] for n in names}
    summaries[reading] = amasks.summarize_by_set(vals, sets)[amasks.GLOBAL]
    hists[reading] = {
      set_labels[s]: amasks.masked_histogram(vals, getattr(sets, s), RGV_EDGES)
      for s in ("both", "only_oneshot", "only_seven")
    }
  if not summaries:
    return ["(the grad stats file does not cover these leaves)", ""]
  for s in ("both", "only_oneshot", "only_seven", "neither"):
    cells = []
    for reading in ("magnitude", "signed"):
      r = summaries.get(reading, {}).get(s)
      cells.append("n/a" if r is None else f"{_g(r['q50'])} [{_g(r['q10'])}, {_g(r['q90'])}]")
      if reading == "magnitude":
        med = r["q50"] if r else float("nan")
        cells.append(_g(1 / math.sqrt(1 + med)) if math.isfinite(med) else "n/a")
    r = summaries.get("magnitude", summaries.get("signed"))[s]
    fin = _pct(r["finite"], r["count"])
    lines.append(
      f"| {set_labels[s]} | {cells[0]} | {cells[1]} | {cells[2] if len(cells) > 2 else 'n/a'} | {fin} |"
    )
  path = plot_rgv_histograms(
    hists, RGV_EDGES, report_dir / f"rgv-{tag}.png", f"RGV by set: {la} vs {lb}"
  )
  lines += ["", f"![RGV histograms]({path.name})", ""]
  return lines


def write_report(
  folders: Sequence,
  out_dir,
  *,
  grad_stats=None,
) -> pathlib.Path:
  """``REPORT.md`` over run folders: a summary row per run, every pair's
  overlap, the first pair's sentinel sets (first = one-shot, second = SEVEN)
  and the flips over steps."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  runs = [load_run(f) for f in folders]
  labels = [r.label for r in runs]
  # Two runs of one method (other seeds, settings): tell them apart by folder.
  runs = [
    r._replace(label=f"{r.label} [{i + 1}]") if labels.count(r.label) > 1 else r
    for i, r in enumerate(runs)
  ]
  lines = [
    "# seven-jax analysis",
    "",
    "| run | method | sparsity | metric | masks | mask history |",
    "|---|---|---|---|---|---|",
  ]
  for r in runs:
    m = r.metric
    lines.append(
      f"| `{r.folder}` | {r.label} | {_g(r.results.get('sparsity'), 4)} | "
      f"{f'{m[0]} {m[1]:.4f}' if m else 'n/a'} | {'yes' if r.masks else 'no'} | "
      f"{len(r.history) if r.history else 'no'} |"
    )
  lines.append("")
  with_masks = [r for r in runs if r.masks]
  if len(with_masks) >= 2:
    lines += [
      "## Pairwise IoU of the kept sets",
      "",
      "| | " + " | ".join(r.label for r in with_masks) + " |",
    ]
    lines.append("|---" * (len(with_masks) + 1) + "|")
    for ra in with_masks:
      row = []
      for rb in with_masks:
        common = [k for k in ra.masks if k in rb.masks]
        ov = amasks.mask_overlap({k: ra.masks[k] for k in common}, {k: rb.masks[k] for k in common})
        row.append(f"{ov[amasks.GLOBAL]['iou']:.3f}")
      lines.append(f"| {ra.label} | " + " | ".join(row) + " |")
    lines.append("")
    gs = grad_stats or find_grad_stats([r.folder for r in with_masks[:2]])
    lines += pair_section(
      with_masks[0], with_masks[1], out_dir, tag="pair", grad_stats=gs, flips=False
    )
  flips = plot_flips(runs, out_dir / "flips.png")
  if flips is not None:
    lines += ["## Mask changes over steps", "", f"![flips]({flips.name})", ""]
    for r in runs:
      if r.history and len(r.history) > 1:
        rows = amasks.flips_over_history(r.history)
        lines.append(
          f"- `{r.label}`: {len(rows)} mask updates, {sum(x['pruned'] for x in rows):,} prunings, "
          f"{sum(x['revived'] for x in rows):,} revivals."
        )
    lines.append("")
  path = out_dir / "REPORT.md"
  path.write_text("\n".join(lines) + "\n")
  return path
