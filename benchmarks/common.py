"""Timing and memory helpers shared by the benchmarks."""

from __future__ import annotations

import importlib.util
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Optional

import jax
import numpy as np


def time_calls(
  fn: Callable[[], Any],
  *,
  repeats: int,
  warmup: int = 1,
  budget_s: float | None = None,
  min_repeats: int = 3,
) -> dict:
  """Median wall time of ``fn()`` (blocked until ready), in milliseconds.

  ``budget_s`` caps the total timed time for very slow baselines (a sort of
  85.5M scores): after ``min_repeats`` calls we stop once the budget is spent,
  and the number of calls actually timed is reported next to the median.
  """
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  start = time.perf_counter()
  for i in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
    if budget_s is not None and i + 1 >= min_repeats and time.perf_counter() - start > budget_s:
      break
  ms = [t * 1e3 for t in times]
  return {
    "median_ms": statistics.median(ms),
    "min_ms": min(ms),
    "max_ms": max(ms),
    "repeats": len(ms),
  }


def compiled_memory(jitted, *args) -> dict:
  """XLA's own memory analysis of the compiled function (bytes).

  ``temp`` is the scratch XLA allocates beyond arguments and outputs: for a
  sort-based threshold it holds the concatenated (and sorted) copy of every
  score; for the counting select it should stay tiny.
  """
  compiled = jitted.lower(*args).compile()
  analysis = compiled.memory_analysis()
  if analysis is None:  # some backends do not report it
    return {}
  return {
    "temp_bytes": int(analysis.temp_size_in_bytes),
    "argument_bytes": int(analysis.argument_size_in_bytes),
    "output_bytes": int(analysis.output_size_in_bytes),
  }


def tree_bytes(tree) -> int:
  return int(
    sum(
      np.asarray(x).nbytes if not hasattr(x, "nbytes") else x.nbytes for x in jax.tree.leaves(tree)
    )
  )


_DTYPE_BYTES = {
  "pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
  "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8,
}  # fmt: skip
_SHAPE = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([\d,]*)\]")
# Ops that move no data themselves (or whose data is counted elsewhere).
_FREE_OPS = {
  "parameter", "get-tuple-element", "tuple", "bitcast", "constant", "while",
  "conditional", "after-all", "opt-barrier", "call",
}  # fmt: skip


def _type_bytes(text: str) -> int:
  total = 0
  for dtype, dims in _SHAPE.findall(text):
    n = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
    total += n * _DTYPE_BYTES[dtype]
  return total


def _computation(hlo: str, name: Optional[str]) -> str:
  start = hlo.index("\nENTRY") if name is None else hlo.index(f"\n%{name} ")
  return hlo[start : hlo.index("\n}", start)]


def entry_while_body(hlo: str) -> Optional[str]:
  """Name of the body of the first while loop of the entry computation."""
  m = re.search(r" while\(.*?body=%([\w.\-]+)", _computation(hlo, None))
  return m.group(1) if m else None


def hlo_bytes(hlo: str, computation: Optional[str] = None) -> int:
  """Bytes read and written by the top-level ops of one computation of an
  optimized HLO module (``compiled.as_text()``; the entry by default).

  Every op counts its operands and its result once (a fusion is one op);
  loops and conditionals are not entered, so the entry's figure is what one
  call moves when its loops run 0 times and its conditionals take free
  branches.
  """
  lines = [ln.strip() for ln in _computation(hlo, computation).split("\n")[2:]]
  lines = [ln.removeprefix("ROOT ") for ln in lines if ln.startswith(("%", "ROOT %"))]
  sizes, total = {}, 0
  for ln in lines:
    name, rest = ln.split(" = ", 1)
    op = re.match(r"(\([^=]*?\)|\S+)\s+([\w\-]+)\(", rest)
    if op is None:
      continue
    sizes[name] = _type_bytes(op.group(1))
    if op.group(2) in _FREE_OPS:
      continue
    args = rest[op.end() : rest.index(")", op.end())]
    total += sizes[name] + sum(sizes.get(a.strip(), 0) for a in args.split(","))
  return total


def load_at_commit(commit: str, path: str, name: str, **modules):
  """Module ``path`` of this repository as of ``commit``, executed as module
  ``name``; ``modules`` (``{"seven_jax.threshold": m}``) stand in, while it
  runs, for what it imports from this tree. For A/B benchmarks of an old
  engine beside the current one in one process."""
  src = subprocess.run(
    ["git", "show", f"{commit}:{path}"], capture_output=True, text=True, check=True
  ).stdout
  with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
    f.write(src)
  spec = importlib.util.spec_from_file_location(name, f.name)
  module = importlib.util.module_from_spec(spec)
  saved = {k: sys.modules.get(k) for k in modules}
  sys.modules.update(modules)
  try:
    spec.loader.exec_module(module)
  finally:
    for k, v in saved.items():
      sys.modules[k] = v
  return module
