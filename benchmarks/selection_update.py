"""One in-window selection (threshold and new masks) on a real pruning
state's scores, this tree's selection against an earlier commit's (loaded
beside it), interleaved.

    python -m benchmarks.selection_update minilm [BASE]   # from the repository root

The scores and masks are those of SEVEN's state after 42 in-window updates
of the named BERT (random weights) on one fixed batch's gradient (pruned
weights score 0, the survivors above the last threshold: the gapped scores
the engine ranks at every step); the budget keeps 0.4% of the prunable weights fewer than the
current mask, about what one step of the cubic schedule drops there. It is
timed twice: at that budget, and at the nearest larger budget whose k-th
score is tied with another (on MiniLM's scores here about one budget in 20
near the cut; these fixed-gradient scores tie more often than training's,
see ``benchmarks/tie_frequency.py``), where ``ties="exact"`` runs its tie
break. Both sides must return the same masks and threshold (checked).
``BASE`` (default ``b8341d8``) is a commit of this repository: its selection
on its threshold. ``REP`` sets the rounds (default 60).
"""

import os
import sys
import time

os.environ["HF_HUB_OFFLINE"] = "1"
import jax
import numpy as np
import optax

import seven_jax
from benchmarks import bert as B
from benchmarks.common import load_at_commit
from seven_jax import schedules, selection, threshold

name = sys.argv[1] if len(sys.argv) > 1 else "minilm"
base = sys.argv[2] if len(sys.argv) > 2 else "b8341d8"

old_threshold = load_at_commit(base, "seven_jax/threshold.py", "seven_jax._threshold_base")
old_selection = load_at_commit(
  base,
  "seven_jax/selection.py",
  "seven_jax._selection_base",
  **{"seven_jax.threshold": old_threshold},
)

model, batch = B.make_model(name)
prunable = B.bert_prunable(model.params)
tx = seven_jax.seven_mask(
  optax.adamw(2e-5), sparsity=0.6, start_step=0, pruning_steps=200, prunable=prunable
)
runner = B._UpdateRunner(tx, model.params, B.batch_gradient(model, batch), 0, 40)
for _ in range(2):
  runner.prepare()
  jax.block_until_ready(runner())
state = seven_jax.find_state(runner.state)
pairs = [
  (s, m)
  for s, m in zip(jax.tree.leaves(state.scores), jax.tree.leaves(state.masks))
  if not bool(m.all())  # the all-True fills of the non-prunable leaves
]
scores, masks = [s for s, _ in pairs], [m for _, m in pairs]
total = sum(int(m.size) for m in masks)
kept = sum(int(m.sum()) for m in masks)
ratio = (kept - int(0.004 * total)) / total

fns = {
  label: jax.jit(
    lambda s, m, r, mod=mod: mod.select_masks(s, m, r, pruned_filled=True, return_threshold=True)
  )
  for label, mod in ((base, old_selection), ("this", selection))
}
count = jax.jit(lambda s, k: threshold.threshold_stats(s, k).kept)


def tied(r):
  k = schedules.keep_count(r, total)
  return int(count(scores, k)) > int(k)


# The nearest larger budget with a tie at its k-th score.
tie_ratio = next(
  r for r in ((kept - int(0.004 * total) + j * 97) / total for j in range(1, 5000)) if tied(r)
)
cases = {"no tie at the k-th score": ratio, "a tie at the k-th score": tie_ratio}
assert not tied(ratio), "the first budget should have no tie"
print(
  f"{name}: {len(scores)} leaves, {total:,} prunable, {kept:,} kept; keep ratios "
  f"{ratio:.6f} (no tie) and {tie_ratio:.6f} (a tie)"
)
for case, r in cases.items():
  outs = {k: f(scores, masks, r) for k, f in fns.items()}
  for a, b in zip(outs[base][0], outs["this"][0]):
    assert bool((a == b).all()), "the two selections disagree"
  assert float(outs[base][1]) == float(outs["this"][1]), "the two thresholds disagree"
  times = {k: [] for k in fns}
  for i in range(int(os.environ.get("REP", "60"))):
    for k in list(fns) if i % 2 == 0 else list(fns)[::-1]:
      t0 = time.perf_counter()
      jax.block_until_ready(fns[k](scores, masks, r))
      times[k].append(time.perf_counter() - t0)
  print(f"{case}: same masks and threshold")
  for k, v in times.items():
    print(f"  {k:10s} median {np.median(v) * 1e3:6.2f} ms  min {np.min(v) * 1e3:6.2f} ms")
print("load", os.getloadavg())
