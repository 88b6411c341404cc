"""CLI: ``python -m benchmarks.run --size tiny|small|full --out results.json``.

Prints markdown tables and writes every number (medians, min/max, repeat
counts, XLA memory analysis) to JSON. All timings are wall-clock medians
inside one process after warm-up (compilation excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax

PRESETS = {
  # models, model repeats, threshold sizes, threshold repeats
  "tiny": (["tiny-bert"], 3, ["10k", "100k"], 3),
  "small": (["minilm"], 20, ["1M", "10.8M"], 20),
  "full": (["minilm", "bert-base"], 20, ["1M", "10.8M", "85.5M", "303M"], 20),
}
# Pre-pruning scoring: model, timed calls per method (each call is about one
# gradient, seconds on MiniLM on 2 cores).
PREPRUNING_PRESETS = {"tiny": ("tiny-bert", 2), "small": ("minilm", 3), "full": ("minilm", 3)}
# Huge threshold sizes: fewer timed calls (each baseline call takes minutes).
_HUGE_REPEATS = {"303M": 5}


def _machine() -> dict:
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      names = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
    cpu = f"{len(names)} x {names[0]}" if names else cpu
  except OSError:
    pass
  return {
    "cpu": cpu,
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "devices": [str(d) for d in jax.devices()],
    "python": sys.version.split()[0],
    "load_avg": [round(x, 2) for x in os.getloadavg()],
  }


def _ms(entry) -> str:
  if not entry:
    return "-"
  reps = f" (n={entry['repeats']})" if entry.get("repeats", 20) < 20 else ""
  return f"{entry['median_ms']:.1f}{reps}"


def _mb(entry) -> str:
  return f"{entry['temp_bytes'] / 2**20:.1f}" if entry and "temp_bytes" in entry else "-"


def markdown(results: dict) -> str:
  out = [
    f"Machine: {results['machine']['cpu']}, jax {results['machine']['jax']} "
    f"({results['machine']['backend']}). Medians of wall time in ms. Load average "
    f"(1 min) at start {results['machine'].get('load_avg', ['?'])[0]}.",
    "",
  ]
  if results.get("steps"):
    out += [
      "| model (batch x seq) | prunable | adamw ms | seven in window ms | ratio "
      "| seven after window ms | ratio | frozen (fixed_mask) ms | ratio "
      "| extra opt-state B/prunable weight |",
      "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["steps"]:
      out.append(
        f"| {r['model']} ({r['batch_seq'][0]}x{r['batch_seq'][1]}) | {r['prunable'] / 1e6:.2f}M "
        f"| {_ms(r['plain_adamw'])} | {_ms(r['seven_in_window'])} | {r['ratio_in_window']:.3f} "
        f"| {_ms(r['seven_after_window'])} | {r['ratio_after_window']:.3f} "
        f"| {_ms(r['seven_frozen'])} | {r['ratio_frozen']:.3f} "
        f"| {r['optimizer_state']['extra_bytes_per_prunable_weight']:.2f} (bf16 stats: "
        f"{r['optimizer_state_bf16']['extra_bytes_per_prunable_weight']:.2f}) |"
      )
    out.append("")
    out += [
      "Optimizer update alone (fixed gradients), medians in ms: "
      + "; ".join(
        f"{r['model']}: adamw {r['update_only']['plain_adamw']['median_ms']:.1f}, "
        f"seven in window {r['update_only']['seven_in_window']['median_ms']:.1f} "
        f"(+{r['update_overhead_ms_in_window']:.1f}), after "
        f"{r['update_only']['seven_after_window']['median_ms']:.1f} "
        f"(+{r['update_overhead_ms_after_window']:.1f}), frozen "
        f"{r['update_only']['seven_frozen']['median_ms']:.1f} "
        f"(+{r['update_overhead_ms_frozen']:.1f}); overhead / adamw step "
        f"{1 + r['update_overhead_ms_in_window'] / r['plain_adamw']['median_ms']:.3f}x in, "
        f"{1 + r['update_overhead_ms_after_window'] / r['plain_adamw']['median_ms']:.3f}x after"
        for r in results["steps"]
      ),
      "",
    ]
    out.append(
      "In-window step with bf16 statistics (`stats_dtype=jnp.bfloat16`) / adamw: "
      + "; ".join(
        f"{r['model']}: {r['ratio_in_window_bf16']:.3f} (f32 stats {r['ratio_in_window']:.3f}); "
        f"update alone bf16 {r['update_only']['seven_in_window_bf16']['median_ms']:.1f} ms vs f32 "
        f"{r['update_only']['seven_in_window']['median_ms']:.1f} ms"
        for r in results["steps"]
        if "ratio_in_window_bf16" in r
      )
    )
    out.append("")
    out.append(
      "Bytes the compiled optimizer step moves per prunable weight (limit of the in-window "
      "arithmetic: ~32 B), as whole program (XLA cost analysis) / the path outside the window "
      "(entry computation) / the window's loop body (top level): "
      + "; ".join(
        f"{r['model']}: "
        + ", ".join(
          f"{k} {v['bytes_per_prunable_weight']:.1f} / "
          f"{v.get('path_bytes_per_prunable_weight', float('nan')):.1f} / "
          f"{v.get('window_body_bytes_per_prunable_weight', float('nan')):.1f}"
          for k, v in r["update_bytes"].items()
        )
        for r in results["steps"]
        if "update_bytes" in r
      )
    )
    out.append("")
    out.append(
      "Extra optimizer-state bytes per prunable weight, by field: "
      + "; ".join(
        f"{r['model']}: "
        + ", ".join(f"{k} {v:.2f}" for k, v in r["optimizer_state"]["per_prunable_weight"].items())
        for r in results["steps"]
      )
    )
    out.append("")
  if results.get("threshold"):
    out += [
      "| scores | dist | passes cold / warm / plain | ours ms | / 1 sum | warm ms | / 1 sum "
      "| plain-XLA ms | / 1 sum | ours temp MiB | 1 sum ms | sort ms | sort / ours | top_k ms "
      "| exact | load |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["threshold"]:
      ratio = f"{r['sort_over_ours']:.0f}x" if "sort_over_ours" in r else "-"
      warm = f"{r['ours_warm_over_floor']:.1f}" if "ours_warm" in r else "-"
      plain = f"{r['ours_plain_over_floor']:.1f}" if "ours_plain" in r else "-"
      load = f"{r['load_avg'][0]:.1f}" if "load_avg" in r else "-"
      out.append(
        f"| {r['size']} ({r['scores']:,}) | {r.get('dist', '-')} "
        f"| {r['passes']} / {r.get('passes_warm', '-')} / {r.get('passes_plain', '-')} "
        f"| {_ms(r['ours'])} | {r['ours_over_floor']:.1f} | {_ms(r.get('ours_warm'))} | {warm} "
        f"| {_ms(r.get('ours_plain'))} | {plain} | {_mb(r['ours'])} | {_ms(r['floor_sum'])} "
        f"| {_ms(r.get('sort'))} | {ratio} | {_ms(r.get('top_k'))} | {r.get('exact', '-')} "
        f"| {load} |"
      )
    out.append("")
  if results.get("prepruning"):
    out += prepruning_markdown(results["prepruning"])
  return "\n".join(out)


_STEP_ROWS = [
  ("plain_adamw", "adamw", "median"),
  ("seven_in_window", "seven_mask in the window, mask every step", "median"),
  (
    "seven_every10",
    "seven_mask in the window, mask every 10 steps (mean of whole periods)",
    "mean",
  ),
  ("seven_after_window", "seven_mask after the window (nothing called)", "median"),
  ("seven_frozen", "after `freeze` (`fixed_mask`)", "median"),
  ("seven_in_window_bf16", "seven_mask in the window, bf16 statistics", "median"),
]
_THRESHOLD_ROWS = [
  ("ours", "passes", "cold"),
  ("ours_warm", "passes_warm", "warm start (hint: previous tau)"),
  ("ours_plain", "passes_plain", "plain XLA (`barriers=False`), cold"),
]


def summary_markdown(results: dict) -> str:
  """Everything the performance issue asks for in one table.

  Training steps: median wall time (the every-10 row: mean over whole mask
  periods, against adamw's mean), relative to adamw of the same model.
  Threshold: median wall time in units of one ``jnp.sum`` over the same
  leaves (the one-pass floor), timed in the same process.
  """
  m = results["machine"]
  out = [
    f"Machine: {m['cpu']}, jax {m['jax']} ({m['backend']}), load average (1 min) "
    f"{m.get('load_avg', ['?'])[0]} at start, {m.get('load_avg_end', ['?'])[0]} at the end. "
    f"Command: `{results.get('command', '?')}` ({results.get('started', '?')} to "
    f"{results.get('finished', '?')}).",
    "",
    "| measurement | model / scores | ms | relative | unit | n |",
    "|---|---|---|---|---|---|",
  ]
  for r in results.get("steps") or []:
    model = f"{r['model']} ({r['batch_seq'][0]}x{r['batch_seq'][1]}, {r['prunable'] / 1e6:.2f}M)"
    for key, label, stat in _STEP_ROWS:
      if key not in r:
        continue
      base = r["plain_adamw"][f"{stat}_ms"]
      value = r[key][f"{stat}_ms"]
      out.append(
        f"| step: {label} | {model} | {value:.1f} | {value / base:.3f} "
        f"| adamw step ({stat}) | {r[key]['repeats']} |"
      )
  for r in results.get("threshold") or []:
    floor = r["floor_sum"]["median_ms"]
    scores = f"{r['size']} ({r['scores']:,}, {r.get('dist', '-')})"
    out.append(
      f"| threshold: one `jnp.sum` over the leaves | {scores} | {floor:.1f} | 1.0 "
      f"| one pass | {r['floor_sum']['repeats']} |"
    )
    for key, passes, label in _THRESHOLD_ROWS:
      if key not in r:
        continue
      value = r[key]["median_ms"]
      out.append(
        f"| threshold: {label}, {r.get(passes, '?')} passes | {scores} | {value:.1f} "
        f"| {value / floor:.1f} | one pass | {r[key]['repeats']} |"
      )
  out.append("")
  return "\n".join(out)


def _cell(entry, ratio) -> str:
  if not entry:
    return "-", "-"
  return _ms(entry), f"{ratio:.3f}"


def prepruning_markdown(r: dict) -> list:
  """The pre-pruning table: per-batch (or per-iteration) time / training step."""
  out = [
    f"Pre-pruning scoring, {r['model']} ({r['batch_seq'][0]}x{r['batch_seq'][1]}, "
    f"{r['prunable'] / 1e6:.2f}M prunable): training step (adamw) "
    f"{r['train_step_ms']:.1f} ms (before the methods "
    f"{r['train_step_before']['median_ms']:.1f}, after "
    f"{r['train_step_after']['median_ms']:.1f}).",
    "",
    "| method | per batch ms | / train step | one-off ms | / train step "
    "| default batches (iterations) | default scoring ~ s | how measured |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for m in r["methods"]:
    per, per_ratio = _cell(m["per_batch"], m["ratio_per_batch"] or 0.0)
    fixed, fixed_ratio = _cell(m["fixed"], m["ratio_fixed"] or 0.0)
    how = m["how"] + (
      f" (alias of {m['alias_of']}: same runner, same numbers)" if m.get("alias_of") else ""
    )
    out.append(
      f"| {m['method']} | {per} | {per_ratio} | {fixed} | {fixed_ratio} "
      f"| {m['default_batches']} ({m['default_steps']}) "
      f"| {m['default_total_ms'] / 1e3:.2f} | {how} |"
    )
  out.append("")
  return out


def _writable_out(path: str) -> str:
  """``--out``: its folder must exist and be writable, checked before any run."""
  parent = os.path.dirname(os.path.abspath(path)) or "."
  if not os.path.isdir(parent):
    raise argparse.ArgumentTypeError(f"the folder of --out {path!r} does not exist: {parent}")
  if not os.access(parent, os.W_OK):
    raise argparse.ArgumentTypeError(f"the folder of --out {path!r} is not writable: {parent}")
  if os.path.isdir(path):
    raise argparse.ArgumentTypeError(f"--out {path!r} is a folder; give a file name")
  return path


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
  return value


def main(argv=None) -> int:
  from benchmarks.bert import CONFIGS
  from benchmarks.threshold_bench import SIZES

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", choices=sorted(PRESETS), default="small")
  parser.add_argument(
    "--out",
    default=None,
    type=_writable_out,
    help="write all results to this JSON file (its folder must exist and be writable)",
  )
  parser.add_argument("--skip-steps", action="store_true", help="skip the training-step benchmark")
  parser.add_argument("--skip-threshold", action="store_true", help="skip the threshold benchmark")
  parser.add_argument(
    "--skip-prepruning", action="store_true", help="skip the pre-pruning scoring benchmark"
  )
  parser.add_argument(
    "--prepruning-model",
    default=None,
    choices=sorted(CONFIGS),
    help="override the preset's pre-pruning model",
  )
  parser.add_argument(
    "--models",
    nargs="*",
    default=None,
    choices=sorted(CONFIGS),
    help="override the preset's models",
  )
  parser.add_argument(
    "--threshold-sizes",
    nargs="*",
    default=None,
    choices=list(SIZES),
    help="override the preset's threshold sizes",
  )
  parser.add_argument(
    "--repeats", type=_positive_int, default=None, help="timed calls per measurement"
  )
  parser.add_argument(
    "--skip-baselines", action="store_true", help="threshold: skip the sort / top_k baselines"
  )
  parser.add_argument(
    "--dist",
    nargs="+",
    default=["uniform"],
    choices=["uniform", "heavy", "gapped"],
    help="score distribution(s) for the threshold benchmark (several: one row each)",
  )
  args = parser.parse_args(argv)

  from benchmarks import bert, prepruning_bench, threshold_bench

  models, model_reps, sizes, thr_reps = PRESETS[args.size]
  models = args.models if args.models is not None else models
  sizes = args.threshold_sizes if args.threshold_sizes is not None else sizes
  results = {
    "size": args.size,
    "machine": _machine(),
    "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "steps": [],
    "threshold": [],
    "prepruning": None,
  }
  if not args.skip_steps:
    for name in models:
      results["steps"].append(
        bert.step_overhead(
          name, repeats=args.repeats or model_reps, warmup=1 if args.size == "tiny" else 2
        )
      )
      print(f"[steps] {name} done", file=sys.stderr, flush=True)
  if not args.skip_threshold:
    for name in sizes:
      for dist in args.dist:
        reps = args.repeats or _HUGE_REPEATS.get(name, thr_reps)
        results["threshold"].append(
          threshold_bench.threshold_cost(
            name, repeats=reps, dist=dist, baseline_max=0 if args.skip_baselines else 1.1e8
          )
        )
        print(f"[threshold] {name} {dist} done", file=sys.stderr, flush=True)
  if not args.skip_prepruning:
    pre_model, pre_reps = PREPRUNING_PRESETS[args.size]
    pre_model = args.prepruning_model or pre_model
    results["prepruning"] = prepruning_bench.prepruning_cost(
      pre_model, repeats=args.repeats or pre_reps, warmup=1
    )
    print(f"[prepruning] {pre_model} done", file=sys.stderr, flush=True)
  results["command"] = "python -m benchmarks.run " + " ".join(
    argv if argv is not None else sys.argv[1:]
  )
  results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
  results["machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
  summary = summary_markdown(results)
  table = markdown(results)
  results["summary_markdown"] = summary
  results["markdown"] = table
  print(summary)
  print(table)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=2)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
