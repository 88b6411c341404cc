"""Timing and memory helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

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
