"""Fine-tune and prune BERT on a GLUE task with the official per-task settings.

::

    python -m experiments.glue --task mrpc                       # SEVEN_dyn, preset "paper"
    python -m experiments.glue --task rte --methods dense,seven,magnitude --seed 1
    python -m experiments.glue --task sst2 --model /path/to/bert-base-uncased

Tasks: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte (the tfds datasets
``glue/<task>``; prepare them once with ``python -m seven_jax.data prepare
glue/<task>`` on a machine with internet). The model defaults to the offline
all-MiniLM-L6-v2; the paper used ``bert-base-uncased`` (``--model DIR``).

Presets (``--preset``; every flag you pass wins over the preset):

* ``paper`` (default): the official per-task table of SEVEN (spec 2.5):
  t_i (``--start-step``), N (``--pruning-steps``) and target sparsity per task,
  AdamW with lr 2e-5 and no weight decay, batch 32, max_len 128, seed 3404,
  evaluation on the dev split once per epoch, 10 epochs, except RTE (20) and
  STS-B (16): with the official 10 epochs their pruning window (t_i + N - 2 =
  1198 and 2498 steps, i.e. epoch 15.4 and 13.9) never finishes, so they would
  stop at about 55.6% and 47.9% sparsity instead of 60% and 50%. The extra
  epochs let the window finish and leave a few epochs of fine-tuning at the
  target, like the other tasks.
* ``paper-10ep``: the same with 10 epochs for every task, as the official code
  runs them (RTE and STS-B then end below their target sparsity).
* ``cpu-quick``: a few hundred short steps for a smoke test on a CPU (the
  schedule scaled down; numbers are not comparable to the paper).

MNLI is evaluated on ``validation_matched`` (the primary ``accuracy``) and
``validation_mismatched`` (``validation_mismatched/accuracy``). Outputs as in
:mod:`experiments.text` (``results.json``, ``log.jsonl``, TensorBoard,
``curves.png``, ``masks.npz``, checkpoints; ``--resume`` continues).
"""

from __future__ import annotations

import argparse


from experiments import common, text
from seven_jax import data as sj_data

# Official per-task table (spec 2.5): t_i, N, target sparsity, and the train
# size that fixes the number of steps per epoch at batch 32.
OFFICIAL = {
  "mnli": dict(start_step=5400, pruning_steps=16600, sparsity=0.70, train_size=392_702),
  "qqp": dict(start_step=5400, pruning_steps=16600, sparsity=0.90, train_size=363_846),
  "qnli": dict(start_step=2000, pruning_steps=12000, sparsity=0.70, train_size=104_743),
  "sst2": dict(start_step=1000, pruning_steps=4000, sparsity=0.60, train_size=67_349),
  "cola": dict(start_step=500, pruning_steps=1000, sparsity=0.50, train_size=8_551),
  "stsb": dict(start_step=500, pruning_steps=2000, sparsity=0.50, train_size=5_749),
  "mrpc": dict(start_step=300, pruning_steps=600, sparsity=0.50, train_size=3_668),
  "rte": dict(start_step=200, pruning_steps=1000, sparsity=0.60, train_size=2_490),
}
TASKS = tuple(OFFICIAL)
# Epochs for the "paper" preset: 10 as the official code, more where the
# pruning window would not finish in 10 (see the module docstring).
PAPER_EPOCHS = {task: 10 for task in TASKS} | {"rte": 20, "stsb": 16}
DEFAULT_METHODS = ("seven",)


def eval_split(task: str) -> str:
  """The dev split(s); MNLI has a matched and a mismatched one."""
  return "validation_matched,validation_mismatched" if task == "mnli" else "validation"


def preset(name: str, task: str) -> dict:
  """The named preset for ``task`` as ``common.EpochConfig`` field values.

  ``eval_every=-1`` means once per epoch; ``epochs`` sets ``steps`` once the
  training split's size is known (both unless given on the command line).
  """
  if name not in PRESETS:
    raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}")
  if task not in OFFICIAL:
    raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
  return PRESETS[name](task)


def _paper(task: str, epochs: float) -> dict:
  official = {k: v for k, v in OFFICIAL[task].items() if k != "train_size"}
  return dict(
    task=f"glue/{task}",
    method="seven",
    lr=2e-5,
    weight_decay=0.0,
    batch_size=32,
    max_len=128,
    b1=0.8,
    b2=0.9,
    update_every=1,
    seed=3404,
    epochs=epochs,
    steps=1,
    eval_every=-1,
    eval_split=eval_split(task),
    **official,
  )


def _cpu_quick(task: str) -> dict:
  # The official schedule shrunk so the window (start + N - 2) ends at 2/3 of training.
  return dict(
    _paper(task, 0),
    max_len=64,
    batch_size=16,
    steps=300,
    start_step=50,
    pruning_steps=152,
    eval_every=100,
    eval_examples=256,
    lr=5e-5,
  )


PRESETS = {
  "paper": lambda task: _paper(task, PAPER_EPOCHS[task]),
  # The official code's 10 epochs; RTE's and STS-B's windows do not finish (accepted).
  "paper-10ep": lambda task: dict(_paper(task, 10), partial_window=True),
  "cpu-quick": _cpu_quick,
}


def parser() -> argparse.ArgumentParser:
  table = "\n".join(
    f"  {t:5s} t_i={o['start_step']:<5d} N={o['pruning_steps']:<6d} sparsity={o['sparsity']:.2f} "
    f"epochs={PAPER_EPOCHS[t]}"
    for t, o in OFFICIAL.items()
  )
  p = common.experiment_parser(
    prog="python -m experiments.glue",
    description=__doc__.splitlines()[0],
    presets=PRESETS,
    default_preset="paper",
    # --task is the short GLUE name below, so it is not a config-field flag here.
    defaults=common.EpochConfig(**preset("paper", "mrpc")),
    skip=("task",),
    epilog="The 'paper' preset per task (the flag help shows MRPC's values; "
    "lr 2e-5, batch 32, max_len 128 for all):\n" + table,
  )
  p.add_argument("--task", required=True, choices=TASKS, help="GLUE task")
  return p


def configs_from_args(argv=None):
  """Parses the command line into one validated config per method."""

  def preset_values(args):
    values = preset(args.preset, args.task)
    args.task = None  # the config's task is glue/<name>, from the preset
    return values

  return common.parse_configs(
    parser(),
    argv,
    cls=common.EpochConfig,
    preset_values=preset_values,
    train_size=lambda cfg: len(sj_data.get_dataset(cfg.task, "train")),
  )


def main(argv=None):
  configs = configs_from_args(argv)
  return common.run_and_report(configs, text.build_task, details=f", max_len {configs[0].max_len}")


if __name__ == "__main__":
  main()
