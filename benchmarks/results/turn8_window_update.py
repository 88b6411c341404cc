"""The optimizer update alone inside the pruning window, this engine against
the engine of cf0cc3c (loaded beside it), interleaved, plus XLA's byte count
of the window's loop body.

    python benchmarks/results/turn8_window_update.py minilm   # from the repository root

The old side is cf0cc3c's engine, selection and threshold, on this tree's
score rules (the old engine ignores ``ScoreRule.score_from_stats``, so it
computes the same values the way cf0cc3c did). ``REP`` sets the rounds
(default 30).
"""

import importlib.util as iu
import os
import subprocess
import sys
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
import jax, jax.numpy as jnp, optax  # noqa: E401,E402
import seven_jax, seven_jax.transform as T, seven_jax.engine as en  # noqa: E401,E402
from benchmarks import bert as B  # noqa: E402
from benchmarks.common import entry_while_body, hlo_bytes  # noqa: E402


def _load(path, name, **globals_):
  """``path`` as of cf0cc3c, executed as module ``name`` (``globals_`` stand
  in for what it imported from this tree)."""
  src = subprocess.run(
    ["git", "show", f"cf0cc3c:{path}"], capture_output=True, text=True, check=True
  ).stdout
  with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
    f.write(src)
  spec = iu.spec_from_file_location(name, f.name)
  module = iu.module_from_spec(spec)
  saved = {k: sys.modules.get(k) for k in globals_}
  sys.modules.update(globals_)
  try:
    spec.loader.exec_module(module)
  finally:
    for k, v in saved.items():
      sys.modules[k] = v
  return module


# The whole selection path of cf0cc3c: its threshold, its selection on top
# of it, its engine on top of that (this tree's score rules, which compute
# the same values).
old_threshold = _load("seven_jax/threshold.py", "seven_jax._threshold_cf0cc3c")
old_selection = _load(
  "seven_jax/selection.py",
  "seven_jax._selection_cf0cc3c",
  **{"seven_jax.threshold": old_threshold},
)
old = _load("seven_jax/engine.py", "seven_jax._engine_cf0cc3c")
old.selection = old_selection
old.canonicalize_scores = old_threshold.canonicalize_scores

name = sys.argv[1] if len(sys.argv) > 1 else "minilm"
model, _ = B.make_model(name)
prunable = B.bert_prunable(model.params)
n = B.num_prunable(model.params, prunable)
grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), model.params)


def seven(module, **kw):
  T.engine = module
  try:
    return seven_jax.seven_mask(
      optax.adamw(2e-5), sparsity=0.6, start_step=0, pruning_steps=200, prunable=prunable, **kw
    )
  finally:
    T.engine = en


runners = {"adamw": B._UpdateRunner(optax.adamw(2e-5), model.params, grads, 0)}
for label, module in (("cf0cc3c", old), ("this", en)):
  runners[f"{label} in window"] = B._UpdateRunner(seven(module), model.params, grads, 0, 40)
  runners[f"{label} statistics only"] = B._UpdateRunner(
    seven(module, update_every=1000), model.params, grads, 0, 40
  )
t = B._interleaved(runners, repeats=int(os.environ.get("REP", 30)), warmup=2)
base = t["adamw"]["median_ms"]
print(f"{name}: {n:,} prunable weights; update alone, medians of {t['adamw']['repeats']} rounds")
for k, v in t.items():
  print(
    f"{k:26s} median {v['median_ms']:7.1f} ms (+{v['median_ms'] - base:6.1f})  min {v['min_ms']:7.1f}"
  )
for label in ("cf0cc3c", "this"):
  r = runners[f"{label} in window"]
  upd = jax.jit(lambda g, s, p, tx=r.tx: tx.update(g, s, p), donate_argnums=(0, 1))
  hlo = upd.lower(r.grads, r.state, r.params).compile().as_text()
  body = entry_while_body(hlo)
  print(
    f"{label}: window loop body {hlo_bytes(hlo, body) / n:.1f} B per prunable weight (top level)"
  )
print("load", os.getloadavg())
