"""Bytes the compiled optimizer update moves (XLA cost analysis), no timing.

Command: HF_HUB_OFFLINE=1 python benchmarks/results/update_bytes.py minilm benchmarks/results/minilm_update_bytes.json
"""

import os, sys, json

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import jax, jax.numpy as jnp, numpy as np, optax
import seven_jax
from benchmarks import bert

model, _ = bert.make_model(sys.argv[1] if len(sys.argv) > 1 else "minilm")
params = model.params
prunable = bert.bert_prunable(params)
n = int(
  sum(
    int(np.prod(p.shape)) for p, s in zip(jax.tree.leaves(params), jax.tree.leaves(prunable)) if s
  )
)
grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)


def tx_of(**kw):
  return seven_jax.seven_mask(
    optax.adamw(2e-5), sparsity=0.6, start_step=0, pruning_steps=200, prunable=prunable, **kw
  )


out = {"prunable": n, "load_avg": os.getloadavg()}
for name, tx in [
  ("adamw", optax.adamw(2e-5)),
  ("seven_in_window_f32", tx_of()),
  ("seven_in_window_bf16", tx_of(stats_dtype=jnp.bfloat16)),
]:
  state = tx.init(params)
  if name != "adamw":
    state = bert._fast_forward(state, 40)
  upd = jax.jit(lambda g, s, p, tx=tx: tx.update(g, s, p), donate_argnums=(1,))
  out[name] = bert.update_bytes(upd, grads, state, params, n)
  print(name, out[name], flush=True)
out["seven_minus_adamw_f32_B_per_weight"] = (
  out["seven_in_window_f32"]["bytes_per_prunable_weight"]
  - out["adamw"]["bytes_per_prunable_weight"]
)
out["seven_minus_adamw_bf16_B_per_weight"] = (
  out["seven_in_window_bf16"]["bytes_per_prunable_weight"]
  - out["adamw"]["bytes_per_prunable_weight"]
)
print(json.dumps(out, indent=1))
json.dump(out, open(sys.argv[2], "w"), indent=1)
