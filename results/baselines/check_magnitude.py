"""The engine's ``magnitude`` masks against an independent numpy loop (Zhu & Gupta 2017).

Gradual magnitude pruning: keep the top |W| of the weights still kept, at the
cubic keep ratio ``(1 - s) + s (1 - (p + 1) / N)^3``, masks every
``update_every`` steps (and on the window's last step), pruned weights exactly 0.
On a tiny 2-layer MLP trained by SGD on random data, with a global budget and
with one budget per layer (Zhu & Gupta's form), every mask after every step must
be identical::

    python results/baselines/check_magnitude.py
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import seven_jax

rng = np.random.default_rng(0)
D_IN, D_H, D_OUT, BATCH = 8, 16, 3, 32
PARAMS = {
  "w1": rng.standard_normal((D_IN, D_H)).astype(np.float32) * 0.7,
  "b1": np.zeros(D_H, np.float32),
  "w2": rng.standard_normal((D_H, D_OUT)).astype(np.float32) * 0.3,
}
PRUNABLE = {"w1": True, "b1": False, "w2": True}
KERNELS = ("w1", "w2")
X = rng.standard_normal((40, BATCH, D_IN)).astype(np.float32)
Y = rng.integers(0, D_OUT, (40, BATCH))
SPARSITY, START, N, LR = 0.6, 3, 20, 0.1


def loss(p, x, y):
  logits = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def check(scope: str, update_every: int) -> None:
  tx = seven_jax.pruning_mask(
    optax.sgd(LR),
    "magnitude",
    sparsity=SPARSITY,
    start_step=START,
    pruning_steps=N,
    update_every=update_every,
    prunable=PRUNABLE,
    scope=scope,
  )
  grad, step = jax.jit(jax.grad(loss)), jax.jit(tx.update)
  params = jax.tree.map(jnp.asarray, PARAMS)
  state = tx.init(params)
  expected = {k: np.ones(PARAMS[k].shape, bool) for k in KERNELS}
  groups = [list(KERNELS)] if scope == "global" else [[k] for k in KERNELS]
  for t in range(START + N + 3):
    updates, state = step(grad(params, X[t], Y[t]), state, params)
    params = optax.apply_updates(params, updates)
    magnitude = {k: np.abs(np.asarray(params[k], np.float64)) for k in KERNELS}
    p = t - START
    if 0 <= p < N - 1 and ((p + 1) % update_every == 0 or p == N - 2):
      keep = (1 - SPARSITY) + SPARSITY * (1 - (p + 1) / N) ** 3
      for group in groups:
        flat = np.concatenate([np.where(expected[k], magnitude[k], 0.0).ravel() for k in group])
        threshold = np.sort(flat)[::-1][int(keep * flat.size) - 1]
        for k in group:
          expected[k] &= magnitude[k] >= threshold
    got = seven_jax.masks(state)
    for k in KERNELS:
      np.testing.assert_array_equal(
        np.asarray(got[k]), expected[k], err_msg=f"{scope} step {t} {k}"
      )
      assert np.all(np.asarray(params[k])[~expected[k]] == 0.0)
  per_leaf = {k: round(float(1 - expected[k].mean()), 3) for k in KERNELS}
  print(f"scope={scope} update_every={update_every}: masks identical; sparsity per leaf {per_leaf}")


if __name__ == "__main__":
  for scope in ("global", "per_leaf"):
    for every in (1, 4):
      check(scope, every)
  print("OK")
