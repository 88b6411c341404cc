"""Prune an MLP on sklearn's digits with SEVEN while training; compare with dense.

The quick, fully offline example: 1,797 real 8x8 handwritten digits ship with
scikit-learn. Runs in well under a minute on a laptop CPU::

    python -m experiments.digits --sparsity 0.9

Prints test accuracy and sparsity for the dense model and for SEVEN_dyn at the
requested sparsity (same seed, same data order, same optimizer). Each run keeps
a checkpoint under ``--out`` (``--checkpoint-every N`` for more); ``--resume``
continues both runs exactly where their checkpoints left off.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax.training import train_state

import seven_jax
from experiments import common


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


def _batch_indices(seed: int, step: int, n: int, batch_size: int) -> np.ndarray:
  # A function of (seed, step): a resumed run draws the same batches as a straight one.
  return np.random.default_rng([seed, step]).integers(0, n, batch_size)


def train(
  method: str,
  sparsity: float,
  steps: int,
  batch_size: int,
  lr: float,
  seed: int,
  *,
  out: Optional[str] = None,
  checkpoint_every: int = 0,
  resume: bool = False,
  log_every: int = 100,
):
  """Trains one model; with ``out``, checkpoints under ``out/<run>/checkpoints``.

  ``resume`` continues from the latest checkpoint exactly (a ValueError if
  there is none). A non-finite loss stops the run with
  :class:`experiments.common.TrainingDiverged` (checked every ``log_every``
  steps and before every checkpoint, so no checkpoint holds a diverged state).
  """
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

  run_name = f"digits-{method}-s{sparsity:g}-seed{seed}"
  ckpt = None
  if out is not None:
    ckpt = seven_jax.CheckpointManager(
      pathlib.Path(out) / run_name / "checkpoints",
      max_to_keep=2,
      save_interval_steps=checkpoint_every or 10**9,
    )
  first = 0
  if resume:
    if ckpt is None or ckpt.latest_step() is None:
      raise ValueError(f"resume: no checkpoint of {run_name} under {out}; start without --resume")
    restored = ckpt.restore(jax.eval_shape(lambda: {"state": state}))
    state = restored["state"]
    first = int(state.step)
  start = time.perf_counter()
  losses = []

  def check_finite(upto):
    values = np.asarray(jnp.stack(losses)) if losses else np.zeros(0)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
      at = upto - len(values) + int(bad[0]) + 1
      raise common.TrainingDiverged(
        f"the loss became {values[bad[0]]} at step {at} ({run_name}, lr {lr:g}): stopping; "
        "lower --lr."
      )
    losses.clear()

  loss = jnp.zeros([])
  for t in range(first, steps):
    idx = _batch_indices(seed, t, len(x_tr), batch_size)
    state, loss = step(state, x_tr[idx], y_tr[idx])
    losses.append(loss)
    if (t + 1) % log_every == 0:
      check_finite(t + 1)
    if ckpt is not None and checkpoint_every and (t + 1) % checkpoint_every == 0:
      check_finite(t + 1)
      ckpt.save(t + 1, {"state": state})
  check_finite(steps)
  seconds = time.perf_counter() - start
  if ckpt is not None:
    ckpt.save_now(steps, {"state": state})
    ckpt.wait_until_finished()
    ckpt.close()
  logits = model.apply({"params": state.params}, x_te)
  accuracy = float(jnp.mean(jnp.argmax(logits, -1) == y_te))
  if method == "dense":
    kernels = [state.params["Dense_0"]["kernel"], state.params["Dense_1"]["kernel"]]
    achieved = float(sum(int((k == 0).sum()) for k in kernels) / sum(k.size for k in kernels))
  else:
    achieved = seven_jax.sparsity_report(state.opt_state, prunable=prunable_hidden_kernels).sparsity
  return {
    "method": method,
    "accuracy": accuracy,
    "sparsity": achieved,
    "final_loss": float(loss),
    "seconds": seconds,
    "resumed_from": first if resume else None,
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sparsity", type=float, default=0.9, help="in [0, 1)")
  parser.add_argument("--steps", type=int, default=1000, help=">= 10")
  parser.add_argument("--batch-size", type=int, default=64, help=">= 1")
  parser.add_argument("--lr", type=float, default=1e-3, help="a finite number > 0")
  parser.add_argument("--seed", type=int, default=0, help=">= 0")
  parser.add_argument("--json", type=str, default=None, help="write results here")
  parser.add_argument(
    "--out", default="runs", help="checkpoints go to OUT/digits-<method>-s<sparsity>-seed<seed>"
  )
  parser.add_argument("--checkpoint-every", type=int, default=0, help=">= 0 (0: only at the end)")
  parser.add_argument(
    "--resume",
    action="store_true",
    help="continue both runs from their latest checkpoints (an error if there is none)",
  )
  args = parser.parse_args(argv)
  checks = [
    ("--sparsity", 0.0 <= args.sparsity < 1.0, "must be in [0, 1)", args.sparsity),
    ("--steps", args.steps >= 10, "must be an integer >= 10", args.steps),
    ("--batch-size", args.batch_size >= 1, "must be an integer >= 1", args.batch_size),
    ("--lr", math.isfinite(args.lr) and args.lr > 0, "must be a finite number > 0", args.lr),
    ("--seed", args.seed >= 0, "must be an integer >= 0", args.seed),
    (
      "--checkpoint-every",
      args.checkpoint_every >= 0,
      "must be an integer >= 0",
      args.checkpoint_every,
    ),
  ]
  for name, ok, allowed, value in checks:
    if not ok:
      parser.error(f"argument {name}: {allowed}, got {value!r}")
  methods = ("dense", "seven")
  if args.resume:
    for m in methods:
      directory = pathlib.Path(args.out) / f"digits-{m}-s{args.sparsity:g}-seed{args.seed}"
      if not (directory / "checkpoints").is_dir() or not any(
        p.name.isdigit() for p in (directory / "checkpoints").iterdir()
      ):
        parser.error(f"argument --resume: no checkpoint under {directory / 'checkpoints'}")
  try:
    rows = [
      train(
        m,
        args.sparsity,
        args.steps,
        args.batch_size,
        args.lr,
        args.seed,
        out=args.out,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
      )
      for m in methods
    ]
  except common.TrainingDiverged as e:
    raise SystemExit(f"error: {e}") from None
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
