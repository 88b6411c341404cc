"""``python -m seven_jax.analysis RUN_DIR [RUN_DIR ...]``: a markdown report over run folders.

The first run is read as the one-shot method and the second as SEVEN: their
masks give the sentinel sets (kept by both, TSW candidates kept only by the
first, weights kept only by the second), with RGV distributions when a
``grad_stats.npz`` is found (in a run folder, or ``--grad-stats FILE``).
Every pair gets its IoU, and runs with a ``mask_history.npz`` their flips over
steps (otherwise the weights pruned per logged step, from ``log.jsonl``).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from seven_jax.analysis import report


def main(argv=None) -> pathlib.Path:
  parser = argparse.ArgumentParser(
    prog="python -m seven_jax.analysis", description=__doc__.splitlines()[0]
  )
  parser.add_argument("runs", nargs="+", help="run folders (each with results.json / masks.npz)")
  parser.add_argument("--out", default="analysis", help="folder for REPORT.md and the PNGs")
  parser.add_argument("--grad-stats", default=None, help="a grad_stats.npz (save_grad_stats)")
  args = parser.parse_args(argv)
  missing = [r for r in args.runs if not pathlib.Path(r).is_dir()]
  if missing:
    parser.error(f"not a folder: {', '.join(missing)}")
  if args.grad_stats and not pathlib.Path(args.grad_stats).exists():
    parser.error(f"--grad-stats {args.grad_stats} does not exist")
  path = report.write_report(args.runs, args.out, grad_stats=args.grad_stats)
  print(path.read_text())
  print(f"report written to {path}", file=sys.stderr)
  return path


if __name__ == "__main__":
  main()
