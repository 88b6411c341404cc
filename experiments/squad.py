"""Fine-tune and prune BERT for extractive question answering on SQuAD v1.1.

::

    python -m experiments.squad                                  # SEVEN_dyn, preset "paper"
    python -m experiments.squad --methods dense,seven,magnitude --sparsity 0.8
    python -m experiments.squad --model /path/to/bert-base-uncased

The data is the tfds dataset ``squad/v1.1`` (prepare it once with
``python -m seven_jax.data prepare squad/v1.1`` on a machine with internet).
Each question/context pair is tokenized into windows of ``--max-len`` tokens
overlapping by ``--doc-stride`` (the *features*); training runs over features
with the span loss (mean start/end cross-entropy), and evaluation merges the
windows of every dev question, decodes the best valid span (``--n-best``,
``--max-answer-length``) and reports SQuAD exact match and F1 (0-100; F1 is the
primary metric, the likeliest reading of the paper's SQuAD figure, spec 4.2).

Presets (``--preset``; every flag you pass wins over the preset):

* ``paper`` (default): lr 2e-5, batch 32, AdamW without weight decay, seed
  3404 as the paper's GLUE runs; max_len 384 and doc_stride 128 and 2 epochs
  as BERT's SQuAD recipe; evaluation once per epoch. The paper gives no SQuAD
  pruning schedule (its SQuAD figure is pre-pruning); for SEVEN_dyn this preset
  uses t_i = 1000 and N = 3000 at 50% sparsity, so that the window ends at
  about 70% of the ~5,500 steps. ``--sparsity`` sweeps the figure's 0.1-0.9.
* ``cpu-quick``: a smoke test on a CPU (short windows, a few hundred steps,
  256 dev questions).

Outputs as in :mod:`experiments.text` (``results.json``, ``log.jsonl``,
TensorBoard, ``curves.png``, ``masks.npz``, checkpoints; ``--resume``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools

import numpy as np
from flax import nnx

from experiments import common, scoring
from seven_jax import data as sj_data
from seven_jax import metrics as sj_metrics

TASK_KIND = "extractive_qa"


@dataclasses.dataclass
class SquadConfig(common.EpochConfig):
  """:class:`common.ExperimentConfig` plus the SQuAD windowing and decoding settings."""

  doc_stride: int = 128  # tokens of overlap between windows of one context
  n_best: int = 20  # candidate spans kept per window when decoding
  max_answer_length: int = 30  # longest answer span, in tokens


PRESETS = {
  "paper": dict(
    task="squad/v1.1",
    method="seven",
    lr=2e-5,
    weight_decay=0.0,
    batch_size=32,
    max_len=384,
    doc_stride=128,
    epochs=2,
    steps=1,
    eval_every=-1,
    eval_split="validation",
    start_step=1000,
    pruning_steps=3000,
    sparsity=0.5,
    seed=3404,
  ),
  "cpu-quick": dict(
    task="squad/v1.1",
    method="seven",
    lr=5e-5,
    weight_decay=0.0,
    batch_size=16,
    max_len=128,
    doc_stride=48,
    steps=300,
    eval_every=100,
    eval_examples=256,
    eval_split="validation",
    start_step=50,
    pruning_steps=152,
    sparsity=0.5,
    seed=3404,
  ),
}


def qa_tasks() -> list:
  """Registered datasets this module can train on."""
  return [n for n in sj_data.datasets() if sj_data.get_spec(n).task == TASK_KIND]


def _model_path(cfg):
  from seven_jax.models import bert

  return str(cfg.model or bert.default_model_path())


@functools.lru_cache(maxsize=4)
def _features(task: str, split: str, model: str, max_len: int, doc_stride: int, limit: int):
  """Examples and features of a split; cached so steps/epoch and training share one pass."""
  from seven_jax.models import bert

  dataset = sj_data.get_dataset(task, split)
  n = min(limit, len(dataset)) if limit else len(dataset)
  examples = [dataset[i] for i in range(n)]
  features = sj_data.prepare_squad_features(
    examples, bert.load_tokenizer(model), max_len=max_len, doc_stride=doc_stride
  )
  return examples, features


def train_features(cfg: SquadConfig):
  return _features(cfg.task, "train", _model_path(cfg), cfg.max_len, cfg.doc_stride, 0)[1]


def build_task(cfg: SquadConfig) -> common.Task:
  """BERT with a span head; evaluation decodes answers and scores EM and F1."""
  from seven_jax.models import bert

  path = _model_path(cfg)
  model = bert.from_pretrained(path, task="question_answering", seed=cfg.seed)
  prunable = bert.prunable(nnx.state(model, nnx.Param))  # no pooler in the QA model
  train = train_features(cfg)
  examples, dev = _features(
    cfg.task, cfg.eval_split, path, cfg.max_len, cfg.doc_stride, cfg.eval_examples
  )
  contexts = {e["id"]: e["context"] for e in examples}
  # Real SQuAD v1.1 has >= 1 gold answer per question; tfds mock data may not.
  gold = {e["id"]: e["answers"]["text"] for e in examples if e["answers"]["text"]}
  train_batches = sj_data.squad_batches(train, cfg.batch_size, seed=cfg.seed, num_epochs=None)

  def logits(model, batch):
    return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])

  def loss_fn(model, batch):
    start, end = logits(model, batch)
    return bert.span_loss(start, end, batch["start_positions"], batch["end_positions"])

  def eval_batches():
    return sj_data.squad_batches(dev, 64, shuffle=False, drop_remainder=False, pad_final_batch=True)

  def evaluate(model, mesh):
    outputs = []
    for batch in eval_batches():
      feature_index = batch.pop("feature_index")
      start, end = common.predict(model, batch, logits, mesh)
      outputs.append((feature_index, np.asarray(start), np.asarray(end)))
    start, end = sj_data.assemble_logits(outputs, len(dev), dev.max_len)
    predictions = sj_metrics.decode_squad_predictions(
      start, end, dev, contexts, n_best=cfg.n_best, max_answer_length=cfg.max_answer_length
    )
    scores = sj_metrics.squad_scores(predictions, gold)
    return {"f1": scores["f1"], "exact_match": scores["exact_match"]}

  def prepruning():
    batches = sj_data.squad_batches(train, cfg.batch_size, seed=cfg.seed + 1, num_epochs=None)
    # Dropout as the method scores (experiments.scoring): a fresh key per batch
    # for the gradient scores, off for SynFlow.
    return scoring.prune_model(model, loss_fn, batches, cfg, prunable, **common.method_kwargs(cfg))

  return common.Task(
    model=model,
    prunable=prunable,
    train_batches=train_batches,
    eval_batches=eval_batches,
    loss_fn=loss_fn,
    predict_fn=logits,
    metric_names=("f1", "exact_match"),
    prepruning=prepruning,
    evaluate=evaluate,
  )


def parser() -> argparse.ArgumentParser:
  return common.experiment_parser(
    prog="python -m experiments.squad",
    description=__doc__.splitlines()[0],
    presets=PRESETS,
    default_preset="paper",
    defaults=SquadConfig(**PRESETS["paper"]),
    # BertForQuestionAnswering has no pooler (as Hugging Face's): nothing to include.
    rejected={
      "include_pooler": "BERT for question answering has no pooler (the span head reads every "
      "token); the flag applies to the BERT classifiers (experiments.text, experiments.glue)"
    },
  )


def check(cfg: SquadConfig) -> None:
  """SQuAD's own flags (the shared ones are checked by :func:`common.check_config`)."""
  valid = qa_tasks()
  if cfg.task not in valid:
    raise ValueError(f"argument --task: unknown task {cfg.task!r}; valid tasks: {', '.join(valid)}")
  if not 0 < cfg.doc_stride < cfg.max_len:
    raise ValueError(
      f"argument --doc-stride: doc_stride must be in (0, max_len={cfg.max_len}), "
      f"got {cfg.doc_stride}"
    )


def configs_from_args(argv=None):
  """Parses the command line into one validated config per method."""
  return common.parse_configs(
    parser(),
    argv,
    cls=SquadConfig,
    preset_values=lambda args: PRESETS[args.preset],
    check=check,
    # Steps per epoch count features (windows), not questions.
    train_size=lambda cfg: len(train_features(cfg)),
  )


def main(argv=None):
  configs = configs_from_args(argv)
  base = configs[0]
  return common.run_and_report(
    configs,
    build_task,
    metrics=("f1", "exact_match"),
    details=f", max_len {base.max_len}, doc_stride {base.doc_stride}",
  )


if __name__ == "__main__":
  main()
