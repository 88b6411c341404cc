"""The machinery every experiment module shares: one config, the optimizer for a
method name, a resumable training loop with logs, plots, checkpoints and
data parallelism over the visible devices.

A task module (``experiments.text``, ``experiments.glue``, ``experiments.vision``)
only says how to build the model, the batches and the predictions; this module
does the rest identically for every method, so that methods are compared fairly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import re
import sys
import time
from typing import Any, Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

import seven_jax
from seven_jax import metrics as sj_metrics

DENSE = "dense"


@dataclasses.dataclass
class ExperimentConfig:
  """Everything a run depends on; printed at start and saved beside the results."""

  task: str = "rotten_tomatoes"
  method: str = "seven"
  model: Optional[str] = None  # checkpoint directory; None = the task's default
  sparsity: float = 0.6
  start_step: int = 20  # t_i: dense steps before pruning starts
  pruning_steps: int = 80  # N: cubic ramp length
  b1: float = 0.8
  b2: float = 0.9
  update_every: int = 1
  lr: float = 5e-5
  weight_decay: float = 0.0
  batch_size: int = 32
  max_len: int = 32
  steps: int = 120
  eval_every: int = 0  # 0: only at the end
  eval_examples: int = 0  # 0: the whole evaluation split
  eval_split: str = "test"
  seed: int = 0
  out: str = "runs"
  checkpoint_every: int = 0  # 0: only on interrupt and at the end
  resume: bool = False
  prune_before_steps: int = 16  # batches scored by pre-pruning methods

  @property
  def run_name(self) -> str:
    name = f"{self.task}-{self.method}-s{self.sparsity:g}-seed{self.seed}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


@dataclasses.dataclass
class EpochConfig(ExperimentConfig):
  """A config whose length can be given in epochs of the training set.

  The official presets count training in epochs (10 at batch 32) and evaluate
  once per epoch; the step counts depend on the size of the training split,
  which is only known once the data is there. :func:`resolve_epochs` turns
  ``epochs`` into ``steps`` (and ``eval_every=-1`` into one epoch) unless the
  command line gave ``--steps`` / ``--eval-every`` explicitly.
  """

  epochs: float = 0.0  # > 0: steps = ceil(epochs * steps per epoch)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Optimizer steps in one epoch, counted as the official loader does (no drop_last)."""
  return max(1, math.ceil(num_examples / batch_size))


def resolve_epochs(cfg: EpochConfig, num_train: int, *, explicit=()) -> EpochConfig:
  """``cfg`` with ``steps`` and ``eval_every`` derived from ``epochs``.

  Args:
    cfg: the merged config (preset + flags).
    num_train: examples (or SQuAD features) in the training split.
    explicit: names of fields the user set on the command line; those are
      never replaced (flags always win over presets and derived values).
  """
  per_epoch = steps_per_epoch(num_train, cfg.batch_size)
  changes = {}
  if cfg.epochs > 0 and "steps" not in explicit:
    changes["steps"] = max(1, math.ceil(cfg.epochs * per_epoch))
  if cfg.eval_every < 0 and "eval_every" not in explicit:
    changes["eval_every"] = per_epoch  # -1 in a preset: evaluate once per epoch
  return dataclasses.replace(cfg, **changes)


def available_methods() -> tuple[str, ...]:
  """``dense`` plus every method the library registers."""
  names = list(seven_jax.methods()) if hasattr(seven_jax, "methods") else ["seven"]
  return tuple([DENSE] + sorted(set(names) | {"seven"}))


def check_method(method: str) -> None:
  valid = available_methods()
  if method not in valid:
    raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(valid)}")


def make_optimizer(
  cfg: ExperimentConfig, prunable, *, params=None, prepruning: Optional[Callable[[], Any]] = None
):
  """The optax transformation for ``cfg.method`` around AdamW.

  Dynamic methods prune while fine-tuning with the cubic schedule
  (``start_step``, ``pruning_steps``); pre-pruning methods compute masks first
  (``prepruning()`` returns them) and fine-tune with the mask frozen.
  """
  check_method(cfg.method)
  inner = optax.adamw(cfg.lr, weight_decay=cfg.weight_decay)
  if cfg.method == DENSE:
    return inner
  if cfg.method == "seven":
    return seven_jax.seven_mask(
      inner,
      sparsity=cfg.sparsity,
      start_step=cfg.start_step,
      pruning_steps=cfg.pruning_steps,
      b1=cfg.b1,
      b2=cfg.b2,
      update_every=cfg.update_every,
      prunable=prunable,
    )
  kind = seven_jax.method_kind(cfg.method) if hasattr(seven_jax, "method_kind") else "dynamic"
  if kind == "pre":
    if prepruning is None:
      raise ValueError(f"method {cfg.method!r} prunes before fine-tuning and needs batches")
    return seven_jax.fixed_mask(inner, prepruning())
  return seven_jax.pruning_mask(
    inner,
    method=cfg.method,
    sparsity=cfg.sparsity,
    start_step=cfg.start_step,
    pruning_steps=cfg.pruning_steps,
    update_every=cfg.update_every,
    prunable=prunable,
  )


# ---------------------------------------------------------------- devices ----


def data_mesh() -> Optional[jax.sharding.Mesh]:
  """A 1-D mesh over every visible device (``None`` with a single device).

  Multi-host (a TPU pod slice, a GPU cluster): call
  ``jax.distributed.initialize()`` first; ``jax.devices()`` then lists every
  host's devices and the same code shards the global batch across them.
  """
  if jax.device_count() == 1:
    return None
  # Auto axes: XLA propagates shardings (replicated params, batch-sharded data
  # and the gradient all-reduce) without annotations inside the models.
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def shard_batch(batch: dict, mesh) -> dict:
  """Splits the batch dimension over the mesh (replicated with no mesh)."""
  arrays = {k: jnp.asarray(v) for k, v in batch.items()}
  if mesh is None:
    return arrays
  return {k: jax.device_put(v, NamedSharding(mesh, P("data"))) for k, v in arrays.items()}


def replicate(tree, mesh):
  if mesh is None:
    return tree
  return jax.device_put(tree, NamedSharding(mesh, P()))


# ---------------------------------------------------------------- logging ----


class RunLog:
  """results.json, a JSONL log, TensorBoard scalars and PNG plots of one run."""

  def __init__(self, out_dir: pathlib.Path, cfg: ExperimentConfig, *, resume: bool):
    self.dir = out_dir
    self.dir.mkdir(parents=True, exist_ok=True)
    (self.dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    self.jsonl = open(self.dir / "log.jsonl", "a" if resume else "w")
    self.records: list[dict] = []
    if resume and (self.dir / "log.jsonl").exists():
      self.records = [
        json.loads(line)
        for line in (self.dir / "log.jsonl").read_text().splitlines()
        if line.strip()
      ]
    try:
      from tensorboardX import SummaryWriter

      self.tb = SummaryWriter(str(self.dir / "tensorboard"))
    except ImportError:  # optional: pip install tensorboardX
      self.tb = None

  def log(self, step: int, **scalars):
    record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    self.records.append(record)
    self.jsonl.write(json.dumps(record) + "\n")
    self.jsonl.flush()
    if self.tb is not None:
      for k, v in scalars.items():
        self.tb.add_scalar(k, float(v), int(step))

  def series(self, key: str):
    pts = [(r["step"], r[key]) for r in self.records if key in r]
    return [p[0] for p in pts], [p[1] for p in pts]

  def plot(self, metric_keys):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["loss", "sparsity"] + [k for k in metric_keys if self.series(k)[0]]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2))
    for ax, key in zip(np.atleast_1d(axes), keys):
      x, y = self.series(key)
      ax.plot(x, y, marker="o" if len(x) < 30 else None)
      ax.set_xlabel("step")
      ax.set_title(key)
      ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(self.dir / "curves.png", dpi=100)
    plt.close(fig)

  def close(self):
    self.jsonl.close()
    if self.tb is not None:
      self.tb.close()


def _progress(total: int, initial: int, name: str):
  try:
    from tqdm import tqdm
  except ImportError:  # pragma: no cover
    return None
  return tqdm(total=total, initial=initial, desc=name, file=sys.stderr, dynamic_ncols=True)


# ------------------------------------------------------------------- loop ----


@dataclasses.dataclass
class Task:
  """What a task module provides to :func:`run`."""

  model: nnx.Module
  prunable: Any  # bool pytree over nnx.Param state
  train_batches: Any  # iterator with state()/restore()
  eval_batches: Callable[[], Iterator[dict]]  # fresh iterator over the eval split
  loss_fn: Callable[[nnx.Module, dict], jax.Array]
  predict_fn: Callable[[nnx.Module, dict], jax.Array]
  metric_names: tuple
  label_key: str = "labels"
  prepruning: Optional[Callable[[], Any]] = None
  # Non-classification evaluation (SQuAD span decoding, several dev splits):
  # ``evaluate(model, mesh) -> {metric: value}``, called with the model in eval
  # mode. None: predictions of ``eval_batches`` scored with ``metric_names``.
  evaluate: Optional[Callable[[nnx.Module, Any], dict]] = None


def current_sparsity(optimizer, prunable=None) -> float:
  """Sparsity over the prunable leaves (0 for a dense optimizer)."""
  try:
    return seven_jax.sparsity_report(optimizer.opt_state, prunable=prunable).sparsity
  except ValueError:
    return 0.0


def evaluate(task: Task, mesh) -> dict:
  """Metrics of ``task.model`` on the evaluation data (dropout off meanwhile)."""
  task.model.eval()
  try:
    if task.evaluate is not None:
      return dict(task.evaluate(task.model, mesh))
    return classification_metrics(
      task.model,
      task.eval_batches(),
      task.predict_fn,
      task.metric_names,
      mesh,
      label_key=task.label_key,
    )
  finally:
    task.model.train()


def classification_metrics(
  model, batches, predict_fn, metric_names, mesh, *, label_key: str = "labels"
) -> dict:
  """Scores ``predict_fn`` over ``batches``; padding rows (``example_mask``) are left out."""
  predictions, labels = [], []
  for batch in batches:
    valid = np.asarray(batch.pop("example_mask", np.ones(len(batch[label_key]), bool)), bool)
    pred = np.asarray(predict(model, batch, predict_fn, mesh))
    predictions.append(pred[valid])
    labels.append(np.asarray(batch[label_key])[valid])
  return sj_metrics.compute_metrics(
    metric_names, np.concatenate(predictions), np.concatenate(labels)
  )


def predict(model, batch: dict, predict_fn, mesh):
  """``predict_fn(model, batch)`` compiled, with the batch sharded over the mesh."""
  return _predict(model, shard_batch(batch, mesh), predict_fn)


@nnx.jit(static_argnums=(2,))
def _predict(model, batch, predict_fn):
  return predict_fn(model, batch)


@nnx.jit(static_argnums=(3,))
def _train_step(model, optimizer, batch, loss_fn):
  loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
  optimizer.update(model, grads)
  return loss


def run(cfg: ExperimentConfig, task: Task) -> dict:
  """Trains, prunes, evaluates, logs and checkpoints one run; returns results.

  Ctrl-C (SIGINT) or SIGTERM saves a checkpoint at the next step boundary;
  ``cfg.resume`` continues from the latest checkpoint exactly (model,
  optimizer state with masks and SEVEN statistics, step, data position).
  """
  out_dir = pathlib.Path(cfg.out) / cfg.run_name
  mesh = data_mesh()
  tx = make_optimizer(cfg, task.prunable, prepruning=task.prepruning)
  optimizer = nnx.Optimizer(task.model, tx, wrt=nnx.Param)
  if mesh is not None:
    nnx.update((task.model, optimizer), replicate(nnx.state((task.model, optimizer)), mesh))
  ckpt = seven_jax.CheckpointManager(
    out_dir / "checkpoints", max_to_keep=2, save_interval_steps=cfg.checkpoint_every or 10**9
  )
  step = 0
  if cfg.resume and ckpt.latest_step() is not None:
    target = {
      "train": nnx.state((task.model, optimizer)),
      "step": jnp.int32(0),
      "data": {"epoch": jnp.int32(0), "index": jnp.int32(0)},
    }
    restored = ckpt.restore(jax.eval_shape(lambda: target))
    nnx.update((task.model, optimizer), replicate(restored["train"], mesh))
    step = int(restored["step"])
    task.train_batches.restore({k: int(v) for k, v in restored["data"].items()})
    print(f"resumed {cfg.run_name} from step {step}")
  log = RunLog(out_dir, cfg, resume=cfg.resume and step > 0)

  def training_state():
    data = task.train_batches.state()
    return {
      "train": nnx.state((task.model, optimizer)),
      "step": jnp.int32(step),
      "data": {"epoch": jnp.int32(data["epoch"]), "index": jnp.int32(data["index"])},
    }

  evals = []
  bar = _progress(cfg.steps, step, cfg.method)
  task.model.train()
  start = time.perf_counter()
  first_step = step
  interrupted = False
  with ckpt.interrupt_guard():
    while step < cfg.steps:
      batch = shard_batch(next(task.train_batches), mesh)
      loss = float(_train_step(task.model, optimizer, batch, task.loss_fn))
      step += 1
      sparsity = current_sparsity(optimizer, task.prunable)
      elapsed = time.perf_counter() - start
      log.log(
        step,
        loss=loss,
        sparsity=sparsity,
        steps_per_second=(step - first_step) / max(elapsed, 1e-9),
      )
      if bar is not None:
        bar.update(1)
        bar.set_postfix(
          loss=f"{loss:.3f}",
          sparsity=f"{sparsity:.1%}",
          steps_s=f"{(step - first_step) / max(elapsed, 1e-9):.2f}",
        )
      if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
        result = evaluate(task, mesh)
        evals.append({"step": step, **result})
        log.log(step, **result)
      ckpt.save(step, training_state())
      if ckpt.interrupted:
        ckpt.save_now(step, training_state())
        interrupted = True
        break
  if bar is not None:
    bar.close()
  train_seconds = time.perf_counter() - start
  if not interrupted:
    ckpt.save_now(step, training_state())
  ckpt.wait_until_finished()
  ckpt.close()
  result = evaluate(task, mesh)
  evals.append({"step": step, **result})
  log.log(step, **result)
  log.plot(task.metric_names)
  log.close()
  report = (
    seven_jax.sparsity_report(optimizer.opt_state, prunable=task.prunable)
    if cfg.method != DENSE
    else None
  )
  if report is not None:
    # The final masks, by parameter path (load with numpy.load).
    masks = seven_jax.masks(optimizer.opt_state)
    np.savez_compressed(
      out_dir / "masks.npz",
      **{
        jax.tree_util.keystr(path): np.asarray(m)
        for path, m in jax.tree_util.tree_leaves_with_path(masks)
      },
    )
  results = {
    "config": dataclasses.asdict(cfg),
    "primary_metric": task.metric_names[0],
    "evaluations": evals,
    "final": evals[-1],
    "sparsity": report.sparsity if report else 0.0,
    "sparsity_per_layer": report.as_dict()["leaves"] if report else [],
    "train_seconds": train_seconds,
    "steps_per_second": (step - first_step) / max(train_seconds, 1e-9),
    "steps": step,
    "interrupted": interrupted,
    "devices": jax.device_count(),
  }
  (out_dir / "results.json").write_text(json.dumps(results, indent=2))
  if interrupted:
    print(f"interrupted at step {step}; checkpoint saved. Continue with --resume.")
  return results


# ------------------------------------------------------------------- CLI -----


def add_config_flags(parser, defaults: ExperimentConfig, skip=()):
  """One flag per field of ``type(defaults)`` (but ``skip``); unset flags keep the preset's value."""
  for field in dataclasses.fields(type(defaults)):
    if field.name in skip:
      continue
    flag = "--" + field.name.replace("_", "-")
    default = getattr(defaults, field.name)
    if isinstance(default, bool):
      parser.add_argument(flag, action="store_true", default=None)
    else:
      kind = {int: int, float: float}.get(type(default), str)
      parser.add_argument(flag, type=kind, default=None, help=f"(preset: {default})")


def config_from_args(args, preset: dict, cls=ExperimentConfig) -> ExperimentConfig:
  """``cls`` from the preset, with every flag the user passed on top of it."""
  values = dict(preset)
  for name in explicit_fields(args, cls):
    values[name] = getattr(args, name)
  return cls(**values)


def explicit_fields(args, cls=ExperimentConfig) -> set:
  """Names of the config fields set on the command line (flags default to None)."""
  return {f.name for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}


def validate(cfg: ExperimentConfig):
  check_method(cfg.method)
  if not 0.0 <= cfg.sparsity < 1.0:
    raise ValueError(f"sparsity must be in [0, 1), got {cfg.sparsity}")
  if cfg.steps < 1 or cfg.batch_size < 1:
    raise ValueError(f"steps and batch_size must be >= 1, got {cfg.steps}, {cfg.batch_size}")
  if cfg.eval_every < 0:
    raise ValueError(f"eval_every must be >= 0 (0: only at the end), got {cfg.eval_every}")
  if cfg.pruning_steps < 2 or cfg.start_step < 0:
    raise ValueError("pruning_steps must be >= 2 and start_step >= 0")
  if jax.device_count() > 1 and cfg.batch_size % jax.device_count():
    raise ValueError(
      f"batch_size {cfg.batch_size} must be divisible by the {jax.device_count()} devices"
    )


def markdown_table(rows: list[dict], metric: str) -> str:
  lines = [
    f"| method | {metric} | sparsity (prunable) | train time | steps/s |",
    "|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
      f"| {r['config']['method']} | {r['final'][metric]:.4f} | {r['sparsity']:.2%} | "
      f"{r['train_seconds']:.0f} s | {r['steps_per_second']:.2f} |"
    )
  return "\n".join(lines)


def configs_from_cli(
  argv, description: str, presets: dict, default_methods, default_preset: str = "cpu-quick"
) -> list[ExperimentConfig]:
  """``--preset``, ``--methods`` and one flag per config field; flags win.

  Returns one config per method; user mistakes exit with a message naming
  the bad value and the valid ones (no traceback).
  """
  import argparse  # pylint: disable=g-import-not-at-top
  from seven_jax import data as sj_data  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--preset", default=default_preset, choices=sorted(presets))
  parser.add_argument(
    "--methods",
    default=None,
    help=f"comma-separated methods to run in turn (default: "
    f"{','.join(default_methods)}); overrides --method",
  )
  add_config_flags(parser, ExperimentConfig(**presets[default_preset]))
  args = parser.parse_args(argv)
  base = config_from_args(args, presets[args.preset])
  methods = (
    args.methods.split(",")
    if args.methods
    else [args.method]
    if args.method
    else list(default_methods)
  )
  try:
    if base.task not in sj_data.datasets():
      raise ValueError(f"unknown task {base.task!r}; valid: {', '.join(sj_data.datasets())}")
    configs = [dataclasses.replace(base, method=m.strip()) for m in methods]
    for cfg in configs:
      validate(cfg)
  except ValueError as e:
    parser.error(str(e))
  return configs


def run_and_report(configs, build_task, *, metrics=None, details: str = "") -> list[dict]:
  """Runs every config in turn and prints one markdown table per metric."""
  base = configs[0]
  print("config:", json.dumps(dataclasses.asdict(base)))
  rows = [run(cfg, build_task(cfg)) for cfg in configs]
  print(
    f"\n{base.task} ({base.eval_split}), {base.steps} steps, batch {base.batch_size}"
    f"{details}, {jax.device_count()} device(s)"
  )
  for metric in metrics or [rows[0]["primary_metric"]]:
    print(markdown_table(rows, metric))
  return rows
