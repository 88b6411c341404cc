"""Loop efficiency: ``experiments.common.run`` steps/s over a bare jitted step's.

The experiment loop adds, per step, the batch copy to the devices (overlapped
with the previous step), the bookkeeping of device-side losses (read every
``--log-every`` steps, one period late), the interrupt and checkpoint checks,
and the final drain. The baseline ("bare") is the loop's own compiled step
(:class:`experiments.common._Stepper`, the same configuration, hence the same
XLA program), called back to back on the same batches already on the device.

How it is timed, so that a loaded machine disturbs both alike:

* **Segments, interleaved.** One *round* is one bare segment and one loop
  segment of ``--steps`` timed steps each; rounds alternate the order
  (bare-loop, loop-bare, ...). The ratio of a round is
  ``bare seconds / loop seconds``; the result is the median over
  ``--rounds`` rounds, with the median steps/s of each side.
* **The same work.** Every segment starts from the same initial parameters,
  a fresh optimizer state and batch 0, and runs ``steps + 1`` steps, of
  which the first is not timed (the loop's first step is its compilation
  point). So both sides compute exactly the same steps, pruning schedule
  included; ``same_result`` reports whether the final parameters of the
  last loop and bare segments are bitwise equal (they are on CPU).
* **Compilation outside.** A warm-up compiles everything once (the step,
  the loop's on-device sparsity, the loss stacks of every period length,
  the evaluation); XLA's persistent cache (a temporary folder) then serves
  the step to the new ``jax.jit`` every ``run`` builds. A loop segment is
  timed from the end of its first step to the end of its last (the final
  drain included; its checkpoint and evaluation after training are not);
  a bare segment the same way: from the end of its first step (``run``
  waits for it once, dispatch being asynchronous) to its last result being
  ready.

The model is the project's NNX BERT (:mod:`seven_jax.models.bert`) with random
weights (no download), dropout on, SEVEN_dyn inside its window the whole time
(a global mask every step; the freeze would change the step)::

    python -m benchmarks.loop                       # MiniLM and BERT-base shapes
    python -m benchmarks.loop --models tiny --steps 20 --rounds 1   # what the tests run

If a loop segment is interrupted (SIGTERM/SIGINT, e.g. from ``timeout``) the
loop saves a checkpoint and returns early; the benchmark then stops with
:class:`LoopInterrupted` instead of reporting a partial run.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
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
  # all-MiniLM-L6-v2 at the main job's batch (experiments.text: 32 x 64).
  "minilm": (6, 384, 12, 1536, 30522, 32, 64),
  # BERT-base; a smaller batch than MiniLM's keeps the run short on a CPU and
  # makes the test stricter (less compute per step to hide the loop's costs).
  "bert-base": (12, 768, 12, 3072, 30522, 8, 64),
}
# Whether common.run waits for its first step before its steady clock starts
# (it does: the clock starts when step 1 has finished, not when its call returns).
# The bare side mirrors it; with a mismatch the ratio is off by up to one step.
FIRST_STEP_BLOCKS = True
DEFAULT_STEPS = {"tiny": 50, "minilm": 8, "bert-base": 3}


class LoopInterrupted(RuntimeError):
  """A loop segment stopped early (a signal reached the loop's interrupt guard)."""


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


def _config(steps: int, out: str, log_every: int, stop_after: int = 0) -> common.ExperimentConfig:
  return common.ExperimentConfig(
    task="rotten_tomatoes",
    method="seven",
    sparsity=0.5,
    start_step=0,
    # The window ends after the last step (window_end = steps + 1): the loop
    # never switches to the frozen step, whose cost differs.
    pruning_steps=steps + 2,
    steps=steps,
    log_every=log_every,
    stop_after=stop_after,
    out=out,
  )


def _copy(tree):
  """Fresh buffers (the steps donate theirs), PRNG keys included."""
  return jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, tree)


def period_lengths(steps: int, log_every: int) -> set:
  """Lengths of the loss stacks the loop builds in a run of ``steps`` steps."""
  lengths, last = set(), 0
  for s in range(1, steps + 1):
    if s % log_every == 0 or s == steps:
      lengths.add(s - last)
      last = s
  return lengths


def load_average() -> list:
  return [round(x, 2) for x in os.getloadavg()]


class LoopBench:
  """Bare and loop segments of ``steps`` timed steps on one model shape."""

  def __init__(self, name: str, steps: int, log_every: int):
    if name not in SHAPES:
      raise ValueError(f"name: unknown model shape {name!r}; valid: {', '.join(SHAPES)}")
    if steps < 1:
      raise ValueError(f"steps: must be an integer >= 1, got {steps}")
    if log_every < 1:
      raise ValueError(f"log_every: must be an integer >= 1, got {log_every}")
    self.name, self.steps, self.log_every = name, steps, log_every
    self.task = make_task(name)
    self.task.model.train()  # as run() does: dropout is part of the compiled step
    graphdef, params, rest = nnx.split(self.task.model, nnx.Param, ...)
    self.initial = (_copy(params), _copy(rest))  # never donated: every segment starts here
    self.num_params = int(sum(np.size(p) for p in jax.tree.leaves(params)))
    cfg = self.config("/nonexistent")
    self.tx = common.make_optimizer(cfg, self.task.prunable)
    self.stepper = common._Stepper(graphdef, self.task.loss_fn, self.tx, None, self.num_params)
    self.device_batches = [common.shard_batch(b, None) for b in self.task.train_batches.batches]
    self.last_params = {}

  def config(self, out: str, stop_after: int = 0) -> common.ExperimentConfig:
    return _config(self.steps + 1, out, self.log_every, stop_after)

  def _bare_first(self, block: bool = True):
    params, rest = _copy(self.initial)
    opt_state = self.tx.init(params)
    jax.block_until_ready((params, rest, opt_state))
    params, rest, opt_state, loss = self.stepper.step(
      params, rest, opt_state, self.device_batches[0]
    )
    if block or FIRST_STEP_BLOCKS:
      jax.block_until_ready((params, rest, opt_state, loss))
    return params, rest, opt_state

  def bare(self) -> float:
    """Seconds of ``steps`` bare steps after an untimed first step.

    The clock starts as ``run``'s does (:data:`FIRST_STEP_BLOCKS`): when the
    first step has finished, so both windows hold exactly ``steps`` step
    executions (dispatch is asynchronous, also on CPU, for a step this size).
    """
    params, rest, opt_state = self._bare_first(block=False)
    batches = self.device_batches
    start = time.perf_counter()
    for i in range(1, self.steps + 1):
      params, rest, opt_state, loss = self.stepper.step(
        params, rest, opt_state, batches[i % len(batches)]
      )
    jax.block_until_ready((params, rest, opt_state, loss))
    seconds = time.perf_counter() - start
    self.last_params["bare"] = params
    return seconds

  def loop(self, stop_after: int = 0) -> float:
    """Seconds of the loop's ``steps`` steps after its first (``run``'s steady window)."""
    params, rest = _copy(self.initial)
    nnx.update(self.task.model, params, rest)
    self.task.train_batches.index = 0
    with tempfile.TemporaryDirectory(prefix="loop-bench-") as out:
      result = common.run(self.config(out, stop_after), self.task)
    if result.get("interrupted"):
      raise LoopInterrupted(
        f"the loop segment of {self.name} was interrupted at step {result['steps']} of "
        f"{self.steps + 1} (SIGTERM or SIGINT reached its interrupt guard, e.g. from `timeout`): "
        "no measurement; rerun with a longer time limit."
      )
    self.last_params["loop"] = nnx.state(self.task.model, nnx.Param)
    if stop_after:
      return float("nan")
    rate = result.get("steady_steps_per_second")
    if rate is None or result["steps"] != self.steps + 1:
      raise RuntimeError(
        f"the loop segment of {self.name} ran {result['steps']} of {self.steps + 1} steps and "
        f"reported steady_steps_per_second={rate}: no measurement."
      )
    return self.steps / rate

  def warm_up(self) -> dict:
    """Compiles every program the timed segments run; returns the seconds of each part."""
    out = {}
    t = time.perf_counter()
    self.loop(stop_after=min(2, self.steps))  # step, sparsity, evaluation, checkpoint
    out["loop_compile_s"] = time.perf_counter() - t
    t = time.perf_counter()
    self._bare_first()  # served by the persistent cache: the same program
    out["bare_first_step_s"] = time.perf_counter() - t
    t = time.perf_counter()
    loss = jnp.float32(0.0) + 0  # a device scalar, as the step's loss
    for n in sorted(period_lengths(self.steps + 1, self.log_every)):
      jax.block_until_ready(jnp.stack([loss] * n))
    out["stacks_s"] = time.perf_counter() - t
    return out

  def same_result(self) -> bool:
    bare, loop = self.last_params.get("bare"), self.last_params.get("loop")
    if bare is None or loop is None:
      return False
    a, b = jax.tree.leaves(bare), jax.tree.leaves(loop)
    return len(a) == len(b) and all(
      np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b)
    )


def measure(name: str, steps: int, log_every: int = 0, repeats: int = 3, *, cache_dir=None) -> dict:
  """Median loop/bare ratio over ``repeats`` interleaved rounds of ``steps`` timed steps.

  ``log_every`` 0: ``steps // 2`` (at least 1), so that every loop segment
  closes periods on the step path, not only its final drain.
  """
  if repeats < 1:
    raise ValueError(f"repeats: must be an integer >= 1, got {repeats}")
  log_every = log_every or max(1, steps // 2)
  from jax.experimental.compilation_cache import compilation_cache

  names = (
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
  )
  previous = {k: getattr(jax.config, k) for k in names}
  with tempfile.TemporaryDirectory(prefix="loop-bench-cache-") as tmp:
    # Every run() builds a new jax.jit of the same step: the persistent cache
    # turns its compilation into a load. A cache the user configured is kept.
    cache = str(cache_dir or previous[names[0]] or tmp)
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    compilation_cache.reset_cache()  # re-read the settings even if jax compiled before
    try:
      return _measure(name, steps, log_every, repeats, cache if cache == tmp else None)
    finally:
      for k, v in previous.items():
        jax.config.update(k, v)
      compilation_cache.reset_cache()


def _measure(name, steps, log_every, repeats, own_cache=None) -> dict:
  t0 = time.perf_counter()
  load_start = load_average()
  bench = LoopBench(name, steps, log_every)
  warm = bench.warm_up()
  if own_cache is not None:
    # One entry: run()'s step and the bare stepper are the same XLA program.
    warm["step_programs"] = sum(f.startswith("jit_step-") for f in os.listdir(own_cache))
  segments = []
  for r in range(repeats):
    order = ("bare", "loop") if r % 2 == 0 else ("loop", "bare")
    for kind in order:
      load = os.getloadavg()[0]
      seconds = bench.bare() if kind == "bare" else bench.loop()
      segments.append({"round": r, "kind": kind, "seconds": seconds, "load_1min": round(load, 2)})
  by = {k: [s["seconds"] for s in segments if s["kind"] == k] for k in ("bare", "loop")}
  ratios = [b / l for b, l in zip(by["bare"], by["loop"])]
  layers, hidden, _, _, _, batch, seq = SHAPES[name]
  return {
    "model": name,
    "layers": layers,
    "hidden": hidden,
    "batch": batch,
    "seq": seq,
    "params": bench.num_params,
    "steps": steps,  # timed steps per segment
    "timed_steps_per_side": steps * repeats,
    "repeats": repeats,  # rounds
    "log_every": log_every,
    "bare_steps_per_s": steps / statistics.median(by["bare"]),
    "loop_steps_per_s": steps / statistics.median(by["loop"]),
    "ratio": statistics.median(ratios),
    "ratio_min": min(ratios),
    "ratio_max": max(ratios),
    "ratios": ratios,
    "same_result": bench.same_result(),
    "segments": segments,
    "warm_up": warm,
    "load_1min": statistics.median(s["load_1min"] for s in segments),
    "load_avg_start": load_start,
    "load_avg_end": load_average(),
    "cpu_count": os.cpu_count(),
    "backend": jax.default_backend(),
    "seconds": time.perf_counter() - t0,
  }


def markdown(rows: list) -> str:
  lines = [
    (
      "| model | params | batch x seq | rounds x steps | bare step/s | loop step/s "
      "| loop / bare (median; min-max) | same result | load 1 min (start, median, end) "
      "| seconds |"
    ),
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
      f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['batch']} x {r['seq']} "
      f"| {r['repeats']} x {r['steps']} | {r['bare_steps_per_s']:.3f} "
      f"| {r['loop_steps_per_s']:.3f} | {r['ratio']:.3f} ({r['ratio_min']:.3f}-{r['ratio_max']:.3f}) "
      f"| {r['same_result']} | {r['load_avg_start'][0]:.1f}, {r['load_1min']:.1f}, "
      f"{r['load_avg_end'][0]:.1f} | {r['seconds']:.0f} |"
    )
  backend = rows[0]["backend"] if rows else jax.default_backend()
  lines += [
    "",
    (
      f"Backend {backend}, {os.cpu_count()} CPUs. Each round: one bare and one loop segment "
      "(order alternating), the same steps from the same start; ratio = bare seconds / loop "
      "seconds, median over rounds; compilation excluded (warm-up)."
    ),
  ]
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="minilm,bert-base", help=f"of {', '.join(SHAPES)}")
  defaults = ", ".join(f"{k} {v}" for k, v in DEFAULT_STEPS.items())
  parser.add_argument(
    "--steps", type=int, default=0, help=f"timed steps per segment; 0: {defaults}"
  )
  parser.add_argument("--log-every", type=int, default=0, help="0: steps // 2 (at least 1)")
  parser.add_argument("--rounds", "--repeats", dest="rounds", type=int, default=3)
  parser.add_argument("--out", default=None, help="write the rows as JSON here")
  parser.add_argument("--markdown", default=None, help="write the table as markdown here")
  args = parser.parse_args(argv)
  names = [n.strip() for n in args.models.split(",") if n.strip()]
  if not names:
    parser.error(f"argument --models: give at least one of {', '.join(SHAPES)}")
  for name in names:
    if name not in SHAPES:
      parser.error(f"argument --models: unknown {name!r}; valid: {', '.join(SHAPES)}")
  if args.steps < 0:
    parser.error(f"argument --steps: must be an integer >= 0, got {args.steps}")
  if args.log_every < 0:
    parser.error(f"argument --log-every: must be an integer >= 0, got {args.log_every}")
  if args.rounds < 1:
    parser.error(f"argument --rounds: must be an integer >= 1, got {args.rounds}")
  for flag, path in (("--out", args.out), ("--markdown", args.markdown)):
    if path and not pathlib.Path(path).resolve().parent.is_dir():
      parser.error(f"argument {flag}: folder {pathlib.Path(path).parent} does not exist")
  rows = []
  try:
    for name in names:
      rows.append(measure(name, args.steps or DEFAULT_STEPS[name], args.log_every, args.rounds))
      print(f"[loop] {name}: ratio {rows[-1]['ratio']:.3f}", flush=True)
  except LoopInterrupted as err:
    parser.exit(1, f"benchmarks.loop: {err}\n")
  table = markdown(rows)
  print(table)
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(rows, indent=2))
  if args.markdown:
    pathlib.Path(args.markdown).write_text(table + "\n")
  return rows


if __name__ == "__main__":
  main()
