"""One accelerator check: ``python -m benchmarks.accelerator`` prints one table.

On a GPU or TPU (designed to finish in under 8 minutes on one H200):

* BERT-base (12 x 768, batch 32 x 64, bf16 compute, float32 params): the
  jitted training step of ``seven_mask(adamw)`` in the pruning window (f32
  and bf16 statistics), after it, and frozen (``freeze`` + ``fixed_mask``),
  each over plain ``adamw`` (round-robin medians, :mod:`benchmarks.bert`);
* the global threshold at 85.5M (BERT-base leaves) and 303M (BERT-large
  leaves), cold, warm and plain-XLA (no optimization barriers), in passes and
  in units of one ``jnp.sum`` over the same leaves
  (:mod:`benchmarks.threshold_bench`);
* the experiments loop ratio (loop steps/s over bare jitted steps/s) from
  :mod:`benchmarks.loop` when that module is present, else "not available".

``--dry-run`` runs the same code at tiny sizes (tiny-bert, 10k/100k scores,
the tiny loop) so that it finishes on a CPU in well under a minute; the test
suite runs it. ``--out FILE`` also writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp

# name: (steps model, threshold sizes, step repeats, threshold repeats, loop model)
MODES = {
  "full": ("bert-base", ["85.5M", "303M"], 10, 10, "bert-base"),
  "dry-run": ("tiny-bert", ["10k", "100k"], 2, 2, "tiny"),
}


def _rows_steps(r: dict) -> list:
  base = r["plain_adamw"]["median_ms"]
  out = [("adamw step", f"{base:.2f} ms", "1.000")]
  for key, label in [
    ("seven_in_window", "seven in window (f32 stats)"),
    ("seven_in_window_bf16", "seven in window (bf16 stats)"),
    ("seven_after_window", "seven after window"),
    ("seven_frozen", "seven frozen (freeze + fixed_mask)"),
  ]:
    ms = r[key]["median_ms"]
    out.append((label, f"{ms:.2f} ms", f"{ms / base:.3f} x adamw"))
  return out


def _rows_threshold(r: dict) -> list:
  name = f"threshold {r['size']} ({r['dist']})"
  out = [
    (f"{name}: one jnp.sum", f"{r['floor_sum']['median_ms']:.2f} ms", "1 pass"),
    (
      f"{name}: cold, {r['passes']} passes",
      f"{r['ours']['median_ms']:.2f} ms",
      f"{r['ours_over_floor']:.1f} sums",
    ),
  ]
  if "ours_warm" in r:
    out.append(
      (
        f"{name}: warm, {r['passes_warm']} passes (equal to cold: {r['warm_equals_cold']})",
        f"{r['ours_warm']['median_ms']:.2f} ms",
        f"{r['ours_warm_over_floor']:.1f} sums",
      )
    )
  if "ours_plain" in r:
    out.append(
      (
        f"{name}: plain XLA (no barriers), {r['passes_plain']} passes",
        f"{r['ours_plain']['median_ms']:.2f} ms",
        f"{r['ours_plain_over_floor']:.1f} sums",
      )
    )
  return out


def run(mode: str, *, skip_steps=False, skip_threshold=False, skip_loop=False) -> dict:
  from benchmarks import bert, threshold_bench

  model, sizes, step_reps, thr_reps, loop_model = MODES[mode]
  t0 = time.perf_counter()
  result = {
    "mode": mode,
    "backend": jax.default_backend(),
    "devices": [str(d) for d in jax.devices()],
    "load_avg": list(os.getloadavg()),
    "rows": [],
  }
  if not skip_steps:
    steps = bert.step_overhead(
      model, repeats=step_reps, warmup=1, dtype=jnp.bfloat16, update_only=False
    )
    result["steps"] = steps
    result["rows"] += _rows_steps(steps)
    print(f"[accelerator] steps done at {time.perf_counter() - t0:.0f} s", file=sys.stderr)
  if not skip_threshold:
    result["threshold"] = []
    for size in sizes:
      r = threshold_bench.threshold_cost(size, repeats=thr_reps, baseline_max=0, check=False)
      result["threshold"].append(r)
      result["rows"] += _rows_threshold(r)
      print(f"[accelerator] threshold {size} at {time.perf_counter() - t0:.0f} s", file=sys.stderr)
  if not skip_loop:
    try:
      from benchmarks import loop
    except ImportError as err:  # the module is optional
      result["rows"].append(("experiments loop / bare step", "not available", str(err)[:60]))
    else:
      steps = 10 if mode == "full" else 20
      r = loop.measure(loop_model, steps, 50, 1 if mode == "dry-run" else 2)
      result["loop"] = r
      result["rows"].append(
        (f"experiments loop / bare step ({loop_model})", f"{r['ratio']:.3f}", "target >= 0.97")
      )
  result["seconds"] = time.perf_counter() - t0
  return result


def markdown(result: dict) -> str:
  lines = [
    f"Backend {result['backend']} ({', '.join(result['devices'][:2])}"
    f"{', ...' if len(result['devices']) > 2 else ''}), mode {result['mode']}, "
    f"load {result['load_avg'][0]:.1f}, {result['seconds']:.0f} s in all. "
    "Medians of wall time.",
    "",
    "| what | time | ratio |",
    "|---|---|---|",
  ]
  lines += [f"| {a} | {b} | {c} |" for a, b, c in result["rows"]]
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--dry-run", action="store_true", help="tiny sizes (CPU, seconds): what the tests run"
  )
  parser.add_argument("--out", default=None, help="write the results as JSON to this file")
  parser.add_argument("--skip-steps", action="store_true")
  parser.add_argument("--skip-threshold", action="store_true")
  parser.add_argument("--skip-loop", action="store_true")
  args = parser.parse_args(argv)
  if args.out:
    parent = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
      parser.error(f"argument --out: folder {parent!r} does not exist or is not writable")
  mode = "dry-run" if args.dry_run else "full"
  if mode == "full" and jax.default_backend() == "cpu":
    print(
      "[accelerator] no GPU/TPU found: the full mode takes a long time on CPU "
      "(use --dry-run for a smoke test)",
      file=sys.stderr,
    )
  result = run(
    mode,
    skip_steps=args.skip_steps,
    skip_threshold=args.skip_threshold,
    skip_loop=args.skip_loop,
  )
  table = markdown(result)
  result["markdown"] = table
  print(table)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=2, default=str)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
