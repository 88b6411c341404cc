"""The update alone after the window: adamw, seven_mask (nothing called), freeze.

python benchmarks/results/turn4_update_after_window.py bert-base   # from the repository root
"""

import os, sys

os.environ["HF_HUB_OFFLINE"] = "1"
import jax, jax.numpy as jnp, optax
import seven_jax
from benchmarks import bert as B

name = sys.argv[1]
model, batch = B.make_model(name)
prunable = B.bert_prunable(model.params)
grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), model.params)
mk = lambda steps: seven_jax.seven_mask(
  optax.adamw(2e-5), sparsity=0.6, start_step=0, pruning_steps=steps, prunable=prunable
)
r = {
  "adamw": B._UpdateRunner(optax.adamw(2e-5), model.params, grads, 0),
  "after_window": B._UpdateRunner(mk(2), model.params, grads, 2),
  "frozen": B._UpdateRunner(mk(2), model.params, grads, 2, freeze=True),
}
t = B._interleaved(r, repeats=int(os.environ.get("REP", 15)), warmup=2)
for k, v in t.items():
  print(f"{k:13s} median {v['median_ms']:7.1f} ms  min {v['min_ms']:7.1f}")
print("load", os.getloadavg())
