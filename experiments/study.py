"""Run a named grid of pruning runs (methods x sparsities x seeds) and report it.

::

    python -m experiments.study --preset cpu-small --out runs/study
    python -m experiments.study --preset paper-glue --dry-run   # the grid and its cost

One command runs every cell of the grid through the task module's public entry
point (``python -m experiments.text ...``, one subprocess per run, so a crash
or Ctrl-C loses at most the run in progress), skips cells whose
``results.json`` is complete, resumes a cell that left a checkpoint, and then
aggregates over seeds:

* mean +- standard deviation (``ddof=1``) of the primary metric per
  (variant, sparsity), with the majority-class rate of the evaluation split
  printed beside every accuracy (a pruned model that collapsed to a constant
  prediction scores exactly that);
* the paired per-seed difference against a reference variant (same seed, so
  same data order and scoring batches) with a 95% Student-t interval
  :math:`\\bar d \\pm t_{0.975, n-1}\\, s_d / \\sqrt n`;
* ``accuracy.png``: the metric against sparsity with error bars;
* for each sparsity, the SW / TSW sets of a one-shot variant's masks against
  SEVEN's (:mod:`seven_jax.analysis`), when both saved their masks.

The report goes to ``<out>/REPORT.md`` (``--report-dir`` elsewhere).
Ablation variants are method names plus hyper-parameters (``seven_pre`` with
``correction=False``: SEVEN without its noise correction).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import pathlib
import subprocess
import sys
import time
from typing import Callable, Optional, Sequence

import numpy as np

__all__ = [
  "Variant",
  "Grid",
  "Cell",
  "PRESETS",
  "cells",
  "run_grid",
  "collect",
  "aggregate",
  "paired_difference",
  "write_report",
  "main",
]


@dataclasses.dataclass(frozen=True)
class Variant:
  """One line of the study: a method and its hyper-parameters.

  Attributes:
    label: unique name in tables and folder names (``seven_pre-nocorr``).
    method: a method name of the task module (``seven_pre``, ``snip``, ...).
    method_args: the method's hyper-parameters, e.g. ``{"correction": False}``.
  """

  label: str
  method: str
  method_args: tuple = ()  # sorted (name, value) pairs, hashable

  @property
  def args(self) -> dict:
    return dict(self.method_args)


def variant(label: str, method: Optional[str] = None, **method_args) -> Variant:
  return Variant(label, method or label, tuple(sorted(method_args.items())))


@dataclasses.dataclass(frozen=True)
class Grid:
  """A named grid.

  Attributes:
    name: the preset name.
    module: task module under ``experiments`` whose ``main(argv)`` runs one cell.
    variants, sparsities, seeds: the axes.
    reference: label of the variant the paired differences are taken against.
    oneshot, seven: labels of the variants whose masks the sentinel section
      compares (TSW candidates are kept by ``oneshot`` only).
    flags: fixed flags of every run (``{"steps": 120, ...}``).
    seconds_per_step, seconds_per_run: rough cost model for ``--dry-run``
      (per fine-tuning step, and fixed per run: start, scoring, evaluation),
      on the machine the preset is meant for.
  """

  name: str
  module: str
  variants: tuple
  sparsities: tuple
  seeds: tuple
  reference: str
  flags: dict
  oneshot: Optional[str] = "snip"
  seven: Optional[str] = "seven_pre"
  seconds_per_step: float = 1.0
  seconds_per_run: float = 60.0
  machine: str = "a 2-core CPU"


@dataclasses.dataclass(frozen=True)
class Cell:
  variant: Variant
  sparsity: float
  seed: int

  @property
  def key(self) -> str:
    return f"{self.variant.label}/s{self.sparsity:g}/seed{self.seed}"


_PRE = (
  variant("seven_pre"),
  variant("seven_pre-nocorr", "seven_pre", correction=False),
  variant("snip"),
  variant("magnitude_pre"),
)  # in this order inside each seed, so a grid stopped early still pairs SEVEN_pre with its ablation

PRESETS = {
  # MiniLM + Rotten Tomatoes, pre-pruning, 4 variants x 2 sparsities x 3 seeds = 24 runs.
  "cpu-small": Grid(
    name="cpu-small",
    module="text",
    variants=_PRE,
    sparsities=(0.5, 0.8),
    seeds=(0, 1, 2),
    reference="snip",
    # lr 1e-4: at the text preset's 5e-5, 60 steps left SEVEN_pre at 80% on the
    # majority class (measured, results/cpu-small/REPORT.md).
    flags=dict(
      preset="cpu-quick", steps=100, prune_before_steps=16, max_len=32, batch_size=32, lr=1e-4
    ),
    seconds_per_step=1.0,
    seconds_per_run=50.0,
  ),
  "cpu-full": Grid(
    name="cpu-full",
    module="text",
    variants=_PRE
    + (
      variant("grasp"),
      variant("random"),
      variant("seven"),  # SEVEN_dyn, pruning while fine-tuning
      variant("platon"),
      variant("taylor_instant"),
      variant("magnitude"),
    ),
    sparsities=(0.5, 0.8, 0.9),
    seeds=(0, 1, 2),
    reference="snip",
    flags=dict(
      preset="cpu-quick",
      steps=300,
      start_step=20,
      pruning_steps=200,
      prune_before_steps=32,
      max_len=32,
      batch_size=32,
      lr=5e-5,
    ),
    seconds_per_step=1.0,
    seconds_per_run=70.0,
  ),
  # The paper's pre-pruning grid on BERT-base (spec 4.1), for an accelerator.
  "paper-glue": Grid(
    name="paper-glue",
    module="glue",
    variants=_PRE + (variant("grasp"), variant("force")),
    sparsities=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    seeds=(0, 1, 2),
    reference="snip",
    # The official recipe (lr 2e-5, batch 32, max_len 128); 3 epochs of fine-tuning after
    # pre-pruning (spec 2.4 leaves the recipe open). Pass --model DIR (bert-base-uncased).
    flags=dict(task="sst2", preset="paper", epochs=3, prune_before_steps=100),
    # One A100/H100-class GPU: ~10 steps/s at batch 32, 3 epochs of SST-2 (6315 steps).
    seconds_per_step=0.1,
    seconds_per_run=240.0,
    machine="one A100/H100-class GPU (assumed ~10 BERT-base steps/s at batch 32)",
  ),
}


def cells(grid: Grid) -> list[Cell]:
  """Every run of the grid, seed-major (all variants of seed 0 first), so an
  interrupted grid already has complete seeds to compare."""
  return [Cell(v, s, seed) for seed in grid.seeds for s in grid.sparsities for v in grid.variants]


def run_dir(out: pathlib.Path, cell: Cell) -> pathlib.Path:
  """Where a cell's task module writes (a folder per variant, so that two
  variants of one method never share a run folder)."""
  return out / cell.variant.label / f"s{cell.sparsity:g}" / f"seed{cell.seed}"


def _results_file(folder: pathlib.Path) -> Optional[pathlib.Path]:
  found = sorted(folder.glob("*/results.json")) if folder.exists() else []
  return found[0] if found else None


def _same(a, b) -> bool:
  try:
    return float(a) == float(b)
  except (TypeError, ValueError):
    return str(a) == str(b)


def is_finished(folder: pathlib.Path, expected: Optional[dict] = None) -> bool:
  """A complete ``results.json`` (not interrupted) whose config agrees with
  ``expected`` on every field both have (so a changed ``--steps`` or ``--lr``
  reruns the cell instead of reusing a stale result)."""
  path = _results_file(folder)
  if path is None:
    return False
  try:
    r = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError):
    return False
  if r.get("interrupted"):
    return False
  config = r.get("config", {})
  for key, value in (expected or {}).items():
    if key == "steps" and "steps" in r and not _same(r["steps"], value):
      return False
    if key in config and not _same(config[key], value):
      return False
  return True


def has_checkpoint(folder: pathlib.Path) -> bool:
  return folder.exists() and any(
    p.is_dir() and any(p.iterdir()) for p in folder.glob("*/checkpoints")
  )


def format_method_args(args: dict) -> str:
  return ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(args.items()))


# Flags only one kind of method reads (the task modules reject the others).
PRE_ONLY = {"prune_before_steps"}
DYNAMIC_ONLY = {"start_step", "pruning_steps", "update_every"}


def method_kind(method: str) -> str:
  """``"pre"`` or ``"dynamic"`` (``seven_jax.method_kind``); ``"dense"`` for dense."""
  if method == "dense":
    return "dense"
  import seven_jax

  return seven_jax.method_kind(method)


def cell_flags(grid: Grid, cell: Cell, folder: pathlib.Path, overrides: dict) -> dict:
  """The task module's flags for one cell (flags the cell's method does not
  read are left out)."""
  flags = dict(grid.flags)
  flags.update(overrides)
  kind = method_kind(cell.variant.method)
  drop = (
    DYNAMIC_ONLY if kind == "pre" else PRE_ONLY if kind == "dynamic" else PRE_ONLY | DYNAMIC_ONLY
  )
  flags = {k: v for k, v in flags.items() if k not in drop}
  flags.update(method=cell.variant.method, sparsity=cell.sparsity, seed=cell.seed, out=str(folder))
  if cell.variant.method_args:
    flags["method_args"] = format_method_args(cell.variant.args)
  return flags


def cell_argv(grid: Grid, cell: Cell, folder: pathlib.Path, overrides: dict) -> list[str]:
  """:func:`cell_flags` as a command line."""
  argv = []
  for k, v in cell_flags(grid, cell, folder, overrides).items():
    argv += [f"--{k.replace('_', '-')}", str(v)]
  return argv


def _expected_config(flags: dict) -> dict:
  # What a finished run's config must agree with (the method may be renamed by
  # the nocorr fallback, the folder is where it is).
  return {k: v for k, v in flags.items() if k not in ("preset", "out", "method", "method_args")}


def subprocess_runner(grid: Grid, argv: list[str], *, resume: bool, log_path: pathlib.Path) -> int:
  """Runs one cell in a fresh process (``python -m experiments.study --cell
  <module> ...``, see :func:`run_cell`) with output to ``log_path``."""
  cmd = [sys.executable, "-m", "experiments.study", "--cell", grid.module, *argv] + (
    ["--resume"] if resume else []
  )
  env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
  with open(log_path, "a") as log:
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    return subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


NOCORR = "seven_pre_nocorr"


def _nocorr_update(hp, x, stats, score):
  # SEVEN without its noise correction: S += |W_p * g| (spec 5.3, first variant).
  import jax.numpy as jnp

  g = jnp.asarray(x.grad, jnp.float32)
  g = jnp.where(jnp.isfinite(g), g, 0.0)
  return tuple(stats), score + jnp.abs(x.weight_after * g)


def register_nocorr_fallback() -> str:
  """Registers ``seven_pre_nocorr``: SEVEN_pre's loop (cubic schedule over the
  scoring batches, no resurrection) with the uncorrected accumulated score.

  Used only when the task module cannot pass method hyper-parameters
  (no ``method_args`` config field). The rule is the library's ``seven``
  with ``correction=False`` when the library has that option, otherwise
  :func:`_nocorr_update`. Registration goes through the public registries
  (``scores.register_rule``, ``scores.PRE_METHODS``) of this process only.
  """
  from seven_jax import scores

  if NOCORR in scores.PRE_METHODS:
    return NOCORR
  seven = scores.get_rule("seven")
  if "correction" in seven.defaults:
    rule = seven._replace(name="seven_nocorr", defaults={**seven.defaults, "correction": False})
  else:
    rule = scores.ScoreRule("seven_nocorr", 0, _nocorr_update, {}, summary="accumulated |W g|")
  if rule.name not in scores.DYNAMIC_RULES:
    scores.register_rule(rule)
  base = scores.PRE_METHODS["seven_pre"]
  scores.PRE_METHODS[NOCORR] = base._replace(name=NOCORR, rule=rule.name, summary=rule.summary)
  return NOCORR


def _task_takes_method_args() -> bool:
  from experiments import common

  return "method_args" in {f.name for f in dataclasses.fields(common.ExperimentConfig)}


def run_cell(module: str, argv: list[str]):
  """One cell in this process: ``experiments.<module>.main(argv)``.

  ``--method-args`` goes through to the task module when its config has a
  ``method_args`` field. Otherwise the one ablation the presets need,
  ``seven_pre`` with ``correction=false``, runs as the method
  ``seven_pre_nocorr`` (:func:`register_nocorr_fallback`); other
  hyper-parameters raise a clear error.
  """
  argv = list(argv)
  if "--method-args" in argv and not _task_takes_method_args():
    i = argv.index("--method-args")
    args = argv[i + 1]
    del argv[i : i + 2]
    j = argv.index("--method")
    if argv[j + 1] == "seven_pre" and args.replace(" ", "") == "correction=false":
      argv[j + 1] = register_nocorr_fallback()
    else:
      raise SystemExit(
        f"experiments.{module} takes no --method-args here; only seven_pre with "
        f"correction=false has a fallback (got {argv[j + 1]} {args})."
      )
  return importlib.import_module(f"experiments.{module}").main(argv)


def run_grid(
  grid: Grid,
  out: pathlib.Path,
  *,
  runner: Callable = subprocess_runner,
  overrides: Optional[dict] = None,
  print_fn: Callable = print,
  jobs: int = 1,
) -> dict:
  """Runs every unfinished cell (``jobs`` at a time, in grid order); returns ``{"ran", "skipped", "failed"}`` keys.

  A cell is skipped when its ``results.json`` is complete and its config
  agrees with the cell's flags (:func:`is_finished`); a cell with a checkpoint but no complete
  results is resumed (``--resume``). A failing cell is reported and the grid
  goes on; ``runner(grid, argv, resume=, log_path=) -> returncode``.
  """
  out.mkdir(parents=True, exist_ok=True)
  overrides = dict(overrides or {})
  (out / "grid.json").write_text(
    json.dumps(
      {
        "preset": grid.name,
        "module": grid.module,
        "flags": {**grid.flags, **overrides},
        "variants": [dataclasses.asdict(v) for v in grid.variants],
        "sparsities": list(grid.sparsities),
        "seeds": list(grid.seeds),
        "reference": grid.reference,
      },
      indent=2,
    )
  )
  done = {"ran": [], "skipped": [], "failed": [], "busy": []}
  todo = cells(grid)
  pending = []
  for i, cell in enumerate(todo):
    folder = run_dir(out, cell)
    expected = _expected_config(cell_flags(grid, cell, folder, overrides))
    if is_finished(folder, expected):
      done["skipped"].append(cell.key)
    else:
      pending.append((i, cell, folder, expected))

  def one(item):
    i, cell, folder, expected = item
    folder.mkdir(parents=True, exist_ok=True)
    if not _take_lock(folder):
      print_fn(
        f"[{i + 1}/{len(todo)}] {cell.key}: another study process runs it, skipped", flush=True
      )
      return cell.key, None
    try:
      if is_finished(folder, expected):  # another process finished it meanwhile
        return cell.key, "skipped"
      return _run_one(i, cell, folder, expected)
    finally:
      (folder / LOCK).unlink(missing_ok=True)

  def _run_one(i, cell, folder, expected):
    resume = has_checkpoint(folder)
    start = time.time()
    print_fn(f"[{i + 1}/{len(todo)}] {cell.key}{' (resuming)' if resume else ''}", flush=True)
    rc = runner(
      grid, cell_argv(grid, cell, folder, overrides), resume=resume, log_path=folder / "run.log"
    )
    ok = rc == 0 and is_finished(folder, expected)
    status = "done" if ok else f"FAILED (rc {rc}, see {folder / 'run.log'})"
    print_fn(f"    {cell.key}: {status} in {time.time() - start:.0f} s", flush=True)
    return cell.key, ok

  if jobs <= 1:
    results = [one(item) for item in pending]
  else:  # cells are independent processes; threads only wait for them
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(jobs) as pool:
      results = list(pool.map(one, pending))
  for key, ok in results:
    kind = "busy" if ok is None else "skipped" if ok == "skipped" else "ran" if ok else "failed"
    done[kind].append(key)
  return done


LOCK = ".study.lock"


def _take_lock(folder: pathlib.Path) -> bool:
  """Claims a cell for this process (a lock file with its pid), so that two
  study processes on one grid folder never run the same cell; a lock whose
  process is gone is taken over."""
  path = folder / LOCK
  for _ in range(2):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
      try:
        pid = int(path.read_text().strip() or 0)
        os.kill(pid, 0)
        return False  # alive
      except (ValueError, ProcessLookupError, FileNotFoundError):
        path.unlink(missing_ok=True)  # stale
        continue
      except PermissionError:
        return False
    with os.fdopen(fd, "w") as f:
      f.write(str(os.getpid()))
    return True
  return False


# -------------------------------------------------------------- aggregation


def collect(grid: Grid, out: pathlib.Path) -> list[dict]:
  """One row per finished cell: ``{"variant", "sparsity", "seed", "metric",
  "value", "measured_sparsity", "folder"}``."""
  rows = []
  for cell in cells(grid):
    path = _results_file(run_dir(out, cell))
    if path is None:
      continue
    r = json.loads(path.read_text())
    if r.get("interrupted"):
      continue
    metric = r.get("primary_metric", "accuracy")
    rows.append(
      dict(
        variant=cell.variant.label,
        sparsity=cell.sparsity,
        seed=cell.seed,
        metric=metric,
        value=float(r["final"][metric]),
        measured_sparsity=float(r.get("sparsity", float("nan"))),
        train_seconds=float(r.get("train_seconds", float("nan"))),
        folder=str(path.parent),
      )
    )
  return rows


def t_quantile(p: float, dof: int) -> float:
  """Student-t quantile (scipy when available, else a Cornish-Fisher expansion)."""
  try:
    from scipy import stats

    return float(stats.t.ppf(p, dof))
  except ImportError:  # pragma: no cover - scipy ships with jax
    from statistics import NormalDist

    z = NormalDist().inv_cdf(p)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / dof + g2 / dof**2 + g3 / dof**3


def paired_difference(values: dict, reference: dict, confidence: float = 0.95) -> dict:
  """Paired difference ``values[seed] - reference[seed]`` over the common seeds.

  Returns ``{"n", "mean", "std", "low", "high"}``: the mean difference, its
  standard deviation (``ddof=1``) and the two-sided ``confidence`` Student-t
  interval :math:`\\bar d \\pm t_{(1+c)/2, n-1} s_d/\\sqrt n` (``nan`` bounds
  with fewer than two seeds).
  """
  seeds = sorted(set(values) & set(reference))
  d = np.array([values[s] - reference[s] for s in seeds], np.float64)
  n = len(d)
  if n == 0:
    return dict(n=0, mean=float("nan"), std=float("nan"), low=float("nan"), high=float("nan"))
  mean = float(d.mean())
  if n < 2:
    return dict(n=1, mean=mean, std=float("nan"), low=float("nan"), high=float("nan"))
  std = float(d.std(ddof=1))
  half = t_quantile(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
  return dict(n=n, mean=mean, std=std, low=mean - half, high=mean + half)


def aggregate(rows: Sequence[dict], reference: str) -> list[dict]:
  """Mean +- std over seeds per (variant, sparsity), and the paired difference
  against ``reference`` at the same sparsity."""
  groups: dict = {}
  for r in rows:
    groups.setdefault((r["variant"], r["sparsity"]), {})[r["seed"]] = r["value"]
  order = []
  for r in rows:
    if (r["variant"], r["sparsity"]) not in order:
      order.append((r["variant"], r["sparsity"]))
  out = []
  for label, sparsity in sorted(order, key=lambda k: (k[1], order.index(k))):
    vals = groups[(label, sparsity)]
    arr = np.array([vals[s] for s in sorted(vals)], np.float64)
    ref = groups.get((reference, sparsity))
    out.append(
      dict(
        variant=label,
        sparsity=sparsity,
        n=len(arr),
        mean=float(arr.mean()),
        std=float(arr.std(ddof=1)) if len(arr) > 1 else float("nan"),
        values={s: vals[s] for s in sorted(vals)},
        diff=paired_difference(vals, ref) if ref is not None and label != reference else None,
      )
    )
  return out


def majority_rate(task: str, split: str, eval_examples: int = 0) -> Optional[float]:
  """Share of the most frequent label in the evaluation split (``None`` for
  regression or when the data is not available here)."""
  try:
    from seven_jax import data as sj_data

    ds = sj_data.get_dataset(task, split)
    if ds.spec.num_labels < 2:
      return None
    n = len(ds) if not eval_examples else min(eval_examples, len(ds))
    columns = getattr(ds, "columns", None)
    if columns is not None and "label" in columns:
      labels = np.asarray(columns["label"][:n], np.int64)
    else:
      labels = np.asarray([int(ds[i]["label"]) for i in range(n)])
  except Exception:  # noqa: BLE001 - the report says "n/a"
    return None
  return float(np.bincount(labels).max() / len(labels))


# ------------------------------------------------------------------ report


def _fmt(x, digits=4):
  return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def plot_accuracy(table: list[dict], path: pathlib.Path, *, metric: str, majority: Optional[float]):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  labels = []
  for r in table:
    if r["variant"] not in labels:
      labels.append(r["variant"])
  for j, label in enumerate(labels):
    rows = [r for r in table if r["variant"] == label]
    x = np.array([r["sparsity"] for r in rows]) + (j - (len(labels) - 1) / 2) * 0.006
    y = [r["mean"] for r in rows]
    err = [0.0 if math.isnan(r["std"]) else r["std"] for r in rows]
    ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
  if majority is not None:
    ax.axhline(majority, color="gray", ls="--", lw=1, label=f"majority class ({majority:.4f})")
  ax.set_xlabel("sparsity")
  ax.set_ylabel(f"{metric} (mean +- std over seeds)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_report(
  grid: Grid,
  out: pathlib.Path,
  report_dir: Optional[pathlib.Path] = None,
  *,
  majority: Optional[float] = None,
  notes: str = "",
  sentinels: bool = True,
) -> pathlib.Path:
  """``REPORT.md`` and ``accuracy.png`` for the finished cells of the grid."""
  report_dir = report_dir or out
  report_dir.mkdir(parents=True, exist_ok=True)
  rows = collect(grid, out)
  if not rows:
    raise ValueError(f"no finished runs under {out}: run the grid first.")
  metric = rows[0]["metric"]
  table = aggregate(rows, grid.reference)
  flags = {}
  grid_file = out / "grid.json"
  if grid_file.exists():
    flags = json.loads(grid_file.read_text()).get("flags", {})
  maj = _fmt(majority)
  lines = [
    f"# Study `{grid.name}`",
    "",
    f"Task module `experiments.{grid.module}`, flags of every run: `{json.dumps(flags or grid.flags)}`.",
    f"Variants: {', '.join(f'`{v.label}`' + (f' ({format_method_args(v.args)})' if v.method_args else '') for v in grid.variants)}; "
    f"sparsities {', '.join(f'{s:g}' for s in grid.sparsities)}; seeds {', '.join(map(str, grid.seeds))}. "
    f"{len(rows)} of {len(cells(grid))} runs finished.",
    "",
  ]
  if notes:
    lines += [notes, ""]
  lines += [
    f"{metric} on the evaluation split, mean +- std over seeds (ddof 1); "
    f"the majority-class rate of that split is {maj}. Δ: the paired per-seed difference "
    f"against `{grid.reference}` (same seed: same data order and scoring batches), "
    "mean and 95% Student-t interval.",
    "",
    f"| sparsity | variant | {metric} mean +- std (n) | majority class | per seed | Δ vs {grid.reference} [95% CI] |",
    "|---|---|---|---|---|---|",
  ]
  for r in table:
    per_seed = ", ".join(f"{s}: {v:.4f}" for s, v in r["values"].items())
    d = r["diff"]
    if d is None:
      diff = "reference" if r["variant"] == grid.reference else "n/a"
    else:
      diff = f"{d['mean']:+.4f} [{_fmt(d['low'])}, {_fmt(d['high'])}] (n={d['n']})"
    lines.append(
      f"| {r['sparsity']:g} | {r['variant']} | {r['mean']:.4f} +- {_fmt(r['std'])} ({r['n']}) | "
      f"{maj} | {per_seed} | {diff} |"
    )
  plot_accuracy(table, report_dir / "accuracy.png", metric=metric, majority=majority)
  lines += ["", "![accuracy vs sparsity](accuracy.png)", ""]
  secs = [r["train_seconds"] for r in rows if not math.isnan(r["train_seconds"])]
  if secs:
    lines += [
      f"Fine-tuning time per run: median {np.median(secs):.0f} s (min {min(secs):.0f}, max {max(secs):.0f}).",
      "",
    ]
  if sentinels and grid.oneshot and grid.seven:
    lines += _sentinel_section(grid, out, report_dir, rows)
  path = report_dir / "REPORT.md"
  path.write_text("\n".join(lines) + "\n")
  (report_dir / "table.json").write_text(
    json.dumps({"metric": metric, "majority": majority, "rows": table}, indent=2)
  )
  return path


def _sentinel_section(grid: Grid, out: pathlib.Path, report_dir: pathlib.Path, rows) -> list[str]:
  """SW / TSW sets of the one-shot and SEVEN masks, per sparsity, for the first seed."""
  from seven_jax.analysis import report as areport

  lines = []
  by_key = {(r["variant"], r["sparsity"], r["seed"]): r["folder"] for r in rows}
  for sparsity in grid.sparsities:
    for seed in grid.seeds:
      a = by_key.get((grid.oneshot, sparsity, seed))
      b = by_key.get((grid.seven, sparsity, seed))
      if a and b:
        break
    else:
      continue
    try:
      section = areport.pair_section(
        pathlib.Path(a),
        pathlib.Path(b),
        report_dir,
        tag=f"s{sparsity:g}",
        grad_stats=areport.find_grad_stats([pathlib.Path(a), pathlib.Path(b), out], seed=seed),
        title=f"Sentinels at sparsity {sparsity:g} (seed {seed}): `{grid.oneshot}` vs `{grid.seven}`",
      )
    except (FileNotFoundError, ValueError) as e:
      section = [f"(sentinel analysis at sparsity {sparsity:g} skipped: {e})", ""]
    lines += section
  return lines


# ------------------------------------------------------------ grad stats


def measure_grad_stats(
  grid: Grid, out: pathlib.Path, seed: int, num_batches: int, overrides: Optional[dict] = None
) -> pathlib.Path:
  """RGV of every prunable weight of the pre-trained model over ``num_batches``
  training batches of ``seed`` (the fine-tuning stream, so a window *other*
  than the scoring batches: an out-of-sample check of consistency), saved as
  ``<out>/grad_stats-seed<seed>.npz`` for the sentinel section.

  Builds the task through ``experiments.<module>.build_task`` (text tasks).
  """
  import jax

  from experiments import common, scoring
  from seven_jax import analysis
  from seven_jax.analysis import report as areport

  module = importlib.import_module(f"experiments.{grid.module}")
  flags = {**grid.flags, **(overrides or {})}
  values = dict(module.PRESETS[flags.pop("preset")]) if "preset" in flags else {}
  names = {f.name for f in dataclasses.fields(common.ExperimentConfig)}
  values.update({k: v for k, v in flags.items() if k in names})
  cfg = common.ExperimentConfig(**{**values, "seed": seed, "method": "dense"})
  task = module.build_task(cfg)
  # Dropout as SEVEN_pre scores: a fresh key per batch (experiments.scoring).
  loss, params = scoring.scoring_loss(task.model, task.loss_fn, scoring.dropout_mode("seven_pre"))
  batches = scoring.keyed_batches(task.train_batches, seed + 2)
  rgv = analysis.relative_gradient_variation(
    jax.grad(loss), params, batches, num_batches=num_batches
  )
  return areport.save_grad_stats(out / f"grad_stats-seed{seed}.npz", rgv, task.prunable)


# --------------------------------------------------------------------- CLI


def estimate(grid: Grid, overrides: Optional[dict] = None) -> dict:
  """Runs and rough wall time of a grid from its cost model."""
  flags = {**grid.flags, **(overrides or {})}
  steps = int(flags.get("steps", 0) or 0)
  if not steps and grid.module == "glue":
    steps = 6315  # 3 epochs of SST-2 at batch 32
  n = len(cells(grid))
  per_run = grid.seconds_per_run + steps * grid.seconds_per_step
  return dict(runs=n, seconds_per_run=per_run, total_seconds=n * per_run, steps=steps)


def _parse_list(text: str, kind) -> tuple:
  return tuple(kind(x) for x in text.split(",") if x.strip())


def main(argv=None, *, runner: Callable = subprocess_runner) -> dict:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv[:1] == ["--cell"]:
    return run_cell(argv[1], argv[2:])
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="cpu-small", choices=sorted(PRESETS))
  parser.add_argument("--out", default=None, help="grid folder (default runs/study-<preset>)")
  parser.add_argument(
    "--report-dir", default=None, help="where REPORT.md and PNGs go (default --out)"
  )
  parser.add_argument("--seeds", default=None, help="comma-separated seeds (override the preset)")
  parser.add_argument("--sparsities", default=None, help="comma-separated sparsities")
  parser.add_argument("--variants", default=None, help="comma-separated variant labels to keep")
  parser.add_argument("--steps", type=int, default=None, help="fine-tuning steps of every run")
  parser.add_argument("--prune-before-steps", type=int, default=None, help="scoring batches K")
  parser.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate")
  parser.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
  parser.add_argument("--model", default=None, help="checkpoint directory (e.g. bert-base-uncased)")
  parser.add_argument(
    "--reference", default=None, help="variant the paired differences are against"
  )
  parser.add_argument(
    "--dry-run", action="store_true", help="print the grid and its estimated cost"
  )
  parser.add_argument(
    "--report-only", action="store_true", help="aggregate what is there, run nothing"
  )
  parser.add_argument("--notes", default="", help="a paragraph printed at the top of the report")
  parser.add_argument(
    "--grad-stats-batches",
    type=int,
    default=0,
    help="> 0: measure the RGV of the first seed over this many batches for the report",
  )
  args = parser.parse_args(argv)
  grid = PRESETS[args.preset]
  changes = {}
  if args.seeds:
    changes["seeds"] = _parse_list(args.seeds, int)
  if args.sparsities:
    changes["sparsities"] = _parse_list(args.sparsities, float)
    bad = [s for s in changes["sparsities"] if not 0.0 <= s < 1.0]
    if bad:
      parser.error(f"--sparsities must be in [0, 1), got {bad}")
  if args.variants:
    wanted = _parse_list(args.variants, str)
    known = {v.label: v for v in grid.variants}
    unknown = [w for w in wanted if w not in known]
    if unknown:
      parser.error(f"unknown variant(s) {unknown}; preset {grid.name} has {sorted(known)}")
    changes["variants"] = tuple(known[w] for w in wanted)
  if args.reference:
    changes["reference"] = args.reference
  grid = dataclasses.replace(grid, **changes)
  if grid.reference not in {v.label for v in grid.variants}:
    parser.error(f"--reference {grid.reference!r} is not a variant of the grid")
  overrides = {}
  if args.steps is not None:
    overrides["steps"] = args.steps
  if args.prune_before_steps is not None:
    overrides["prune_before_steps"] = args.prune_before_steps
  if args.lr is not None:
    overrides["lr"] = args.lr
  if args.model is not None:
    overrides["model"] = args.model
  out = pathlib.Path(args.out or f"runs/study-{grid.name}")
  cost = estimate(grid, overrides)
  if args.dry_run:
    print(f"preset {grid.name}: {cost['runs']} runs of experiments.{grid.module}")
    for cell in cells(grid):
      print("  ", cell.key, " ".join(cell_argv(grid, cell, run_dir(out, cell), overrides)))
    print(
      f"estimated cost on {grid.machine}: {cost['seconds_per_run'] / 60:.1f} min per run "
      f"({cost['steps']} steps), {cost['total_seconds'] / 3600:.1f} h in all"
    )
    return {"grid": grid, "cost": cost}
  done = None
  if not args.report_only:
    if args.jobs < 1:
      parser.error(f"--jobs must be >= 1, got {args.jobs}")
    done = run_grid(grid, out, runner=runner, overrides=overrides, jobs=args.jobs)
    print(
      f"ran {len(done['ran'])}, skipped {len(done['skipped'])} finished, failed {len(done['failed'])}"
    )
  if args.grad_stats_batches > 0:
    seed = grid.seeds[0]
    if not (out / f"grad_stats-seed{seed}.npz").exists():
      measure_grad_stats(grid, out, seed, args.grad_stats_batches, overrides)
  flags = {**grid.flags, **overrides}
  task = flags.get("task", "rotten_tomatoes")
  majority = majority_rate(
    task, flags.get("eval_split", "test"), int(flags.get("eval_examples", 0))
  )
  report_dir = pathlib.Path(args.report_dir) if args.report_dir else out
  path = write_report(grid, out, report_dir, majority=majority, notes=args.notes)
  print(path.read_text())
  return {"grid": grid, "done": done, "report": path}


if __name__ == "__main__":
  main()
