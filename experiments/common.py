"""The machinery every experiment module shares: one config, the optimizer for a
method name, a resumable training loop with logs, plots, checkpoints and
data parallelism over the visible devices.

A task module (``experiments.text``, ``experiments.glue``, ``experiments.vision``)
only says how to build the model, the batches and the predictions; this module
does the rest identically for every method, so that methods are compared fairly.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
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
  resume: bool = False  # continue from the latest checkpoint (an error if there is none)
  prune_before_steps: int = 16  # batches scored by pre-pruning methods
  # Recipe: learning rate schedule after the warm-up ("constant" or "linear"
  # decay to 0 at the last step), linear warm-up from 0 over warmup_steps, and
  # which parameters weight decay applies to ("no_bias_norm": not to biases
  # and LayerNorm scales, as the Hugging Face / BERT recipes).
  lr_schedule: str = "constant"
  warmup_steps: int = 0
  weight_decay_mask: str = "no_bias_norm"
  group_by_length: bool = True  # text tasks: batches of similar length (fewer compilations)
  log_every: int = 50  # loss values and sparsity reach the host every this many steps
  stop_after: int = 0  # > 0: stop (with a checkpoint) after this many steps; --resume continues
  mesh: str = ""  # "data=2,fsdp=4": FSDP over fsdp; "" puts every device on data
  # Accept a pruning window that does not finish by the last step (the run ends
  # below the target sparsity; e.g. the official 10-epoch RTE and STS-B runs).
  partial_window: bool = False
  # The pruning budget: "global" (one top-k over every prunable weight) or
  # "per_leaf" (every prunable matrix pruned to the schedule's ratio on its own).
  scope: str = "global"
  # BERT tasks: whether the pooler's dense kernel is prunable (the official
  # SEVEN code prunes it). Models without a pooler (ViT) reject the flag.
  include_pooler: bool = True
  # movement / soft_movement as Sanh et al. (2020): the forward pass uses W * M
  # through a straight-through estimator; inside the window the dense weights
  # are kept and scored (pruned weights can come back) and are zeroed when the
  # window ends. Other methods do not read it (passing the flag is an error).
  straight_through: bool = True

  @property
  def run_name(self) -> str:
    """``task-method-s<sparsity>-seed<seed>``, plus a suffix for every setting
    away from its default that changes what is pruned (``-per_leaf``,
    ``-nopooler``, ``-nostraight``), so such a run never lands in (or resumes
    into) the default run's folder."""
    name = f"{self.task}-{self.method}-s{self.sparsity:g}-seed{self.seed}"
    if self.scope != "global":
      name += f"-{self.scope}"
    if not self.include_pooler:
      name += "-nopooler"
    if not self.straight_through and self.method in STRAIGHT_THROUGH_METHODS:
      name += "-nostraight"
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


def method_kwargs(cfg) -> dict:
  """The keyword arguments of ``cfg.method``'s pruning call from the config.

  Its score rule's hyper-parameters (e.g. ``b1``, ``b2``) and the budget's
  ``scope``; ``{}`` for dense. Dynamic methods (``seven_mask``,
  ``pruning_mask``) and pre-pruning (``prune_before_finetuning``) take them
  all.
  """
  if cfg.method == DENSE:
    return {}
  return {"scope": cfg.scope, **{name: getattr(cfg, name) for name in method_hparams(cfg.method)}}


# Methods whose paper applies the mask in the forward pass through a
# straight-through estimator (Sanh et al. 2020: hard and soft movement pruning).
STRAIGHT_THROUGH_METHODS = ("movement", "soft_movement")


def uses_straight_through(cfg) -> bool:
  """Whether the run trains ``cfg.method`` with the straight-through estimator.

  True for :data:`STRAIGHT_THROUGH_METHODS` unless ``--no-straight-through``.
  """
  return cfg.method in STRAIGHT_THROUGH_METHODS and bool(cfg.straight_through)


def learning_rate(cfg) -> optax.Schedule:
  r"""The learning rate of step ``t`` (0-based): a linear warm-up, then constant or linear decay.

  .. math::

     \eta_t = \eta \frac{t}{W} \ (t < W), \qquad
     \eta_t = \eta \ \text{(constant)} \ \text{or} \
     \eta \frac{T - t}{T - W} \ \text{(linear)} \quad (t \ge W),

  with ``W = warmup_steps`` and ``T = steps``: the linear schedule reaches 0
  after the last step, as Hugging Face's ``get_linear_schedule_with_warmup``.
  """
  after = (
    optax.constant_schedule(cfg.lr)
    if cfg.lr_schedule == "constant"
    else optax.linear_schedule(cfg.lr, 0.0, max(1, cfg.steps - cfg.warmup_steps))
  )
  if not cfg.warmup_steps:
    return after
  return optax.join_schedules(
    [optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps), after], [cfg.warmup_steps]
  )


def decay_mask(params):
  """Which parameters weight decay applies to under ``weight_decay_mask="no_bias_norm"``.

  Matrices and embedding tables (``ndim >= 2``) are decayed; biases and
  LayerNorm scales and offsets (the 1-D leaves) are not, as in BERT's recipe.
  """
  return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def inner_optimizer(cfg) -> optax.GradientTransformation:
  """AdamW with the config's learning-rate schedule and weight-decay mask."""
  mask = decay_mask if cfg.weight_decay_mask == "no_bias_norm" else None
  return optax.adamw(learning_rate(cfg), weight_decay=cfg.weight_decay, mask=mask)


def make_optimizer(
  cfg: ExperimentConfig, prunable, *, params=None, prepruning: Optional[Callable[[], Any]] = None
):
  """The optax transformation for ``cfg.method`` around AdamW.

  Dynamic methods prune while fine-tuning with the cubic schedule
  (``start_step``, ``pruning_steps``); pre-pruning methods compute masks first
  (``prepruning()`` returns them) and fine-tune with the mask frozen.
  """
  check_method(cfg.method)
  inner = inner_optimizer(cfg)
  if cfg.method == DENSE:
    return inner
  kind = seven_jax.method_kind(cfg.method)
  if kind == "pre":
    if prepruning is None:
      raise ValueError(f"method {cfg.method!r} prunes before fine-tuning and needs batches")
    return seven_jax.fixed_mask(inner, prepruning())
  if cfg.method == "seven":
    return seven_jax.seven_mask(
      inner,
      sparsity=cfg.sparsity,
      start_step=cfg.start_step,
      pruning_steps=cfg.pruning_steps,
      update_every=cfg.update_every,
      prunable=prunable,
      **method_kwargs(cfg),
    )
  extra = {"straight_through": True} if uses_straight_through(cfg) else {}
  return seven_jax.pruning_mask(
    inner,
    method=cfg.method,
    sparsity=cfg.sparsity,
    start_step=cfg.start_step,
    pruning_steps=cfg.pruning_steps,
    update_every=cfg.update_every,
    prunable=prunable,
    **extra,
    **method_kwargs(cfg),
  )


def freezes(cfg) -> bool:
  """Whether the loop swaps the pruning state for a fixed mask after the window."""
  return cfg.method != DENSE and seven_jax.method_kind(cfg.method) != "pre"


# ---------------------------------------------------------------- devices ----


def make_mesh(cfg) -> Optional[jax.sharding.Mesh]:
  """The ``(data, fsdp)`` mesh of ``cfg.mesh`` over every device (None with one device).

  Several hosts: call ``jax.distributed.initialize()`` first (``--distributed``
  does); ``jax.devices()`` then lists every host's devices.
  """
  if jax.device_count() == 1:
    return None
  shape = mesh_shape(cfg.mesh)
  return jax.make_mesh(
    (shape["data"], shape["fsdp"]),
    ("data", "fsdp"),
    axis_types=(jax.sharding.AxisType.Auto,) * 2,
  )


def data_mesh() -> Optional[jax.sharding.Mesh]:
  """Every device on ``data`` (None with a single device)."""
  return make_mesh(ExperimentConfig())


def batch_sharding(mesh):
  # The batch is split over every device: FSDP gathers the weights, each device
  # computes on its own slice of the batch (ZeRO-3), and data is the outer axis.
  return NamedSharding(mesh, P(("data", "fsdp")))


def put(x, sharding):
  """``x`` (the same value on every process) as an array with ``sharding``.

  One host: ``jax.device_put`` (asynchronous). Several hosts: each process
  builds its own shards from its copy of ``x``
  (``jax.make_array_from_callback``), since no process may address another's
  devices.
  """
  if sharding.is_fully_addressable:
    return jax.device_put(x, sharding)
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    data = put(jax.random.key_data(x), sharding)  # replicated: the key's words too
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def put_tree(tree, shardings):
  if not isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(put, tree, shardings)
  return jax.tree.map(lambda x: put(x, shardings), tree)


def shard_batch(batch: dict, mesh) -> dict:
  """Splits the batch dimension over the mesh; starts the copies without waiting."""
  if mesh is None:
    return {k: jax.device_put(np.asarray(v)) for k, v in batch.items()}
  sharding = batch_sharding(mesh)
  return {k: put(np.asarray(v), sharding) for k, v in batch.items()}


def param_sharding(x, mesh) -> NamedSharding:
  """FSDP: the largest axis of ``x`` divisible by the ``fsdp`` size is split; else replicated."""
  size = mesh.shape["fsdp"]
  shape = np.shape(x)
  if size > 1:
    axes = sorted(range(len(shape)), key=lambda a: -shape[a])
    for axis in axes:
      if shape[axis] % size == 0 and shape[axis] >= size:
        spec = [None] * len(shape)
        spec[axis] = "fsdp"
        return NamedSharding(mesh, P(*spec))
  return NamedSharding(mesh, P())


def replicate(tree, mesh):
  if mesh is None:
    return tree
  return put_tree(tree, NamedSharding(mesh, P()))


def bytes_per_device(tree) -> int:
  """Bytes of ``tree``'s arrays held by the first local device (its shards only)."""
  device = jax.local_devices()[0]
  total = 0
  for leaf in jax.tree.leaves(tree):
    if isinstance(leaf, jax.Array):
      total += sum(s.data.nbytes for s in leaf.addressable_shards if s.device == device)
  return int(total)


# ---------------------------------------------------------------- logging ----


class RunLog:
  """results.json, a JSONL log, TensorBoard scalars and PNG plots of one run.

  On a resume from step ``s`` the records after ``s`` (written by the run that
  was killed after its last checkpoint) are dropped from ``log.jsonl``, and
  TensorBoard's event files are written afresh from the kept records, so no
  step appears twice in any of them (nor in ``curves.png``).
  """

  def __init__(self, out_dir: pathlib.Path, cfg: ExperimentConfig, *, resume_step=None):
    self.dir = out_dir
    self.records: list[dict] = []
    # Several hosts: the first process writes the files, the others only keep
    # the records (every process computes the same values).
    self.writes = jax.process_index() == 0
    self.jsonl = self.tb = None
    if not self.writes:
      return
    self.dir.mkdir(parents=True, exist_ok=True)
    (self.dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    path = self.dir / "log.jsonl"
    if resume_step is not None and path.exists():
      records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
      self.records = [r for r in records if r["step"] <= resume_step]
      path.write_text("".join(json.dumps(r) + "\n" for r in self.records))
    self.jsonl = open(path, "a" if resume_step is not None else "w")
    try:
      from tensorboardX import SummaryWriter
    except ImportError:  # optional: pip install tensorboardX
      self.tb = None
    else:
      import shutil  # pylint: disable=g-import-not-at-top

      shutil.rmtree(self.dir / "tensorboard", ignore_errors=True)
      self.tb = SummaryWriter(str(self.dir / "tensorboard"))
      for record in self.records:
        self._scalars(record)

  def _scalars(self, record):
    for k, v in record.items():
      if k != "step":
        self.tb.add_scalar(k, float(v), int(record["step"]))

  def log(self, step: int, **scalars):
    record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    self.records.append(record)
    if not self.writes:
      return
    self.jsonl.write(json.dumps(record) + "\n")
    self.jsonl.flush()
    if self.tb is not None:
      self._scalars(record)

  def series(self, key: str):
    pts = [(r["step"], r[key]) for r in self.records if key in r]
    return [p[0] for p in pts], [p[1] for p in pts]

  def plot(self, metric_keys):
    if not self.writes:
      return
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
    if self.jsonl is not None:
      self.jsonl.close()
    if self.tb is not None:
      self.tb.close()


def _progress(total: int, initial: int, name: str):
  if jax.process_index() != 0:
    return None
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


class TrainingDiverged(RuntimeError):
  """The loss became NaN or infinite; the run stopped (no checkpoint holds the diverged state)."""


def current_sparsity(optimizer, prunable=None) -> float:
  """Sparsity over the prunable leaves (0 for a dense optimizer)."""
  state = getattr(optimizer, "opt_state", optimizer)
  try:
    return seven_jax.sparsity_report(state, prunable=prunable).sparsity
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
  """``predict_fn(model, batch)`` compiled, with the batch sharded over the mesh.

  The outputs come back replicated, so every host can read all of them.
  """
  out = _predict(model, shard_batch(batch, mesh), predict_fn)
  if mesh is not None:
    out = jax.tree.map(lambda x: _replicated(x, mesh), out)
  return out


@nnx.jit(static_argnums=(2,))
def _predict(model, batch, predict_fn):
  return predict_fn(model, batch)


def _replicated(x, mesh):
  return jax.jit(lambda y: y, out_shardings=NamedSharding(mesh, P()))(x)


def _mask_leaves(masks) -> list:
  """The mask arrays of a masks tree (nodes that stand for "all kept" give nothing)."""
  return [m for m in jax.tree.leaves(masks) if isinstance(m, (jax.Array, np.ndarray))]


def zero_pruned(params, masks):
  """``params`` with every pruned weight set to 0 (before the first step of a pre-pruned run).

  ``masks`` has the structure of ``params``; a leaf that is not an array (an
  "all kept" node such as ``optax.MaskedNode``) leaves its parameter as is.
  """
  flat_params, treedef = jax.tree.flatten(params)
  # Variables and States are pytree nodes (their arrays are the leaves); an
  # "all kept" node (optax.MaskedNode, None) stands in for a whole leaf.
  flat_masks = jax.tree.leaves(
    masks, is_leaf=lambda x: x is None or isinstance(x, optax.MaskedNode)
  )
  if len(flat_masks) != len(flat_params):
    raise ValueError(
      f"masks have {len(flat_masks)} leaves, the parameters {len(flat_params)}: "
      "they must have the same structure"
    )
  out = [
    jnp.where(m, p, jnp.zeros_like(p)) if isinstance(m, (jax.Array, np.ndarray)) else p
    for p, m in zip(flat_params, flat_masks)
  ]
  return treedef.unflatten(out)


class _Stepper:
  """The jitted training step on ``(params, rest, opt_state)``, and its on-device statistics.

  Functional (``nnx.split`` once): a call is one XLA dispatch, with no Python
  walk over the module graph, and the training state's buffers are donated.
  """

  def __init__(
    self, graphdef, loss_fn, tx, shardings, num_prunable: int, *, straight_through=False
  ):
    self.graphdef, self.loss_fn, self.num_prunable = graphdef, loss_fn, num_prunable
    self.shardings = shardings
    self.set_optimizer(tx, straight_through=straight_through)

  def set_optimizer(self, tx, *, straight_through: bool = False):
    """Compiles the step for ``tx``.

    ``straight_through``: the loss is taken at ``W * M`` (the optimizer
    state's masks) with the identity gradient
    (:func:`seven_jax.straight_through_masked`), for a
    ``pruning_mask(..., straight_through=True)`` that keeps the dense ``W``.
    """
    graphdef, loss_fn = self.graphdef, self.loss_fn

    def loss_and_rest(params, rest, batch):
      model = nnx.merge(graphdef, params, rest, copy=True)
      loss = loss_fn(model, batch)
      return loss, nnx.split(model, nnx.Param, ...)[2]

    def forward_params(params, opt_state):
      if not straight_through:
        return params
      masked = seven_jax.straight_through_masked(params, seven_jax.masks(opt_state))
      # The same tree as params (their Variable wrappers), so the model merges alike.
      return jax.tree.unflatten(jax.tree.structure(params), jax.tree.leaves(masked))

    def step(params, rest, opt_state, batch):
      forward = lambda p, r, b: loss_and_rest(forward_params(p, opt_state), r, b)
      (loss, rest), grads = jax.value_and_grad(forward, has_aux=True)(params, rest, batch)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), rest, opt_state, loss

    out = None
    if self.shardings is not None:
      p, r, o, scalar = self.shardings
      out = (p, r, o, scalar) if o is not None else None
    self.tx, self.straight_through = tx, straight_through
    self.step = jax.jit(step, donate_argnums=(0, 1, 2), out_shardings=out)

  def sparsity(self, opt_state):
    """Fraction of the prunable weights that are pruned, as a device scalar (no host sync)."""
    # The state's own masks: its holes (non-prunable leaves, which keep all)
    # would otherwise be counted as materialised all-True arrays; and the
    # call flattens the masks only, not the whole state (~3 ms at MiniLM).
    return _device_sparsity(seven_jax.find_state(opt_state).masks, self.num_prunable)


@functools.partial(jax.jit, static_argnums=(1,))
def _device_sparsity(mask_tree, num_prunable):
  # Per leaf in int32 (exact), summed in float32 (a fraction: no overflow
  # past 2**31 weights).
  masks = _mask_leaves(mask_tree)
  pruned = sum((m.size - seven_jax.count_kept(m)).astype(jnp.float32) for m in masks)
  return jnp.asarray(pruned, jnp.float32) / max(num_prunable, 1)


class _DeviceLog:
  """Losses and sparsity stay on the device; they reach the host one logging period late.

  ``add`` keeps the step's device loss; ``period`` stacks the period's losses,
  starts their copy to the host (``copy_to_host_async``) and returns the
  *previous* period's values, whose copy has long finished, so the host never
  waits for the device on the step path. ``drain`` waits (checkpoints,
  evaluations and the end of training need the values).
  """

  def __init__(self):
    self.steps, self.losses = [], []
    self.in_flight = []  # (steps, device losses, device sparsity)

  def add(self, step, loss):
    self.steps.append(step)
    self.losses.append(loss)

  def _close_period(self, sparsity):
    if not self.steps:
      return
    losses = jnp.stack(self.losses)
    for x in (losses, sparsity):
      if x is not None:
        x.copy_to_host_async()
    self.in_flight.append((self.steps, losses, sparsity))
    self.steps, self.losses = [], []

  def period(self, sparsity) -> list:
    self._close_period(sparsity)
    ready, self.in_flight = self.in_flight[:-1], self.in_flight[-1:]
    return [_to_host(p) for p in ready]

  def drain(self, sparsity) -> list:
    self._close_period(sparsity)
    ready, self.in_flight = self.in_flight, []
    return [_to_host(p) for p in ready]


def _to_host(packet):
  steps, losses, sparsity = packet
  return steps, np.asarray(losses), None if sparsity is None else float(sparsity)


def run(cfg: ExperimentConfig, task: Task) -> dict:
  """Trains, prunes, evaluates, logs and checkpoints one run; returns results.

  The step path never waits for the device: losses and sparsity are computed
  on the device and read every ``log_every`` steps, one period late; the next
  batch is copied to the devices while the current step runs; after the
  pruning window of a dynamic method the optimizer becomes
  :func:`seven_jax.fixed_mask` on the final masks and its state
  :func:`seven_jax.freeze` (the statistics are dropped, the step is cheaper).

  Ctrl-C (SIGINT) or SIGTERM saves a checkpoint at the next step boundary;
  ``cfg.resume`` continues from the latest checkpoint exactly (parameters,
  optimizer state with masks and SEVEN statistics, before or after the
  freeze, step, data position). A non-finite loss raises
  :class:`TrainingDiverged` (no checkpoint is written after it).
  """
  out_dir = pathlib.Path(cfg.out) / cfg.run_name
  mesh = make_mesh(cfg)
  task.model.train()
  graphdef, params, rest = nnx.split(task.model, nnx.Param, ...)
  prune_masks = None
  tx = make_optimizer(cfg, task.prunable, prepruning=task.prepruning)
  if cfg.method != DENSE and seven_jax.method_kind(cfg.method) == "pre":
    # Fine-tuning starts on the pruned model: the first forward pass must not
    # see the weights the pre-pruning method removed.
    prune_masks = seven_jax.masks(tx.init(params))
    params = zero_pruned(params, prune_masks)
  spec = seven_jax.resolve_prunable(task.prunable, params)
  num_prunable = int(
    sum(np.size(p) for p, s in zip(jax.tree.leaves(params), jax.tree.leaves(spec)) if s)
  )
  inner = inner_optimizer(cfg)
  freeze_at = window_end(cfg) if freezes(cfg) else None
  straight_through = uses_straight_through(cfg)

  shardings = None
  if mesh is not None:
    p_sh = jax.tree.map(lambda x: param_sharding(x, mesh), params)
    params = put_tree(params, p_sh)
    rest = replicate(rest, mesh)
    r_sh = jax.tree.map(lambda x: x.sharding, rest)
  opt_state = _init_state(tx, params, mesh)

  ckpt = seven_jax.CheckpointManager(
    out_dir / "checkpoints", max_to_keep=2, save_interval_steps=cfg.checkpoint_every or 10**9
  )
  step = 0
  frozen = False
  if cfg.resume:
    if ckpt.latest_step() is None:
      ckpt.close()
      raise ValueError(
        f"resume: no checkpoint of run {cfg.run_name} under {out_dir / 'checkpoints'}; "
        "start without resume"
      )
    saved = ckpt.latest_step()
    frozen = freeze_at is not None and saved >= freeze_at
    state_like = seven_jax.freeze(opt_state) if frozen else opt_state
    target = _checkpoint_tree(params, rest, state_like, 0, {"epoch": 0, "index": 0}, mesh)
    restored = ckpt.restore(jax.eval_shape(lambda: target))
    params, rest = _place(restored["params"], params), _place(restored["rest"], rest)
    opt_state = _place(restored["opt_state"], state_like)
    step = int(restored["step"])
    if frozen:
      tx = seven_jax.fixed_mask(inner, seven_jax.masks(opt_state))
    task.train_batches.restore({k: int(v) for k, v in restored["data"].items()})
    print(f"resumed {cfg.run_name} from step {step}")
  log = RunLog(out_dir, cfg, resume_step=step if cfg.resume else None)

  if mesh is not None:
    shardings = (p_sh, r_sh, _state_shardings(opt_state, mesh), NamedSharding(mesh, P()))
  stepper = _Stepper(
    graphdef,
    task.loss_fn,
    tx,
    shardings,
    num_prunable,
    straight_through=straight_through and not frozen,
  )
  sparsity_of = stepper.sparsity if cfg.method != DENSE else (lambda _: None)

  def sync_model():
    # Straight-through inside the window: params hold the dense weights, the
    # network is W * M (evaluations and the model the caller gets see that).
    shown = params
    if stepper.straight_through:
      shown = zero_pruned(params, seven_jax.masks(opt_state))
    nnx.update(task.model, shown, rest)

  def training_state(data_position):
    return _checkpoint_tree(params, rest, opt_state, step, data_position, mesh)

  evals = []
  bar = _progress(cfg.steps, step, cfg.method)
  device_log = _DeviceLog()
  first_step = step
  last_step = cfg.steps if not cfg.stop_after else min(cfg.steps, step + cfg.stop_after)
  start = time.perf_counter()

  def write(packets):
    for steps, losses, sparsity in packets:
      elapsed = time.perf_counter() - start
      rate = (steps[-1] - first_step) / max(elapsed, 1e-9)
      bad = ~np.isfinite(losses)
      for i, (s, loss) in enumerate(zip(steps, losses)):
        extra = {"sparsity": sparsity} if sparsity is not None and i == len(steps) - 1 else {}
        if cfg.method == DENSE and i == len(steps) - 1:
          extra = {"sparsity": 0.0}
        log.log(s, loss=loss, **extra, steps_per_second=rate)
        if bad[i]:
          raise TrainingDiverged(
            f"the loss became {loss} at step {s} (method {cfg.method}, lr {cfg.lr:g}): "
            f"stopping {cfg.run_name}. Checkpoints stop before step {s}; "
            "lower --lr or check the data."
          )
      if bar is not None:
        bar.update(len(steps))
        postfix = dict(loss=f"{losses[-1]:.3f}", steps_s=f"{rate:.2f}")
        if sparsity is not None:
          postfix["sparsity"] = f"{sparsity:.1%}"
        bar.set_postfix(**postfix)

  interrupted = stopped = False
  compiled_at = loop_end = None
  # Every step builds hundreds of nnx Variables (the jitted step's outputs), so
  # the cyclic GC runs a few times per step; a full pass would walk every
  # object of the process (jax, flax, matplotlib, ...: ~300k). Frozen, the
  # objects alive now are skipped: pauses of ~0.5 s fall to ~0.1 s (measured
  # by H3 with benchmarks/loop.py), steps lost on an accelerator.
  gc.collect()
  gc.freeze()
  try:
    with ckpt.interrupt_guard():
      data_position = task.train_batches.state()
      pending = shard_batch(next(task.train_batches), mesh) if step < last_step else None
      while step < last_step:
        batch = pending
        params, rest, opt_state, loss = stepper.step(params, rest, opt_state, batch)
        step += 1
        if step == first_step + 1:
          # The first call compiled the step; its execution may still run
          # (dispatch is asynchronous): one wait, here only, so that the
          # steady rate counts the steps after it and nothing of it.
          jax.block_until_ready(loss)
          compiled_at = time.perf_counter()
        device_log.add(step, loss)
        data_position = task.train_batches.state()
        if step < last_step:  # the next batch travels while this step runs
          pending = shard_batch(next(task.train_batches), mesh)
        if freeze_at is not None and not frozen and step >= freeze_at:
          stepper.set_optimizer(seven_jax.fixed_mask(inner, seven_jax.masks(opt_state)))
          opt_state = seven_jax.freeze(opt_state)
          frozen = True
          if mesh is not None:
            stepper.shardings = (p_sh, r_sh, _state_shardings(opt_state, mesh), shardings[3])
            stepper.set_optimizer(stepper.tx)
        evaluate_now = cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps
        save_now = cfg.checkpoint_every and step % cfg.checkpoint_every == 0
        if evaluate_now or save_now or ckpt.interrupted or step == last_step:
          write(device_log.drain(sparsity_of(opt_state)))  # the values are needed now
        elif step % cfg.log_every == 0:
          write(device_log.period(sparsity_of(opt_state)))
        if evaluate_now:
          sync_model()
          result = evaluate(task, mesh)
          evals.append({"step": step, **result})
          log.log(step, **result)
        if save_now:
          ckpt.save(step, training_state(data_position))
        if ckpt.interrupted:
          ckpt.save_now(step, training_state(data_position))
          interrupted = True
          break
      loop_end = time.perf_counter()  # after the last drain: every step has run
      stopped = not interrupted and step < cfg.steps
      if not interrupted:
        ckpt.save_now(step, training_state(data_position))
  except TrainingDiverged:
    if bar is not None:
      bar.close()
    ckpt.close()
    log.plot(task.metric_names)
    log.close()
    raise
  finally:
    gc.unfreeze()
  if bar is not None:
    bar.close()
  train_seconds = time.perf_counter() - start
  ckpt.wait_until_finished()
  ckpt.close()
  sync_model()
  result = evaluate(task, mesh)
  evals.append({"step": step, **result})
  log.log(step, **result)
  log.plot(task.metric_names)
  log.close()
  report = (
    seven_jax.sparsity_report(opt_state, prunable=task.prunable) if cfg.method != DENSE else None
  )
  out_dir.mkdir(parents=True, exist_ok=True)
  suffix = "" if jax.process_index() == 0 else f".process{jax.process_index()}"
  if report is not None:
    # The final masks, by parameter path (load with numpy.load); with several
    # hosts every process writes the masks it holds (masks.process<i>.npz).
    masks = seven_jax.masks(opt_state)
    np.savez_compressed(
      out_dir / f"masks{suffix}.npz",
      **{
        jax.tree_util.keystr(path): np.asarray(_replicated(m, mesh) if mesh is not None else m)
        for path, m in jax.tree_util.tree_leaves_with_path(masks)
        if isinstance(m, jax.Array)
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
    # Steps after the first (which compiles) until the last one finished; no
    # checkpoint or evaluation in between: the loop's own throughput.
    "steady_steps_per_second": (
      (step - first_step - 1) / max(loop_end - compiled_at, 1e-9)
      if compiled_at is not None and loop_end is not None and step - first_step > 1
      else None
    ),
    "steps": step,
    "interrupted": interrupted,
    "stopped_early": stopped,
    "frozen_at": freeze_at if frozen else None,
    "straight_through": straight_through,
    # The accuracy of a constant classifier on the evaluation examples.
    "majority_rate": majority_rate(task),
    "prunable_leaves": int(sum(bool(s) for s in jax.tree.leaves(spec))),
    "prunable_weights": num_prunable,
    "include_pooler": pooler_prunable(params, spec),
    "devices": jax.device_count(),
    "processes": jax.process_count(),
    "mesh": dict(mesh.shape) if mesh is not None else {"data": 1, "fsdp": 1},
    "bytes_per_device": {
      "params": bytes_per_device(params),
      "opt_state": bytes_per_device(opt_state),
    },
  }
  (out_dir / f"results{suffix}.json").write_text(json.dumps(results, indent=2))
  if interrupted:
    print(f"interrupted at step {step}; checkpoint saved. Continue with --resume.")
  elif stopped:
    print(f"stopped after step {step} (--stop-after); checkpoint saved. Continue with --resume.")
  return results


def majority_rate(task: Task) -> Optional[float]:
  """Share of the most frequent label among ``task``'s evaluation examples.

  The accuracy of a constant classifier (padding rows, ``example_mask``, left
  out). ``None`` where the batches carry no integer class label per example
  (regression, span extraction).
  """
  counts = None
  for batch in task.eval_batches():
    if task.label_key not in batch:
      return None
    labels = np.asarray(batch[task.label_key])
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
      return None
    valid = np.asarray(batch.get("example_mask", np.ones(len(labels), bool)), bool)
    batch_counts = np.bincount(labels[valid].astype(np.int64), minlength=1)
    if counts is None:
      counts = batch_counts
    else:
      size = max(len(counts), len(batch_counts))
      counts = np.pad(counts, (0, size - len(counts))) + np.pad(
        batch_counts, (0, size - len(batch_counts))
      )
  if counts is None or counts.sum() == 0:
    return None
  return float(counts.max() / counts.sum())


def pooler_prunable(params, spec) -> Optional[bool]:
  """Whether a ``pooler`` parameter is prunable (``None``: the model has no pooler)."""
  found = None
  for (path, _), prunable in zip(
    jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(spec)
  ):
    if "pooler" in jax.tree_util.keystr(path):
      found = bool(found) or bool(prunable)
  return found


def _checkpoint_tree(params, rest, opt_state, step, data_position, mesh=None) -> dict:
  # Several hosts: orbax saves global arrays only, so the counters live on the mesh too.
  scalar = (
    (lambda v: jnp.int32(v))
    if mesh is None
    else (lambda v: put(np.int32(v), NamedSharding(mesh, P())))
  )
  return {
    "params": params,
    "rest": rest,
    "opt_state": opt_state,
    "step": scalar(step),
    "data": {k: scalar(v) for k, v in data_position.items()},
  }


def _shardings_of(tree):
  return jax.tree.map(lambda x: x.sharding if isinstance(x, jax.Array) else None, tree)


def _place(restored, like):
  """``restored`` with the devices/shardings of ``like``."""
  return jax.tree.map(
    lambda r, l: put(r, l.sharding) if isinstance(l, jax.Array) else r, restored, like
  )


def _init_state(tx, params, mesh):
  """``tx.init(params)``; on a mesh every state leaf gets the sharding of its parameter.

  :func:`param_sharding` depends only on the shape, so a state leaf shaped like
  a parameter (Adam's moments, SEVEN's masks, statistics and scores) is split
  like it, and scalars (step counts) are replicated; jit's ``out_shardings``
  makes XLA create each leaf in place, never whole on one device.
  """
  if mesh is None:
    return tx.init(params)
  out = jax.tree.map(lambda s: param_sharding(s, mesh), jax.eval_shape(tx.init, params))
  return jax.jit(tx.init, out_shardings=out)(params)


def _state_shardings(opt_state, mesh):
  return jax.tree.map(lambda s: param_sharding(s, mesh), opt_state)


# ------------------------------------------------------------------- CLI -----


class _Rule:
  """The allowed values of one config field, checked before anything is loaded.

  ``kind`` is ``int``, ``float`` or ``str``; numbers must be finite and lie in
  ``[low, high]`` (``high_open``: ``[low, high)``); strings in ``choices``.
  """

  def __init__(self, kind, low=None, high=None, *, high_open=False, choices=None):
    self.kind, self.low, self.high, self.high_open = kind, low, high, high_open
    self.choices = choices

  def describe(self) -> str:
    if self.choices is not None:
      return "one of " + ", ".join(self.choices)
    name = "an integer" if self.kind is int else "a finite number"
    if self.low is not None and self.high is not None:
      return f"{name} in [{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
    if self.low is not None:
      return f"{name} >= {self.low:g}"
    return name

  def check(self, value) -> bool:
    if self.choices is not None:
      return value in self.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      return False
    if self.kind is int and not float(value).is_integer():
      return False
    if not math.isfinite(value):
      return False
    if self.low is not None and value < self.low:
      return False
    if self.high is not None and (value >= self.high if self.high_open else value > self.high):
      return False
    return True


LR_SCHEDULES = ("constant", "linear")
SCOPES = ("global", "per_leaf")  # seven_jax.selection.SCOPES
WEIGHT_DECAY_MASKS = ("all", "no_bias_norm")

# Every numeric or enumerated field of the configs; a field missing here is free text.
FIELD_RULES = {
  "sparsity": _Rule(float, 0.0, 1.0, high_open=True),
  "start_step": _Rule(int, 0),
  "pruning_steps": _Rule(int, 2),
  "b1": _Rule(float, 0.0, 1.0, high_open=True),
  "b2": _Rule(float, 0.0, 1.0, high_open=True),
  "update_every": _Rule(int, 1),
  "lr": _Rule(float, 1e-12),
  "weight_decay": _Rule(float, 0.0),
  "batch_size": _Rule(int, 1),
  "max_len": _Rule(int, 2),
  "steps": _Rule(int, 1),
  "eval_every": _Rule(int, 0),
  "eval_examples": _Rule(int, 0),
  "seed": _Rule(int, 0),
  "checkpoint_every": _Rule(int, 0),
  "prune_before_steps": _Rule(int, 1),
  "log_every": _Rule(int, 1),
  "stop_after": _Rule(int, 0),
  "lr_schedule": _Rule(str, choices=LR_SCHEDULES),
  "warmup_steps": _Rule(int, 0),
  "weight_decay_mask": _Rule(str, choices=WEIGHT_DECAY_MASKS),
  "epochs": _Rule(float, 0.0),
  "doc_stride": _Rule(int, 1),
  "n_best": _Rule(int, 1),
  "max_answer_length": _Rule(int, 1),
  "scope": _Rule(str, choices=SCOPES),
}

# What a flag does, where its name does not say it (printed by --help).
FIELD_HELP = {
  "scope": "pruning budget: one over all prunable weights, or every matrix on its own ",
  "include_pooler": "BERT: prune the pooler's dense kernel too, as the official SEVEN code ",
  "straight_through": (
    "movement, soft_movement: mask in the forward pass, dense weights kept and scored "
    "in the window (Sanh et al. 2020) "
  ),
}

# Config fields that are hyper-parameters of a score rule (passed as method kwargs).
METHOD_HPARAMS = {"b1", "b2"}
METHOD_FIELDS = {
  "sparsity",
  "start_step",
  "pruning_steps",
  "update_every",
  "prune_before_steps",
  "scope",
  "straight_through",
  "include_pooler",
}


def flag(name: str) -> str:
  return "--" + name.replace("_", "-")


class ConfigError(ValueError):
  """A bad config value; ``str(e)`` names the flag and the allowed values."""


def _bad(name: str, message: str) -> ConfigError:
  return ConfigError(f"argument {flag(name)}: {message}")


def method_fields(method: str) -> set:
  """The config fields ``method`` reads (the others would be silently ignored).

  Dense reads none; dynamic methods the schedule, ``update_every``,
  ``scope`` and the hyper-parameters of their score rule that the config has
  (``b1``, ``b2``), and movement / soft movement ``straight_through``;
  pre-pruning methods ``prune_before_steps``, ``scope`` and their rule's
  hyper-parameters.
  """
  if method == DENSE:
    return set()
  if seven_jax.method_kind(method) == "pre":
    return {"sparsity", "prune_before_steps", "scope", "include_pooler"} | set(
      method_hparams(method)
    )
  fields = {"sparsity", "start_step", "pruning_steps", "update_every", "scope", "include_pooler"}
  if method in STRAIGHT_THROUGH_METHODS:
    fields.add("straight_through")
  return fields | set(method_hparams(method))


def _rule_name(method: str) -> Optional[str]:
  """The dynamic score rule behind ``method`` (None: a one-shot pre-pruning method)."""
  from seven_jax import scores  # pylint: disable=g-import-not-at-top

  if method == DENSE:
    return None
  if seven_jax.method_kind(method) == "pre":
    return scores.pre_method(method).rule
  return method


def method_hparams(method: str) -> tuple:
  """The config fields ``method``'s score rule takes as hyper-parameters (``b1``, ``b2``)."""
  from seven_jax import scores  # pylint: disable=g-import-not-at-top

  rule = _rule_name(method)
  if rule is None or rule not in scores.DYNAMIC_RULES:
    return ()
  return tuple(sorted(set(scores.DYNAMIC_RULES[rule].defaults) & METHOD_HPARAMS))


def window_end(cfg) -> int:
  """The step after which a dynamic method's masks are final (``t_i + N - 1``)."""
  return cfg.start_step + cfg.pruning_steps - 1


def check_config(cfg, *, explicit=(), methods=None) -> None:
  """Raises :class:`ConfigError` naming the flag for any value out of range.

  Cheap: reads no data and builds no model (the dataset registry only), so a
  command line fails in a second, not after the model is loaded.

  Args:
    cfg: a config (any :class:`ExperimentConfig` subclass).
    explicit: the fields set on the command line; a method hyper-parameter
      that no method of the run reads is an error only when it was explicit
      (a preset may carry values some methods do not use).
    methods: every method of the run (default: ``cfg.method``).
  """
  from seven_jax import data as sj_data  # pylint: disable=g-import-not-at-top

  methods = list(methods or [cfg.method])
  valid = available_methods()
  for method in methods:
    if method not in valid:
      raise _bad("method", f"unknown method {method!r}; valid methods: {', '.join(valid)}")
  for field in dataclasses.fields(cfg):
    rule = FIELD_RULES.get(field.name)
    value = getattr(cfg, field.name)
    if field.name == "eval_every" and value == -1 and isinstance(cfg, EpochConfig):
      continue  # a preset's "once per epoch", resolved by resolve_epochs
    if rule is not None and not rule.check(value):
      raise _bad(field.name, f"must be {rule.describe()}, got {value!r}")
  if cfg.task not in sj_data.datasets():
    raise _bad("task", f"unknown task {cfg.task!r}; valid: {', '.join(sj_data.datasets())}")
  splits = sj_data.get_spec(cfg.task).splits
  for split in [s.strip() for s in cfg.eval_split.split(",")]:
    if split not in splits:
      raise _bad(
        "eval_split",
        f"unknown eval split {split!r} for {cfg.task}; valid splits: {', '.join(splits)}",
      )
  if cfg.warmup_steps >= cfg.steps and cfg.warmup_steps > 0:
    raise _bad("warmup_steps", f"must be < --steps ({cfg.steps}), got {cfg.warmup_steps}")
  if cfg.stop_after >= cfg.steps:
    raise _bad("stop_after", f"must be < --steps ({cfg.steps}) or 0, got {cfg.stop_after}")
  used = set().union(*(method_fields(m) for m in methods))
  for name in sorted((set(explicit) & (METHOD_HPARAMS | METHOD_FIELDS)) - used):
    users = [m for m in valid if m != DENSE and name in method_fields(m)]
    raise _bad(
      name, f"not used by method(s) {', '.join(methods)}; it applies to {', '.join(users)}"
    )
  dynamic = [m for m in methods if m != DENSE and seven_jax.method_kind(m) != "pre"]
  if dynamic and window_end(cfg) > cfg.steps and cfg.partial_window:
    last = cfg.steps - cfg.start_step - 1  # the last window step reached
    keep = (
      seven_jax.cubic_keep_ratio(last, cfg.pruning_steps, 1.0 - cfg.sparsity) if last >= 0 else 1
    )
    print(
      f"warning: the pruning window ends at step {window_end(cfg)}, after the last step "
      f"{cfg.steps} (--partial-window): {', '.join(dynamic)} will stop at about "
      f"{1.0 - float(keep):.1%} sparsity instead of {cfg.sparsity:.1%}.",
      file=sys.stderr,
    )
  elif dynamic and window_end(cfg) > cfg.steps:
    raise ConfigError(
      f"argument --pruning-steps: the pruning window of {', '.join(dynamic)} ends at step "
      f"{window_end(cfg)} (--start-step {cfg.start_step} + --pruning-steps "
      f"{cfg.pruning_steps} - 1) but training stops at --steps {cfg.steps}: the run would end "
      "below the requested sparsity. Shorten the window, train longer, or accept it with "
      "--partial-window."
    )
  shape = mesh_shape(cfg.mesh)
  if cfg.batch_size % (shape["data"] * shape["fsdp"]):
    raise _bad(
      "batch_size",
      f"must be divisible by the {shape['data'] * shape['fsdp']} devices that split the "
      f"batch, got {cfg.batch_size}",
    )


def mesh_shape(spec: str) -> dict:
  """``"data=2,fsdp=4"`` as ``{"data": 2, "fsdp": 4}``; ``""``: every device on ``data``.

  The product must equal the number of devices (all hosts together).
  """
  devices = jax.device_count()
  if not spec:
    return {"data": devices, "fsdp": 1}
  shape = {}
  for part in spec.split(","):
    name, _, size = part.partition("=")
    name = name.strip()
    if name not in ("data", "fsdp") or name in shape or not size.strip().isdigit():
      raise _bad("mesh", f"must look like data=2,fsdp=4 (axes data and fsdp), got {spec!r}")
    shape[name] = int(size)
    if shape[name] < 1:
      raise _bad("mesh", f"axis sizes must be >= 1, got {spec!r}")
  shape.setdefault("data", 1)
  shape.setdefault("fsdp", 1)
  if shape["data"] * shape["fsdp"] != devices:
    raise _bad(
      "mesh", f"data x fsdp = {shape['data'] * shape['fsdp']} must equal the {devices} devices"
    )
  return shape


def add_config_flags(parser, defaults: ExperimentConfig, skip=()):
  """One flag per field of ``type(defaults)`` (but ``skip``); unset flags keep the preset's value."""
  import argparse  # pylint: disable=g-import-not-at-top

  for field in dataclasses.fields(type(defaults)):
    if field.name in skip:
      continue
    default = getattr(defaults, field.name)
    rule = FIELD_RULES.get(field.name)
    allowed = f"; {rule.describe()}" if rule is not None else ""
    if isinstance(default, bool):
      parser.add_argument(
        flag(field.name),
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"{FIELD_HELP.get(field.name, '')}(preset: {default})",
      )
    else:
      kind = {int: int, float: float}.get(type(default), str)
      parser.add_argument(
        flag(field.name),
        type=kind,
        default=None,
        help=f"{FIELD_HELP.get(field.name, '')}(preset: {default}{allowed})",
      )


def reject_flag(parser, name: str, reason: str) -> None:
  """``--<name>`` and ``--no-<name>`` exit with status 2 and ``reason``.

  For a boolean field left out of the flags (``rejected`` of
  :func:`experiment_parser`) because the module's model lacks the part it configures (e.g. ``include_pooler``: a ViT has no
  pooler): a message that says why, not argparse's "unrecognized arguments"
  and not a value that would be silently ignored.
  """
  import argparse  # pylint: disable=g-import-not-at-top

  class Rejected(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
      parser.error(f"argument {option_string}: {reason}")

  option = flag(name)
  parser.add_argument(
    option,
    "--no-" + option[2:],
    nargs=0,
    action=Rejected,
    default=argparse.SUPPRESS,
    help=argparse.SUPPRESS,
  )


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
  """Raises ValueError naming the flag for a config value out of range (see :func:`check_config`)."""
  check_config(cfg)


def experiment_parser(
  *,
  prog: Optional[str],
  description: str,
  presets,
  default_preset: str,
  defaults: ExperimentConfig,
  skip=(),
  rejected: Optional[dict] = None,
  epilog: Optional[str] = None,
):
  """The argparse parser of an experiment module: ``--preset``, ``--methods``, one flag per field.

  ``rejected``: field name -> reason, for boolean fields the module's model
  has nothing to apply to (e.g. ``include_pooler`` for a ViT): no flag of
  theirs is offered, and passing one exits with the reason (:func:`reject_flag`).
  """
  import argparse  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(
    prog=prog,
    description=description,
    epilog=epilog,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--preset", default=default_preset, choices=sorted(presets))
  parser.add_argument(
    "--methods",
    default=None,
    help="comma-separated methods to run in turn (default: the preset's); overrides --method",
  )
  rejected = rejected or {}
  add_config_flags(parser, defaults, skip=tuple(skip) + tuple(rejected))
  for name, reason in rejected.items():
    reject_flag(parser, name, reason)
  hosts = parser.add_argument_group(
    "several hosts", "jax.distributed.initialize(...) before anything else (CPU: gloo collectives)"
  )
  hosts.add_argument("--coordinator", default=None, help="HOST:PORT of process 0")
  hosts.add_argument("--num-processes", type=int, default=None)
  hosts.add_argument("--process-id", type=int, default=None)
  return parser


def initialize_distributed(args, parser) -> None:
  """``jax.distributed.initialize`` from ``--coordinator``/``--num-processes``/``--process-id``.

  Must run before JAX touches a device (the flags are checked right after).
  Without ``--coordinator`` on a managed cluster (TPU pods, SLURM), JAX finds
  the values itself: pass ``--coordinator auto``.
  """
  if args.coordinator is None:
    if args.num_processes is not None or args.process_id is not None:
      parser.error("argument --coordinator: needed with --num-processes / --process-id")
    return
  if args.coordinator != "auto":
    if args.num_processes is None or args.num_processes < 1:
      parser.error("argument --num-processes: an integer >= 1 is needed with --coordinator")
    if args.process_id is None or not 0 <= args.process_id < args.num_processes:
      parser.error(f"argument --process-id: must be in [0, {args.num_processes})")
  # Cross-process collectives on CPU need an implementation; GPUs and TPUs ignore it.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if args.coordinator == "auto":
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(
      coordinator_address=args.coordinator,
      num_processes=args.num_processes,
      process_id=args.process_id,
    )


def parse_configs(
  parser,
  argv,
  *,
  cls=ExperimentConfig,
  preset_values: Callable[[Any], dict],
  default_methods=None,
  check: Optional[Callable[[Any], None]] = None,
  train_size: Optional[Callable[[Any], int]] = None,
) -> list:
  """One validated config per method from the command line; flags win over presets.

  Every flag is checked (:func:`check_config`, then ``check(cfg)``) before
  ``train_size`` is asked for the size of the training split (which reads the
  dataset) and before anything else is loaded. A bad value exits with status 2
  and an argparse-style message naming the flag and the allowed values.

  Args:
    parser: from :func:`experiment_parser` (plus the module's own arguments).
    argv: the command line (None: ``sys.argv[1:]``).
    cls: the config dataclass.
    preset_values: ``args -> dict`` of field values of the chosen preset.
    default_methods: the methods when neither ``--methods`` nor ``--method``
      is given (default: the preset's method).
    check: the module's own checks of a config (raise ValueError).
    train_size: ``cfg -> examples in the training split``, for configs that
      count training in epochs (:class:`EpochConfig`).
  """
  from seven_jax import data as sj_data  # pylint: disable=g-import-not-at-top

  args = parser.parse_args(argv)
  if hasattr(args, "coordinator"):
    initialize_distributed(args, parser)
  try:
    base = config_from_args(args, preset_values(args), cls)
    explicit = explicit_fields(args, cls)
    if args.methods:
      methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    elif args.method or not default_methods:
      methods = [base.method]
    else:
      methods = list(default_methods)
    # The window check needs the final step count; epochs are resolved below.
    epochs = isinstance(base, EpochConfig) and (base.epochs > 0 or base.eval_every < 0)
    unknown_length = epochs and "steps" not in explicit
    check_config(
      dataclasses.replace(base, steps=10**12) if unknown_length else base,
      explicit=explicit,
      methods=methods,
    )
    if check is not None:
      check(base)
    for method in methods:  # the run name does not depend on the length of training
      cfg = dataclasses.replace(base, method=method)
      if cfg.resume and latest_checkpoint(cfg) is None:
        raise _bad(
          "resume",
          f"no checkpoint of run {cfg.run_name} under {checkpoint_dir(cfg)}; "
          "run without --resume to start it",
        )
    if epochs and train_size is not None:
      base = resolve_epochs(base, train_size(base), explicit=explicit)
      check_config(base, explicit=explicit, methods=methods)
    configs = [dataclasses.replace(base, method=m) for m in methods]
  except (ValueError, sj_data.DatasetUnavailableError) as e:
    parser.error(str(e))
  return configs


def checkpoint_dir(cfg) -> pathlib.Path:
  return pathlib.Path(cfg.out) / cfg.run_name / "checkpoints"


def latest_checkpoint(cfg) -> Optional[int]:
  """The newest saved step of ``cfg``'s run (a directory listing, no orbax), or None."""
  directory = checkpoint_dir(cfg)
  if not directory.is_dir():
    return None
  steps = [int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit()]
  return max(steps, default=None)


def configs_from_cli(
  argv,
  description: str,
  presets: dict,
  default_methods,
  default_preset: str = "cpu-quick",
  rejected: Optional[dict] = None,
) -> list[ExperimentConfig]:
  """The command line of a module whose presets are plain dicts (text, vision);
  ``rejected`` as in :func:`experiment_parser`."""
  parser = experiment_parser(
    prog=None,
    description=description,
    presets=presets,
    default_preset=default_preset,
    defaults=ExperimentConfig(**presets[default_preset]),
    rejected=rejected,
  )
  return parse_configs(
    parser,
    argv,
    preset_values=lambda args: presets[args.preset],
    default_methods=default_methods,
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


def run_and_report(configs, build_task, *, metrics=None, details: str = "") -> list[dict]:
  """Runs every config in turn and prints one markdown table per metric.

  A run whose loss becomes non-finite ends the command with exit status 1 and
  the message of :class:`TrainingDiverged` (no traceback).
  """
  base = configs[0]
  print("config:", json.dumps(dataclasses.asdict(base)))
  rows = []
  for cfg in configs:
    try:
      rows.append(run(cfg, build_task(cfg)))
    except TrainingDiverged as e:
      raise SystemExit(f"error: {e}") from None
  print(
    f"\n{base.task} ({base.eval_split}), {base.steps} steps, batch {base.batch_size}"
    f"{details}, {jax.device_count()} device(s)"
  )
  for metric in metrics or [rows[0]["primary_metric"]]:
    print(markdown_table(rows, metric))
  return rows
