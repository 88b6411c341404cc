"""Aggregate runs into a markdown table and a metric-versus-sparsity plot.

::

    python -m experiments.summary runs/                  # writes runs/summary.md and runs/summary.png
    python -m experiments.summary runs/ --out table.md --plot plot.png

Every ``results.json`` under the folder (written by :func:`experiments.common.run`)
is one run. Only runs that can be compared share a row or a panel:

* **Recipe.** Runs are first grouped by their full training recipe: every
  config field except the seed, the output folder and the fields that cannot
  change the numbers (``resume``, ``checkpoint_every``, ``log_every``,
  ``stop_after``), and except the method's own settings below. A 120-step and
  a 300-step run are two recipes: two panels, each with its own dense line.
* **Row.** Within a recipe, one row per method, method settings (the pruning
  schedule ``start_step``, ``pruning_steps``, ``update_every``,
  ``prune_before_steps``, the rates ``b1``, ``b2``, the budget's ``scope``,
  ``include_pooler`` and ``straight_through``; none for dense) and target
  sparsity (0 for dense, whatever its config says). A run older than
  ``scope`` or ``include_pooler`` counts as ``global`` and ``True`` (what it
  did). The seeds of a row are its runs.

Each row shows the primary metric (``results["primary_metric"]``) as mean ± std
over its seeds (sample std, ddof = 1) with the number of seeds ``n``. One seed
has no spread: its std is NaN and the table says "one seed" instead of a
fake ``± 0``. Accuracy rows show the majority-class rate of the evaluation
split (the accuracy of a constant classifier): from ``results["majority_rate"]``
when the run recorded it, else counted from the dataset's labels
(:mod:`seven_jax.data`, the first split of ``eval_split``, the first
``eval_examples``), else "n/a". A row whose seeds score at most the majority
rate + :data:`COLLAPSE_MARGIN` is marked collapsed.

The plot has one panel per (task, recipe, metric): one series per method and
settings, each with its own marker, offset sideways around its sparsity so no
method hides another; several seeds give a filled marker with a one-std error
bar and the seeds as small dots, one seed a hollow marker labelled ``n=1``. The
dense mean is a dashed line (a band of ± one std with several seeds), the
majority-class rate a dotted grey line. Collapsed rows (and, without a majority
rate, far low outliers) do not set the y-range: they are drawn as ``v`` markers
at the bottom edge, with their value written beside them.

Interrupted or ``--stop-after`` runs (not finished: ``--resume`` them) and
unreadable files are left out with a warning.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import math
import os
import pathlib
import sys
from collections.abc import Iterable

import numpy as np

DENSE = "dense"
# Config fields that do not identify a recipe: the seed (the replicate axis),
# where the run was written, and bookkeeping that cannot change the numbers.
NOT_RECIPE = ("seed", "out", "resume", "checkpoint_every", "log_every", "stop_after")
# The method's own settings: they tell apart rows of one recipe (dense has none).
METHOD_SETTINGS = (
  "start_step",
  "pruning_steps",
  "update_every",
  "prune_before_steps",
  "b1",
  "b2",
  "scope",
  "include_pooler",
  "straight_through",
)
# What a run made before a setting existed did: one global budget, and the
# BERT classifiers pruned their pooler. Such a run and a newer one at these
# values are one row, not two.
SETTING_DEFAULTS = {"scope": "global", "include_pooler": True}
# A seed at most this far above the majority-class rate has collapsed to a
# constant classifier (0.5 points: a few test examples on top of the constant).
COLLAPSE_MARGIN = 0.005
MARKERS = ("o", "s", "^", "D", "P", "X", "*", "<", ">", "h", "p", "8")
# Sideways offset between the series at one sparsity (in sparsity units).
SERIES_OFFSET = 0.012


def primary_metric(results: dict) -> str:
  """The run's primary metric: recorded by ``common.run``, else the first of ``final``."""
  if "primary_metric" in results:
    return results["primary_metric"]
  keys = [k for k in results["final"] if k != "step"]
  if not keys:
    raise ValueError("no metrics in results['final']")
  return keys[0]


def is_accuracy(metric: str) -> bool:
  """Whether a constant classifier's score is the majority-class rate (accuracy metrics)."""
  return metric.rsplit("/", 1)[-1] == "accuracy"


def dataset_labels(task: str, split: str) -> np.ndarray:
  """Integer labels of ``task``'s ``split`` from :mod:`seven_jax.data` (raises if unavailable)."""
  from seven_jax import data as sj_data  # lazy: jax is only needed for this fallback

  dataset = sj_data.get_dataset(task, split)
  if dataset.spec.num_labels < 2:
    raise ValueError(f"{task} is a regression task: no majority class")
  columns = getattr(dataset, "columns", None)
  if columns is not None and "label" in columns:
    return np.asarray(columns["label"], np.int64)
  return np.asarray([int(dataset[i]["label"]) for i in range(len(dataset))], np.int64)


@functools.cache
def _majority_from_labels(task: str, split: str, examples: int) -> float | None:
  try:
    labels = np.asarray(dataset_labels(task, split))
  except Exception:  # noqa: BLE001 - any failure means "n/a" in the table, not a crash
    return None
  if examples:
    labels = labels[:examples]
  if labels.size == 0:
    return None
  return float(np.bincount(labels.astype(np.int64)).max() / labels.size)


def majority_rate(results: dict, metric: str) -> tuple[float | None, str]:
  """``(rate, source)`` of the run's evaluation split; ``(None, why)`` when unknown."""
  if not is_accuracy(metric):
    return None, "not an accuracy"
  for key in ("majority_rate", "majority_class_rate"):
    if results.get(key) is not None:
      return float(results[key]), "results.json"
  config = results["config"]
  split = str(config.get("eval_split", "test")).split(",")[0].strip()
  rate = _majority_from_labels(config["task"], split, int(config.get("eval_examples") or 0))
  return (rate, "dataset labels") if rate is not None else (None, "labels not available")


def _frozen(value):
  # Config values as hashable, comparable keys (lists from JSON become tuples).
  return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


def load_runs(folder, *, warn=None) -> list[dict]:
  """Every finished run under ``folder`` as a flat record.

  Returns:
    dicts with ``path, task, method, target, sparsity, metric, value, seed,
    steps_per_second, train_seconds, recipe, settings, majority,
    majority_source``; ``recipe`` and ``settings`` are sorted tuples of
    ``(config field, value)``.
  Raises:
    FileNotFoundError: ``folder`` does not exist or holds no results.json.
  """
  warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr))
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"runs folder {str(folder)!r} does not exist")
  paths = sorted(folder.rglob("results.json"))
  if not paths:
    raise FileNotFoundError(f"no results.json under {str(folder)!r}")
  runs = []
  for path in paths:
    try:
      results = json.loads(path.read_text())
      if results.get("interrupted") or results.get("stopped_early"):
        warn(f"{path}: interrupted run left out (continue it with --resume)")
        continue
      config = results["config"]
      metric = primary_metric(results)
      method = config["method"]
      dense = method == DENSE
      recipe = tuple(
        sorted(
          (k, _frozen(v))
          for k, v in config.items()
          if k not in NOT_RECIPE and k not in METHOD_SETTINGS and k not in ("method", "sparsity")
        )
      )
      recorded = {**SETTING_DEFAULTS, **config}
      settings = () if dense else tuple((k, recorded[k]) for k in METHOD_SETTINGS if k in recorded)
      majority, source = majority_rate(results, metric)
      runs.append(
        {
          "path": str(path),
          "task": config["task"],
          "method": method,
          # Dense runs prune nothing, whatever sparsity their config carries.
          "target": 0.0 if dense else float(config["sparsity"]),
          "sparsity": float(results.get("sparsity", 0.0)),
          "metric": metric,
          "value": float(results["final"][metric]),
          "seed": config.get("seed"),
          "steps_per_second": float(results.get("steps_per_second", float("nan"))),
          "train_seconds": float(results.get("train_seconds", float("nan"))),
          "recipe": recipe,
          "settings": settings,
          "majority": majority,
          "majority_source": source,
        }
      )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
      warn(f"{path}: left out ({type(error).__name__}: {error})")
  if not runs:
    raise FileNotFoundError(f"no finished, readable run under {str(folder)!r}")
  return runs


def _std(values) -> float:
  # One seed has no spread: NaN, not a misleading 0.
  return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def _order(recipe: tuple) -> tuple:
  # Sortable whatever the value types (numbers by value, None and strings apart).
  return tuple((k, type(v).__name__, v) for k, v in recipe)


def recipe_ids(runs: Iterable[dict]) -> dict:
  """``{(task, recipe): "R1", ...}``, numbered in sorted order within each task."""
  keys = sorted({(r["task"], r["recipe"]) for r in runs}, key=lambda k: (k[0], _order(k[1])))
  ids, counter = {}, collections.Counter()
  for task, recipe in keys:
    counter[task] += 1
    ids[(task, recipe)] = f"R{counter[task]}"
  return ids


def aggregate(runs: Iterable[dict]) -> list[dict]:
  """One row per (task, recipe, metric, method, settings, target), over seeds; sorted for reading."""
  runs = list(runs)
  ids = recipe_ids(runs)
  groups = collections.defaultdict(list)
  for run in runs:
    key = (run["task"], run["recipe"], run["metric"], run["method"], run["settings"], run["target"])
    groups[key].append(run)
  rows = []
  for (task, recipe, metric, method, settings, target), members in groups.items():
    members.sort(key=lambda m: (m["seed"] is None, m["seed"]))
    values = [m["value"] for m in members]
    majorities = [m["majority"] for m in members if m["majority"] is not None]
    majority = float(np.mean(majorities)) if majorities else None
    collapsed = 0 if majority is None else sum(v <= majority + COLLAPSE_MARGIN for v in values)
    rows.append(
      {
        "task": task,
        "recipe_id": ids[(task, recipe)],
        "recipe": dict(recipe),
        "method": method,
        "settings": dict(settings),
        "target": target,
        "metric": metric,
        "mean": float(np.mean(values)),
        "std": _std(values),
        "n": len(members),
        "values": values,
        "seeds": [m["seed"] for m in members if m["seed"] is not None],
        "sparsity": float(np.mean([m["sparsity"] for m in members])),
        "steps_per_second": float(np.nanmean([m["steps_per_second"] for m in members])),
        "majority": majority,
        "majority_source": members[0]["majority_source"],
        "collapsed": collapsed,
      }
    )
  # Within a task and recipe: dense first, then methods alphabetically, then by sparsity.
  rows.sort(
    key=lambda r: (
      r["task"],
      r["recipe_id"],
      r["metric"],
      r["method"] != DENSE,
      r["method"],
      repr(sorted(r["settings"].items())),
      r["target"],
    )
  )
  return rows


def _number(x: float, scale: float) -> str:
  # Percent-scale metrics (SQuAD, scale > 1.5) read better with 2 decimals, [0, 1] ones with 4.
  return f"{x:.2f}" if abs(scale) > 1.5 else f"{x:.4f}"


def _differing_settings(rows: list[dict]) -> dict:
  """Per (task, recipe): the method-setting fields whose value differs between its rows."""
  pruned = [r for r in rows if r["method"] != DENSE]
  keys = collections.defaultdict(set)
  for r in pruned:
    keys[(r["task"], r["recipe_id"])].update(r["settings"])
  fields = collections.defaultdict(set)
  for r in pruned:
    for k in keys[(r["task"], r["recipe_id"])]:  # a field a run does not record counts as None
      fields[(r["task"], r["recipe_id"], k)].add(repr(r["settings"].get(k)))
  return {key: len(values) > 1 for key, values in fields.items()}


def settings_label(row: dict, differing: dict | None = None) -> str:
  """Short text of a row's method settings: those that differ between rows of its recipe."""
  if not row["settings"]:
    return ""
  keys = [
    k
    for k in row["settings"]
    if differing is None or differing.get((row["task"], row["recipe_id"], k), False)
  ]
  return ", ".join(f"{k}={row['settings'][k]}" for k in keys)


def _spread(row: dict) -> str:
  if row["n"] < 2:
    return f"{_number(row['mean'], row['mean'])} (one seed: no spread)"
  return f"{_number(row['mean'], row['mean'])} ± {_number(row['std'], row['mean'])}"


def _versus_majority(row: dict) -> str:
  if row["majority"] is None:
    return "n/a" if is_accuracy(row["metric"]) else ""
  if row["collapsed"]:
    return f"**collapsed** ({row['collapsed']}/{row['n']} seeds)"
  return f"{row['mean'] - row['majority']:+.4f}"


def _recipes(rows: list[dict]) -> dict:
  """``{(task, recipe_id): (fields that differ between the task's recipes, the rest)}`` as text."""
  recipes = {}
  for r in rows:
    recipes.setdefault((r["task"], r["recipe_id"]), r["recipe"])
  out = {}
  for task in sorted({t for t, _ in recipes}):
    mine = {rid: recipe for (t, rid), recipe in recipes.items() if t == task}
    keys = sorted(set().union(*mine.values()))
    differ = [k for k in keys if len({repr(rec.get(k)) for rec in mine.values()}) > 1]
    for rid, recipe in sorted(mine.items()):
      main = ", ".join(f"{k}={recipe.get(k)}" for k in differ)
      rest = ", ".join(f"{k}={recipe[k]}" for k in keys if k not in differ and k in recipe)
      out[(task, rid)] = (main, rest)
  return out


def recipe_lines(rows: list[dict]) -> list[str]:
  """Markdown bullets: each recipe's fields, those that differ between recipes first."""
  return [
    f"- **{task} {rid}**: {main or 'the only recipe'} (the rest: {rest})"
    for (task, rid), (main, rest) in _recipes(rows).items()
  ]


def markdown(rows: list[dict]) -> str:
  differing = _differing_settings(rows)
  lines = [
    (
      "| task | recipe | method | settings | target sparsity | achieved sparsity | metric | "
      "mean ± std | n seeds | seeds | majority class | vs majority | steps/s |"
    ),
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    sps = "" if math.isnan(r["steps_per_second"]) else f"{r['steps_per_second']:.2f}"
    majority = "" if not is_accuracy(r["metric"]) else "n/a"
    if r["majority"] is not None:
      majority = f"{r['majority']:.4f}"
    seeds = ", ".join(str(s) for s in r["seeds"])
    lines.append(
      f"| {r['task']} | {r['recipe_id']} | {r['method']} | {settings_label(r, differing)} | "
      f"{r['target']:.0%} | {r['sparsity']:.2%} | {r['metric']} | {_spread(r)} | {r['n']} | "
      f"{seeds} | {majority} | {_versus_majority(r)} | {sps} |"
    )
  lines += ["", "Recipes (every config field but the seed, output and bookkeeping):"]
  lines += recipe_lines(rows)
  notes = sorted(
    {
      f"{r['task']}: majority-class rate {r['majority_source']}"
      for r in rows
      if is_accuracy(r["metric"])
    }
  )
  if notes:
    lines += ["", "Majority class: " + "; ".join(notes) + "."]
  return "\n".join(lines)


def _low_outliers(rows: list[dict]) -> set:
  """Indices of rows that must not set a panel's y-range.

  Collapsed rows when the majority-class rate is known; without it, means more
  than three interquartile ranges (at least 0.05 of the metric's scale) below
  the first quartile, when at least four rows give quartiles.
  """
  if any(r["majority"] is not None for r in rows):
    out = {i for i, r in enumerate(rows) if r["collapsed"] == r["n"]}
  else:
    means = np.asarray([r["mean"] for r in rows])
    out = set()
    if means.size >= 4:
      q1, q3 = np.percentile(means, [25, 75])
      floor = q1 - 3 * max(q3 - q1, 0.05 * max(abs(np.median(means)), 1e-12))
      out = {i for i, m in enumerate(means) if m < floor}
  return out if len(out) < len(rows) else set()  # all collapsed: show them as they are


def panel_layout(rows: list[dict]) -> list[dict]:
  """What :func:`plot` draws, panel by panel (pure; the tests read it).

  Returns:
    one dict per (task, recipe, metric): ``title, metric, ylim, majority,
    dense`` (``None`` or ``{mean, std, n}``) and ``points``, one per non-dense
    row: ``series, marker, x, target, y, low, high, n, values, hollow,
    clipped, mean``.
  """
  differing = _differing_settings(rows)
  recipes = _recipes(rows)
  panels = collections.OrderedDict()
  for r in rows:
    panels.setdefault((r["task"], r["recipe_id"], r["metric"]), []).append(r)
  layouts = []
  for (task, rid, metric), members in panels.items():
    dense = [r for r in members if r["method"] == DENSE]
    pruned = [r for r in members if r["method"] != DENSE]
    series = sorted(
      {
        (
          r["method"]
          + (f" ({settings_label(r, differing)})" if settings_label(r, differing) else "")
        )
        for r in pruned
      }
    )
    names = {}
    for r in pruned:
      label = settings_label(r, differing)
      names[id(r)] = r["method"] + (f" ({label})" if label else "")
    majorities = [r["majority"] for r in members if r["majority"] is not None]
    majority = float(np.mean(majorities)) if majorities else None
    outliers = _low_outliers(members)
    kept = [r for i, r in enumerate(members) if i not in outliers]
    lows = [
      min([r["mean"] - (0 if math.isnan(r["std"]) else r["std"])] + r["values"]) for r in kept
    ]
    highs = [
      max([r["mean"] + (0 if math.isnan(r["std"]) else r["std"])] + r["values"]) for r in kept
    ]
    if majority is not None and not outliers:
      lows.append(majority)  # the constant classifier's line is in view unless it would squash
    lo, hi = min(lows), max(highs)
    pad = max(
      0.12 * (hi - lo), 0.02 * max(abs(hi), 1e-12), 1e-6
    )  # a minimum span: no zoom on noise
    ylim = (lo - pad, hi + pad)
    edge = ylim[0] + 0.35 * pad  # where clipped rows are drawn
    points = []
    index_of = {id(r): i for i, r in enumerate(members)}
    for r in pruned:
      index = index_of[id(r)]
      name = names[id(r)]
      k = series.index(name)
      clipped = index in outliers
      std = 0.0 if math.isnan(r["std"]) else r["std"]
      points.append(
        {
          "series": name,
          "marker": MARKERS[k % len(MARKERS)],
          "target": r["target"],
          "x": r["target"] + (k - (len(series) - 1) / 2) * SERIES_OFFSET,
          "mean": r["mean"],
          "y": edge if clipped else r["mean"],
          "low": r["mean"] - std,
          "high": r["mean"] + std,
          "n": r["n"],
          "values": r["values"],
          "hollow": r["n"] < 2,
          "clipped": clipped,
        }
      )
    dense_line = None
    if dense:
      values = [v for r in dense for v in r["values"]]
      dense_line = {"mean": float(np.mean(values)), "std": _std(values), "n": len(values)}
    layouts.append(
      {
        "title": f"{task} {rid}"
        + (f": {recipes[(task, rid)][0]}" if recipes[(task, rid)][0] else ""),
        "metric": metric,
        "ylim": ylim,
        "majority": majority,
        "majority_in_view": majority is not None and ylim[0] <= majority <= ylim[1],
        "dense": dense_line,
        "points": points,
        "series": series,
      }
    )
  return layouts


def plot(rows: list[dict], path) -> list[dict]:
  """Primary metric versus target sparsity, one panel per (task, recipe, metric)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  layouts = panel_layout(rows)
  fig, axes = plt.subplots(1, len(layouts), figsize=(5.6 * len(layouts), 4.4), squeeze=False)
  colors = plt.get_cmap("tab10").colors
  for ax, panel in zip(axes[0], layouts):
    if panel["dense"] is not None:
      d = panel["dense"]
      spread = "one seed, no spread" if d["n"] < 2 else f"± {d['std']:.4f}, n={d['n']}"
      ax.axhline(
        d["mean"], ls="--", lw=1.2, color="black", label=f"dense {d['mean']:.4f} ({spread})"
      )
      if d["n"] >= 2:
        ax.axhspan(d["mean"] - d["std"], d["mean"] + d["std"], color="black", alpha=0.08)
    if panel["majority"] is not None and panel["majority_in_view"]:
      ax.axhline(
        panel["majority"],
        ls=":",
        lw=1.2,
        color="gray",
        label=f"majority class {panel['majority']:.4f}",
      )
    clipped_any = False
    for k, name in enumerate(panel["series"]):
      pts = [p for p in panel["points"] if p["series"] == name]
      color = colors[k % len(colors)]
      ns = sorted({p["n"] for p in pts})
      label = f"{name} (n={ns[0]})" if len(ns) == 1 else f"{name} (n={ns[0]}-{ns[-1]})"
      first = True
      for p in pts:
        kwargs = {"color": color, "label": label if first else None}
        first = False
        if p["clipped"]:
          clipped_any = True
          ax.plot(p["x"], p["y"], marker="v", ms=9, ls="none", **kwargs)
          ax.annotate(
            f"{p['mean']:.4f}",
            (p["x"], p["y"]),
            xytext=(4, 4),
            textcoords="offset points",
            fontsize=7,
            color=color,
          )
          continue
        face = "none" if p["hollow"] else color
        if p["hollow"]:
          ax.plot(p["x"], p["y"], marker=p["marker"], ms=8, ls="none", mfc=face, **kwargs)
          ax.annotate(
            "n=1",
            (p["x"], p["y"]),
            xytext=(4, -10),
            textcoords="offset points",
            fontsize=7,
            color=color,
          )
        else:
          ax.errorbar(
            p["x"],
            p["y"],
            yerr=[[p["y"] - p["low"]], [p["high"] - p["y"]]],
            marker=p["marker"],
            ms=7,
            capsize=3,
            ls="none",
            **kwargs,
          )
          ax.plot([p["x"]] * len(p["values"]), p["values"], ".", ms=3, color=color, alpha=0.6)
      if len(pts) > 1:  # a thin line joins the sparsities of one series
        ordered = sorted((p for p in pts if not p["clipped"]), key=lambda p: p["x"])
        ax.plot(
          [p["x"] for p in ordered], [p["y"] for p in ordered], lw=0.8, alpha=0.5, color=color
        )
    if clipped_any:
      note = "v at the bottom edge: collapsed, value written beside"
      if panel["majority"] is not None:
        note += (
          f" (majority class {panel['majority']:.4f}, below the axis)"
          if not panel["majority_in_view"]
          else ""
        )
      ax.text(0.01, 0.99, note, transform=ax.transAxes, fontsize=7, va="top", color="dimgray")
    ax.set_ylim(*panel["ylim"])
    ax.set_title(panel["title"], fontsize=10)
    ax.set_xlim(-0.05, 1.0)  # the same sparsity axis in every panel
    ax.set_xlabel("target sparsity (series offset sideways)")
    ax.set_ylabel(panel["metric"])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return layouts


def main(argv: list | None = None) -> list[dict]:
  parser = argparse.ArgumentParser(
    prog="python -m experiments.summary", description=__doc__.splitlines()[0]
  )
  parser.add_argument("folder", help="folder searched recursively for results.json")
  parser.add_argument("--out", default=None, help="markdown file (default: FOLDER/summary.md)")
  parser.add_argument("--plot", default=None, help="PNG file (default: the --out path with .png)")
  args = parser.parse_args(argv)
  try:
    rows = aggregate(load_runs(args.folder))
  except FileNotFoundError as e:
    parser.error(str(e))
  out = pathlib.Path(args.out) if args.out else pathlib.Path(args.folder) / "summary.md"
  png = pathlib.Path(args.plot) if args.plot else out.with_suffix(".png")
  table = markdown(rows)
  out.parent.mkdir(parents=True, exist_ok=True)
  link = os.path.relpath(png.resolve(), out.parent.resolve())
  out.write_text(table + f"\n\n![metric versus sparsity]({link})\n")
  plot(rows, png)
  print(table)
  print(f"\nwrote {out} and {png}")
  return rows


if __name__ == "__main__":
  main()
