"""Prune an MLP on sklearn's digits with SEVEN while training; compare with dense.

The quick, fully offline example: 1,797 real 8x8 handwritten digits ship with
scikit-learn. Runs in well under a minute on a laptop CPU::

    python -m experiments.digits --sparsity 0.9

Prints test accuracy and sparsity for the dense model and for SEVEN_dyn at the
requested sparsity (same seed, same data order, same optimizer).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax.training import train_state

import seven_jax


class MLP(nn.Module):
  hidden: int = 256

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(self.hidden)(x))
    x = nn.relu(nn.Dense(self.hidden)(x))
    return nn.Dense(10)(x)


def load_digits_splits(seed: int = 0):
  """Fixed 70/30 split of sklearn's digits (pixels scaled to [0, 1])."""
  try:
    from sklearn.datasets import load_digits
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise SystemExit("This example needs scikit-learn: pip install scikit-learn==1.9.1") from e
  data = load_digits()
  x = (data.data / 16.0).astype(np.float32)
  y = data.target.astype(np.int32)
  order = np.random.default_rng(seed).permutation(len(x))
  cut = int(0.7 * len(x))
  return (x[order[:cut]], y[order[:cut]]), (x[order[cut:]], y[order[cut:]])


def prunable_hidden_kernels(params):
  """Prune the hidden Dense kernels; keep biases and the output layer dense."""
  return jax.tree_util.tree_map_with_path(
    lambda path, _: path[-1].key == "kernel" and path[-2].key != "Dense_2", params
  )


def train(method: str, sparsity: float, steps: int, batch_size: int, lr: float, seed: int):
  (x_tr, y_tr), (x_te, y_te) = load_digits_splits()
  model = MLP()
  params = model.init(jax.random.PRNGKey(seed), x_tr[:1])["params"]
  inner = optax.adamw(lr, weight_decay=1e-4)
  if method == "dense":
    tx = inner
  else:
    # Dense warm-up for 20% of training, prune over the next 50%.
    tx = seven_jax.seven_mask(
      inner,
      sparsity=sparsity,
      start_step=steps // 5,
      pruning_steps=steps // 2,
      prunable=prunable_hidden_kernels,
    )
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

  @jax.jit
  def step(state, xb, yb):
    def loss_fn(p):
      logits = state.apply_fn({"params": p}, xb)
      return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss

  rng = np.random.default_rng(seed)
  start = time.perf_counter()
  for _ in range(steps):
    idx = rng.integers(0, len(x_tr), batch_size)
    state, loss = step(state, x_tr[idx], y_tr[idx])
  loss.block_until_ready()
  seconds = time.perf_counter() - start
  logits = model.apply({"params": state.params}, x_te)
  accuracy = float(jnp.mean(jnp.argmax(logits, -1) == y_te))
  if method == "dense":
    kernels = [state.params["Dense_0"]["kernel"], state.params["Dense_1"]["kernel"]]
    achieved = float(sum(int((k == 0).sum()) for k in kernels) / sum(k.size for k in kernels))
  else:
    achieved = seven_jax.sparsity_report(state.opt_state).sparsity
  return {
    "method": method,
    "accuracy": accuracy,
    "sparsity": achieved,
    "final_loss": float(loss),
    "seconds": seconds,
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sparsity", type=float, default=0.9)
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--lr", type=float, default=1e-3)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--json", type=str, default=None, help="write results here")
  args = parser.parse_args(argv)
  if not 0.0 <= args.sparsity < 1.0:
    parser.error(f"--sparsity must be in [0, 1), got {args.sparsity}")
  if args.steps < 10:
    parser.error(f"--steps must be >= 10, got {args.steps}")
  rows = [
    train(m, args.sparsity, args.steps, args.batch_size, args.lr, args.seed)
    for m in ("dense", "seven")
  ]
  print("| method | test accuracy | sparsity (hidden kernels) | train time |")
  print("|---|---|---|---|")
  for r in rows:
    print(f"| {r['method']} | {r['accuracy']:.4f} | {r['sparsity']:.2%} | {r['seconds']:.1f} s |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"args": vars(args), "results": rows}, f, indent=2)
  return rows


if __name__ == "__main__":
  main()
