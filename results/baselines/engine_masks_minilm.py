"""The engine's magnitude masks on the real MiniLM parameter tree, weights held at
the checkpoint (SGD with lr 0, zero gradients), main-job schedule (60%, t_i = 20,
N = 80): how much of the pooler kernel survives, global budget vs per layer::

    python results/baselines/engine_masks_minilm.py global per_leaf

The printed "sparsity" counts every 2-D leaf of the mask tree (embeddings and the
classifier, which are never pruned, included), so it is not the prunable sparsity;
the pooler counts are exact."""

import sys, time
import jax, jax.numpy as jnp, numpy as np, optax
from flax import nnx
import seven_jax
from seven_jax.models import bert

model = bert.from_pretrained(
  bert.default_model_path(), task="sequence_classification", num_labels=2, seed=0
)
params = nnx.as_pure(nnx.state(model, nnx.Param))
prunable = bert.prunable(nnx.state(model, nnx.Param))
zeros = jax.tree.map(jnp.zeros_like, params)
for scope in sys.argv[1:] or ["global"]:
  t0 = time.time()
  tx = seven_jax.pruning_mask(
    optax.sgd(0.0),
    "magnitude",
    sparsity=0.6,
    start_step=20,
    pruning_steps=80,
    prunable=prunable,
    scope=scope,
  )
  state = tx.init(params)
  step = jax.jit(tx.update)
  for t in range(100):
    _, state = step(zeros, state, params)
    if t in (40, 50, 60, 99):
      masks = seven_jax.masks(state)
      flat = jax.tree_util.tree_leaves_with_path(masks)
      pooler = [
        np.asarray(m)
        for p, m in flat
        if "pooler" in jax.tree_util.keystr(p) and hasattr(m, "shape") and m.ndim == 2
      ]
      kept = sum(int(np.asarray(m).sum()) for _, m in flat if hasattr(m, "shape") and m.ndim == 2)
      total = sum(int(np.asarray(m).size) for _, m in flat if hasattr(m, "shape") and m.ndim == 2)
      print(
        f"scope={scope} after step {t + 1}: sparsity {1 - kept / total:.4f}, pooler kernel kept {pooler[0].mean():.4f} ({int(pooler[0].sum())} of {pooler[0].size})",
        flush=True,
      )
  print(f"scope={scope}: {time.time() - t0:.0f} s", flush=True)
