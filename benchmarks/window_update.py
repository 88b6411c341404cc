"""The optimizer update alone inside the pruning window, this engine against
the engine of an earlier commit (loaded beside it), interleaved, plus XLA's
byte count of the window's loop body.

    python -m benchmarks.window_update minilm [BASE]   # from the repository root
    python -m benchmarks.window_update minilm [BASE] --passes   # bf16 threshold passes
    python -m benchmarks.window_update bert-base [BASE] --window-only   # fewer rows (memory)

``BASE`` (default ``cf0cc3c``) is a commit of this repository; the old side
is its engine, selection and threshold, on this tree's score rules (an
engine older than 64cb69e ignores ``ScoreRule.score_from_stats``, one older
than be3c200 ``ScoreRule.next_stat``, and so computes the same values the way
it did). Rows: adamw; SEVEN in the window (mask every step) and statistics
only (no selection), in float32 and bfloat16; PLATON's statistics only
(``--window-only``: adamw and SEVEN in the window, which fits BERT-base's
states in 24 GB). Medians and means: on some steps the k-th score is tied
(``ties="exact"`` then runs its tie break), which the mean shows.
Whole-step medians on a 2-core machine wander by +-5% between runs;
interleaving the updates in one process is what resolves a few
milliseconds. The minor page faults of each call are its median ``ru_minflt``
delta (XLA:CPU maps a fresh temporary buffer per call, so every temporary
page the call touches faults). ``REP`` sets the rounds (default 30).
"""

import functools
import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
import jax
import optax

import seven_jax
import seven_jax.engine as en
import seven_jax.transform as T
from benchmarks import bert as B
from benchmarks.common import entry_while_body, hlo_bytes, load_at_commit

name = sys.argv[1] if len(sys.argv) > 1 else "minilm"
base_commit = sys.argv[2] if len(sys.argv) > 2 and not sys.argv[2].startswith("--") else "cf0cc3c"


_load = functools.partial(load_at_commit, base_commit)


# The whole selection path of the base: its threshold, its selection on top
# of it, its engine on top of that (this tree's score rules, which compute
# the same values).
old_threshold = _load("seven_jax/threshold.py", "seven_jax._threshold_base")
old_selection = _load(
  "seven_jax/selection.py",
  "seven_jax._selection_base",
  **{"seven_jax.threshold": old_threshold},
)
old = _load("seven_jax/engine.py", "seven_jax._engine_base")
old.selection = old_selection
old.canonicalize_scores = old_threshold.canonicalize_scores

model, batch = B.make_model(name)
prunable = B.bert_prunable(model.params)
n = B.num_prunable(model.params, prunable)
grads = B.batch_gradient(model, batch)


def seven(module, **kw):
  T.engine = module
  try:
    return seven_jax.seven_mask(
      optax.adamw(2e-5), sparsity=0.6, start_step=0, pruning_steps=200, prunable=prunable, **kw
    )
  finally:
    T.engine = en


def bf16_threshold_passes(threshold_stats, calls=40):
  """Counting passes of the threshold on ``calls`` consecutive in-window
  updates with bfloat16 statistics (this tree's engine and selection, the
  given ``threshold_stats``). Up to 75f9a00 the engine stored the score in
  bfloat16 too, and the scores it ranked clustered at bfloat16 values; since
  then they are float32 sums, as with float32 statistics."""
  from seven_jax import selection

  seen, original = [], selection.threshold_stats

  def spy(leaves, k, **kw):
    st = threshold_stats(leaves, k, **kw)
    jax.debug.callback(lambda p: seen.append(int(p)), st.passes)
    return st

  selection.threshold_stats = spy
  try:
    r = B._UpdateRunner(seven(en, stats_dtype="bfloat16"), model.params, grads, 0, 40)
    for _ in range(calls):
      r.prepare()
      jax.block_until_ready(r())
  finally:
    selection.threshold_stats = original
  return seen


if "--passes" in sys.argv:
  for label, fn in (
    (base_commit, old_threshold.threshold_stats),
    ("this", en.selection.threshold_stats),
  ):
    seen = bf16_threshold_passes(fn)
    print(f"{label}: bf16 threshold passes per update {seen}; steps 16-39: {sum(seen[16:])}")
  sys.exit(0)

runners = {"adamw": B._UpdateRunner(optax.adamw(2e-5), model.params, grads, 0)}
for label, module in ((base_commit, old), ("this", en)):
  runners[f"{label} in window"] = B._UpdateRunner(seven(module), model.params, grads, 0, 40)
  if "--window-only" in sys.argv:
    runners[f"{label} bf16 in window"] = B._UpdateRunner(
      seven(module, stats_dtype="bfloat16"), model.params, grads, 0, 40
    )
    continue
  runners[f"{label} statistics only"] = B._UpdateRunner(
    seven(module, update_every=1000), model.params, grads, 0, 40
  )
  runners[f"{label} bf16 in window"] = B._UpdateRunner(
    seven(module, stats_dtype="bfloat16"), model.params, grads, 0, 40
  )
  runners[f"{label} bf16 statistics only"] = B._UpdateRunner(
    seven(module, stats_dtype="bfloat16", update_every=1000), model.params, grads, 0, 40
  )
  # PLATON's three statistics every step, no selection (an older engine
  # ignores ScoreRule.next_stat and runs the rule's update, as it did).
  platon = module.pruning_mask(
    optax.adamw(2e-5),
    "platon",
    sparsity=0.6,
    start_step=0,
    pruning_steps=200,
    prunable=prunable,
    update_every=1000,
  )
  runners[f"{label} platon statistics only"] = B._UpdateRunner(platon, model.params, grads, 0, 40)
t = B._interleaved(runners, repeats=int(os.environ.get("REP", "30")), warmup=2)
base = t["adamw"]["median_ms"]
print(f"{name}: {n:,} prunable weights; update alone, medians of {t['adamw']['repeats']} rounds")
for k, v in t.items():
  print(
    f"{k:30s} median {v['median_ms']:7.1f} ms (+{v['median_ms'] - base:6.1f})  "
    f"mean {v['mean_ms']:7.1f}  min {v['min_ms']:7.1f}  minor faults/call {v['minor_faults']:7.0f}"
  )
rows = ("in window", "bf16 in window", "platon statistics only")
labels = ["{b} " + w for w in rows if f"{base_commit} {w}" in runners]
for label in (x.format(b=b) for x in labels for b in (base_commit, "this")):
  r = runners[label]
  upd = jax.jit(lambda g, s, p, tx=r.tx: tx.update(g, s, p), donate_argnums=(0, 1))
  hlo = upd.lower(r.grads, r.state, r.params).compile().as_text()
  body = entry_while_body(hlo)
  print(
    f"{label}: window loop body {hlo_bytes(hlo, body) / n:.1f} B per prunable weight (top level)"
  )
print("load", os.getloadavg())
