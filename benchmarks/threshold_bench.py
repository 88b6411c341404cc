"""Cost and scaling of the global top-k threshold.

Compares, on the same score leaves (never concatenated by ours):

* ``ours``: :func:`seven_jax.threshold.kth_largest_threshold` (counting select),
* ``sort``: ``jnp.sort`` of the concatenated scores, then index (what the
  official code's ``topk(flat, k)[-1]`` amounts to for k ~ 40% of D),
* ``top_k``: ``lax.top_k`` of the concatenated scores (jaxpruner-style),
* ``floor``: one plain ``jnp.sum`` over every leaf, the cost of reading the
  scores once; no exact method can beat it by much.
* ``ours_warm``: ours with ``hint`` = the previous step's threshold, modelled
  as the exact k'-th value for ``k' = k + warm_shift * D`` (the keep ratio
  moved by ``warm_shift``; 1e-4 by default, about one step of a slow window);
* ``ours_plain``: ours with ``barriers=False`` (the plain-XLA program, no
  CPU-tuned optimization barriers), cold.

Peak scratch memory is XLA's compiled memory analysis (``temp_bytes``).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks.common import compiled_memory, time_calls
from seven_jax import threshold as th


def _layer_shapes(hidden, inter, layers):
  shapes = []
  for _ in range(layers):
    shapes += [(hidden, hidden)] * 4 + [(hidden, inter), (inter, hidden)]
  return shapes + [(hidden, hidden)]  # pooler


# Named sizes use the prunable shapes of real models (leaves of realistic
# sizes matter: the counting select makes one reduction per leaf).
SIZES = {
  "10k": [(100, 100)],
  "100k": [(100, 500), (500, 100)],
  "1M": [(1024, 1024)],
  "10.8M": _layer_shapes(384, 1536, 6),  # MiniLM (6 x 384)
  "85.5M": _layer_shapes(768, 3072, 12),  # BERT-base
  "303M": _layer_shapes(1024, 4096, 24),  # BERT-large
}


def make_scores(name: str, dist: str = "uniform", seed: int = 0):
  key = jax.random.PRNGKey(seed)
  leaves = []
  for i, shape in enumerate(SIZES[name]):
    k = jax.random.fold_in(key, i)
    if dist == "uniform":
      x = jax.random.uniform(k, shape, jnp.float32)
    elif dist == "heavy":  # SEVEN-like: |w g| products span many decades
      a, b = jax.random.split(k)
      x = jnp.abs(jax.random.normal(a, shape) * jnp.exp(2.0 * jax.random.normal(b, shape)))
    elif dist == "gapped":
      # What the engine selects on after its first selection: pruned weights
      # score 0, survivors all above the last threshold (SEVEN's scores only
      # grow), and the k-th (keep 0.4) 0.6% of the scores above that gap.
      a, b = jax.random.split(k)
      u = jax.random.uniform(a, shape, jnp.float32)
      x = jnp.where(u > 0.594, u + 0.01 * jax.random.uniform(b, shape, jnp.float32), 0.0)
    else:
      raise ValueError(dist)
    leaves.append(x)
  return leaves


def _concat(leaves):
  return jnp.concatenate([x.reshape(-1) for x in leaves])


def threshold_cost(
  name: str,
  *,
  keep: float = 0.4,
  repeats: int = 20,
  baseline_max: float = 1.1e8,
  baseline_budget_s: float = 60.0,
  dist: str = "uniform",
  check: bool = True,
  warm_shift: float | None = 1e-4,
  plain: bool = True,
) -> dict:
  """Times ours, the sort/top-k baselines (up to ``baseline_max`` scores) and the floor."""
  leaves = make_scores(name, dist)
  total = sum(int(x.size) for x in leaves)
  k = int(keep * total)
  k_arr = jnp.int32(k)

  ours = jax.jit(th.threshold_and_passes)
  ours_warm = jax.jit(lambda ls, k, h: th.threshold_and_passes(ls, k, hint=h))
  ours_plain = jax.jit(lambda ls, k: th.threshold_and_passes(ls, k, barriers=False))
  floor = jax.jit(lambda ls: sum(jnp.sum(x) for x in ls))
  sort = jax.jit(lambda ls, k: jnp.sort(_concat(ls))[total - k])
  topk = jax.jit(lambda ls: lax.top_k(_concat(ls), k)[0][-1])

  # Compile ahead of time so that no timed call includes compilation (the
  # slow baselines are called only once or twice at the largest sizes).
  ours = ours.lower(leaves, k_arr).compile()
  floor = floor.lower(leaves).compile()

  row = {"size": name, "scores": total, "k": k, "dist": dist}
  tau, passes = ours(leaves, k_arr)
  row["passes"] = int(passes)
  row["ours"] = time_calls(lambda: ours(leaves, k_arr), repeats=repeats)
  row["ours"].update(compiled_memory(jax.jit(th.threshold_and_passes), leaves, k_arr))
  row["floor_sum"] = time_calls(lambda: floor(leaves), repeats=repeats)
  if warm_shift is not None:
    k_prev = jnp.int32(min(total, k + int(round(warm_shift * total))))
    hint = ours(leaves, k_prev)[0]
    ours_warm = ours_warm.lower(leaves, k_arr, hint).compile()
    tau_warm, passes_warm = ours_warm(leaves, k_arr, hint)
    row["warm_shift"] = warm_shift
    row["passes_warm"] = int(passes_warm)
    row["warm_equals_cold"] = bool(float(tau_warm) == float(tau))
    row["ours_warm"] = time_calls(lambda: ours_warm(leaves, k_arr, hint), repeats=repeats)
  if plain:
    ours_plain = ours_plain.lower(leaves, k_arr).compile()
    tau_plain, passes_plain = ours_plain(leaves, k_arr)
    row["passes_plain"] = int(passes_plain)
    row["plain_equals_barriers"] = bool(float(tau_plain) == float(tau))
    row["ours_plain"] = time_calls(lambda: ours_plain(leaves, k_arr), repeats=repeats)
  if check:
    # Exactness against numpy's sort (outside the timed region).
    ref = th.sort_reference_threshold(leaves, k) if total <= 1.1e8 else None
    if ref is not None:
      kept = sum(int(jnp.sum(x >= tau)) for x in leaves)
      kept_ref = sum(int(np.sum(np.asarray(x) >= ref)) for x in leaves)
      row["exact"] = bool(kept == kept_ref)
  if total <= baseline_max:
    memory = compiled_memory(sort, leaves, k_arr)
    sort = sort.lower(leaves, k_arr).compile()
    warm = 0 if total > 5e7 else 1  # a 85.5M sort takes about a minute here
    row["sort"] = time_calls(
      lambda: sort(leaves, k_arr),
      repeats=repeats,
      warmup=warm,
      budget_s=baseline_budget_s,
      min_repeats=1,
    )
    row["sort"].update(memory)
    if total <= 1.2e7:  # top_k with k ~ 0.4 D is a partial sort: as slow
      memory = compiled_memory(topk, leaves)
      topk = topk.lower(leaves).compile()
      row["top_k"] = time_calls(
        lambda: topk(leaves), repeats=repeats, budget_s=baseline_budget_s, min_repeats=1
      )
      row["top_k"].update(memory)
  base = row["floor_sum"]["median_ms"]
  row["ours_over_floor"] = row["ours"]["median_ms"] / base
  for key in ("ours_warm", "ours_plain"):
    if key in row:
      row[key + "_over_floor"] = row[key]["median_ms"] / base
  row["load_avg"] = list(os.getloadavg())
  if "sort" in row:
    row["sort_over_ours"] = row["sort"]["median_ms"] / row["ours"]["median_ms"]
  return row
