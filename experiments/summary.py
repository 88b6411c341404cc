"""Aggregate runs into a markdown table and a metric-versus-sparsity plot.

::

    python -m experiments.summary runs/                  # writes runs/summary.md and runs/summary.png
    python -m experiments.summary runs/ --out table.md --plot plot.png

Every ``results.json`` under the folder (written by :func:`experiments.common.run`)
is one run. Runs are grouped by task, method and target sparsity, so the seeds
of one setting fall into one row: the primary metric (``results["primary_metric"]``:
accuracy, F1, Pearson, SQuAD F1, ...) is shown as mean ± standard deviation over
the seeds (sample std, ddof = 1; 0 for a single seed), with the achieved
sparsity (mean) and training steps per second. Dense runs have target sparsity
0 whatever their config says. Interrupted runs (not finished, ``--resume``
them) and unreadable files are left out with a warning.

The plot has one panel per task: the primary metric against the target sparsity,
one line per method, error bars of one std over seeds; the dense mean is a
dashed horizontal line for reference.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import pathlib
import sys
from typing import Iterable, Optional

import numpy as np

DENSE = "dense"


def primary_metric(results: dict) -> str:
  """The run's primary metric: recorded by ``common.run``, else the first of ``final``."""
  if "primary_metric" in results:
    return results["primary_metric"]
  keys = [k for k in results["final"] if k != "step"]
  if not keys:
    raise ValueError("no metrics in results['final']")
  return keys[0]


def load_runs(folder, *, warn=None) -> list[dict]:
  """Every finished run under ``folder`` as a flat record.

  Returns:
    dicts with ``path, task, method, target, sparsity, metric, value, seed,
    steps_per_second``.
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
      if results.get("interrupted"):
        warn(f"{path}: interrupted run left out (continue it with --resume)")
        continue
      config = results["config"]
      metric = primary_metric(results)
      method = config["method"]
      runs.append(
        {
          "path": str(path),
          "task": config["task"],
          "method": method,
          # Dense runs prune nothing, whatever sparsity their config carries.
          "target": 0.0 if method == DENSE else float(config["sparsity"]),
          "sparsity": float(results.get("sparsity", 0.0)),
          "metric": metric,
          "value": float(results["final"][metric]),
          "seed": config.get("seed"),
          "steps_per_second": float(results.get("steps_per_second", float("nan"))),
        }
      )
    except (OSError, ValueError, KeyError, TypeError) as error:
      warn(f"{path}: left out ({type(error).__name__}: {error})")
  if not runs:
    raise FileNotFoundError(f"no finished, readable run under {str(folder)!r}")
  return runs


def _std(values) -> float:
  return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def aggregate(runs: Iterable[dict]) -> list[dict]:
  """One row per (task, method, target sparsity, metric), over seeds; sorted for reading."""
  groups = collections.defaultdict(list)
  for run in runs:
    groups[(run["task"], run["method"], run["target"], run["metric"])].append(run)
  rows = []
  for (task, method, target, metric), members in groups.items():
    values = [m["value"] for m in members]
    rows.append(
      {
        "task": task,
        "method": method,
        "target": target,
        "metric": metric,
        "mean": float(np.mean(values)),
        "std": _std(values),
        "n": len(members),
        "seeds": sorted(m["seed"] for m in members if m["seed"] is not None),
        "sparsity": float(np.mean([m["sparsity"] for m in members])),
        "steps_per_second": float(np.nanmean([m["steps_per_second"] for m in members])),
      }
    )
  # Dense first within a task, then methods alphabetically, then by sparsity.
  rows.sort(key=lambda r: (r["task"], r["method"] != DENSE, r["method"], r["target"]))
  return rows


def _number(x: float, scale: float) -> str:
  # Percent-scale metrics (SQuAD, scale > 1.5) read better with 2 decimals, [0, 1] ones with 4.
  return f"{x:.2f}" if abs(scale) > 1.5 else f"{x:.4f}"


def markdown(rows: list[dict]) -> str:
  lines = [
    "| task | method | target sparsity | achieved sparsity | metric | mean ± std | "
    "n seeds | steps/s |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    sps = "" if math.isnan(r["steps_per_second"]) else f"{r['steps_per_second']:.2f}"
    lines.append(
      f"| {r['task']} | {r['method']} | {r['target']:.0%} | {r['sparsity']:.2%} | "
      f"{r['metric']} | {_number(r['mean'], r['mean'])} ± {_number(r['std'], r['mean'])} | {r['n']} | "
      f"{sps} |"
    )
  return "\n".join(lines)


def plot(rows: list[dict], path) -> None:
  """Primary metric versus target sparsity, one panel per task, one line per method."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  tasks = sorted({r["task"] for r in rows})
  fig, axes = plt.subplots(1, len(tasks), figsize=(5.0 * len(tasks), 3.8), squeeze=False)
  for ax, task in zip(axes[0], tasks):
    task_rows = [r for r in rows if r["task"] == task]
    for method in sorted({r["method"] for r in task_rows}):
      pts = sorted((r for r in task_rows if r["method"] == method), key=lambda r: r["target"])
      x = [r["target"] for r in pts]
      y = [r["mean"] for r in pts]
      err = [r["std"] for r in pts]
      line = ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=method)
      if method == DENSE:
        ax.axhline(np.mean(y), ls="--", lw=1, color=line[0].get_color())
    ax.set_title(task)
    ax.set_xlim(-0.05, 1.0)  # the same sparsity axis in every panel
    ax.set_xlabel("target sparsity")
    ax.set_ylabel(task_rows[0]["metric"])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv: Optional[list] = None) -> list[dict]:
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
