"""Loop efficiency: ``experiments.common.run`` steps/s over a bare jitted step's.

The experiment loop adds, per step, the batch copy to the devices (overlapped
with the previous step), the bookkeeping of device-side losses (read every
``--log-every`` steps, one period late), the interrupt and checkpoint checks,
and the final drain and checkpoint. The baseline is the loop's own compiled
step, called back to back on the same batches already on the device.

Both are timed after their first call (which compiles): the loop from the
return of its first step to the end of its last (the final drain included; the
checkpoint and evaluation after training are not), the bare step from after a
warm-up call to the last result being ready. Each model is measured
``--repeats`` times, alternating, and the medians are compared. The model is the project's NNX
BERT with random weights (no download), SEVEN_dyn inside its window the whole
time (the freeze would change the step)::

    python -m benchmarks.loop                  # MiniLM and BERT-base shapes
    python -m benchmarks.loop --models tiny    # seconds; what the tests run
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments import common

SHAPES = {
  # name: (layers, hidden, heads, intermediate, vocab, batch, seq)
  "tiny": (2, 32, 2, 64, 128, 8, 16),
  "minilm": (6, 384, 12, 1536, 30522, 32, 64),
  "bert-base": (12, 768, 12, 3072, 30522, 32, 64),
}


class ListBatches:
  """The same list of batches in a loop, with the iterator protocol of the data loaders."""

  def __init__(self, batches):
    self.batches, self.index = batches, 0

  def state(self):
    return {"epoch": 0, "index": self.index}

  def restore(self, state):
    self.index = int(state["index"])

  def __iter__(self):
    return self

  def __next__(self):
    batch = self.batches[self.index % len(self.batches)]
    self.index += 1
    return dict(batch)


def make_task(name: str, num_batches: int = 4, dropout: float = 0.1) -> common.Task:
  from seven_jax.models import bert

  layers, hidden, heads, inter, vocab, batch, seq = SHAPES[name]
  cfg = bert.BertConfig(
    vocab_size=vocab,
    hidden_size=hidden,
    num_hidden_layers=layers,
    num_attention_heads=heads,
    intermediate_size=inter,
    num_labels=2,
    hidden_dropout_prob=dropout,
    attention_probs_dropout_prob=dropout,
  )
  model = bert.BertForSequenceClassification(cfg, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  batches = [
    {
      "input_ids": rng.integers(0, vocab, (batch, seq)).astype(np.int32),
      "attention_mask": np.ones((batch, seq), np.int32),
      "token_type_ids": np.zeros((batch, seq), np.int32),
      "labels": rng.integers(0, 2, (batch,)).astype(np.int32),
    }
    for _ in range(num_batches)
  ]

  def loss_fn(model, batch):
    logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    return bert.sequence_classification_loss(logits, batch["labels"])

  def predict_fn(model, batch):
    logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    return jnp.argmax(logits, -1)

  return common.Task(
    model=model,
    prunable=bert.prunable(nnx.state(model, nnx.Param)),
    train_batches=ListBatches(batches),
    eval_batches=lambda: iter(batches[:1]),
    loss_fn=loss_fn,
    predict_fn=predict_fn,
    metric_names=("accuracy",),
  )


def _config(steps: int, out: str, log_every: int) -> common.ExperimentConfig:
  return common.ExperimentConfig(
    task="rotten_tomatoes",
    method="seven",
    sparsity=0.5,
    start_step=0,
    pruning_steps=steps + 1,  # the window lasts the whole run
    steps=steps,
    log_every=log_every,
    out=out,
  )


def loop_seconds(name: str, steps: int, log_every: int) -> float:
  """Seconds of ``steps`` loop steps after the first (compiling) one."""
  with tempfile.TemporaryDirectory() as out:
    result = common.run(_config(steps + 1, out, log_every), make_task(name))
  return steps / result["steady_steps_per_second"]


def bare_step_seconds(name: str, steps: int, log_every: int) -> float:
  """``steps`` calls of the loop's compiled step on device-resident batches."""
  task = make_task(name)
  cfg = _config(2 * steps, "/nonexistent", log_every)
  graphdef, params, rest = nnx.split(task.model, nnx.Param, ...)
  tx = common.make_optimizer(cfg, task.prunable)
  opt_state = tx.init(params)
  num = int(sum(np.size(p) for p in jax.tree.leaves(params)))
  stepper = common._Stepper(graphdef, task.loss_fn, tx, None, num)
  batches = [common.shard_batch(b, None) for b in task.train_batches.batches]
  params, rest, opt_state, loss = stepper.step(params, rest, opt_state, batches[0])  # compile
  jax.block_until_ready(loss)
  start = time.perf_counter()
  for i in range(steps):
    params, rest, opt_state, loss = stepper.step(params, rest, opt_state, batches[i % len(batches)])
  jax.block_until_ready((params, opt_state, loss))
  return time.perf_counter() - start


def measure(name: str, steps: int, log_every: int, repeats: int) -> dict:
  bare, loop = [], []
  for _ in range(repeats):  # alternating, so a change of load hits both
    bare.append(bare_step_seconds(name, steps, log_every))
    loop.append(loop_seconds(name, steps, log_every))
  bare, loop = float(np.median(bare)), float(np.median(loop))
  return {
    "model": name,
    "steps": steps,
    "repeats": repeats,
    "log_every": log_every,
    "bare_steps_per_s": steps / bare,
    "loop_steps_per_s": steps / loop,
    "ratio": bare / loop,
    "load_1min": os.getloadavg()[0],
    "backend": jax.default_backend(),
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="minilm,bert-base", help=f"of {', '.join(SHAPES)}")
  parser.add_argument("--steps", type=int, default=0, help="0: 200 tiny, 20 minilm, 10 bert-base")
  parser.add_argument("--log-every", type=int, default=50)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", default=None, help="write the rows as JSON here")
  args = parser.parse_args(argv)
  names = [n.strip() for n in args.models.split(",")]
  for name in names:
    if name not in SHAPES:
      parser.error(f"argument --models: unknown {name!r}; valid: {', '.join(SHAPES)}")
  if args.steps < 0:
    parser.error(f"argument --steps: must be an integer >= 0, got {args.steps}")
  if args.log_every < 1:
    parser.error(f"argument --log-every: must be an integer >= 1, got {args.log_every}")
  if args.repeats < 1:
    parser.error(f"argument --repeats: must be an integer >= 1, got {args.repeats}")
  if args.out:
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  default_steps = {"tiny": 200, "minilm": 20, "bert-base": 10}
  rows = [measure(n, args.steps or default_steps[n], args.log_every, args.repeats) for n in names]
  print("| model | steps | bare step/s | loop step/s | loop / bare | load (1 min) |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    print(
      f"| {r['model']} | {r['steps']} | {r['bare_steps_per_s']:.3f} | "
      f"{r['loop_steps_per_s']:.3f} | {r['ratio']:.3f} | {r['load_1min']:.1f} |"
    )
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(rows, indent=2))
  return rows


if __name__ == "__main__":
  main()
