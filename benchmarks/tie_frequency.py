"""How often the k-th score is tied during training: SEVEN's in-window steps
on a fresh random batch each (random-weight BERT, params updated), counting
the steps whose threshold reports more than ``k`` scores ``>= tau`` (then
``ties="exact"`` runs its tie break, :func:`seven_jax.selection.exact_topk_cut`).

    python -m benchmarks.tie_frequency minilm [STEPS]      # from the repository root
    python -m benchmarks.tie_frequency bert-base [STEPS]

The update-alone benchmarks (``window_update``, ``selection_update``) feed
one fixed gradient to fixed params, whose accumulated scores tie more often
than training's; this is the training rate. ``STEPS`` defaults to 40.
"""

import os
import sys
import time

os.environ["HF_HUB_OFFLINE"] = "1"
import jax
import jax.numpy as jnp
import numpy as np
import optax

import seven_jax
from benchmarks import bert as B
from seven_jax import selection

name = sys.argv[1] if len(sys.argv) > 1 else "minilm"
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 40

model, batch = B.make_model(name)
prunable = B.bert_prunable(model.params)
seen, threshold_stats = [], selection.threshold_stats


def spy(leaves, k, **kw):
  st = threshold_stats(leaves, k, **kw)
  jax.debug.callback(lambda kept, k: seen.append(int(kept) - int(k)), st.kept, k)
  return st


selection.threshold_stats = spy
tx = seven_jax.seven_mask(
  optax.adamw(2e-5), sparsity=0.6, start_step=0, pruning_steps=200, prunable=prunable
)
step = B._make_step(model, tx)
params, state = model.params, tx.init(model.params)
rng = np.random.default_rng(1)
size, length = batch["input_ids"].shape
t0 = time.perf_counter()
for _ in range(steps):
  fresh = dict(
    batch,
    input_ids=jnp.asarray(rng.integers(0, model.config.vocab_size, (size, length)), jnp.int32),
    labels=jnp.asarray(rng.integers(0, 2, (size,)), jnp.int32),
  )
  params, state, _ = step(params, state, fresh)
jax.block_until_ready(params)
tied = [x for x in seen if x > 0]
print(
  f"{name}: {len(seen)} in-window steps, {len(tied)} with the k-th score tied "
  f"(scores >= tau beyond k: {tied}); {time.perf_counter() - t0:.0f} s"
)
