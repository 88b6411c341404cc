"""Prune a ViT while training it on an image-classification task.

::

    python -m experiments.vision --task fashion_mnist --methods dense,seven

The paper prunes a pre-trained ViT-B/32 on ImageNet (``--task imagenet2012
--model <HF ViT checkpoint dir> --preset paper-imagenet`` on an accelerator,
after preparing the data with ``python -m seven_jax.data prepare imagenet2012``).
No pre-trained ViT weights exist offline, so the offline presets train a small
ViT from scratch on real images that ship with packages (digits, MNIST-5k,
Fashion-MNIST). Outputs as in :mod:`experiments.text`.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
from flax import nnx

from experiments import common
from seven_jax import data as sj_data

PRESETS = {
  "cpu-quick": dict(
    task="digits",
    batch_size=64,
    steps=300,
    start_step=50,
    pruning_steps=150,
    sparsity=0.5,
    lr=1e-3,
    weight_decay=1e-4,
    eval_split="test",
  ),
  "paper-imagenet": dict(
    task="imagenet2012",
    batch_size=32,
    steps=20000,
    start_step=2000,
    pruning_steps=10000,
    sparsity=0.5,
    lr=2e-5,
    eval_every=2000,
    eval_split="validation",
  ),
}
DEFAULT_METHODS = ("dense", "seven")
# A small ViT for the offline image sets (8x8 to 28x28 greys), trained from scratch.
SMALL_VIT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)


def build_task(cfg: common.ExperimentConfig, vit_overrides: dict | None = None) -> common.Task:
  from seven_jax.models import vit

  spec = sj_data.get_spec(cfg.task)
  if spec.task != "image_classification":
    raise ValueError(
      f"task {cfg.task!r} is {spec.task}; experiments.vision handles image_classification"
    )
  train = sj_data.get_dataset(cfg.task, "train")
  evaluation = sj_data.get_dataset(cfg.task, cfg.eval_split)
  if cfg.model:
    model = vit.from_pretrained(
      cfg.model, task="image_classification", num_labels=spec.num_labels, seed=cfg.seed
    )
    size = (model.config.image_size, model.config.image_size)
  else:
    height, width, channels = spec.image_shape or (32, 32, 3)
    patch = 2 if height <= 8 else 4 if height <= 32 else 16
    config = vit.ViTConfig(
      image_size=height,
      patch_size=patch,
      num_channels=channels,
      num_labels=spec.num_labels,
      **{**SMALL_VIT, **(vit_overrides or {})},
    )
    model = vit.ViTForImageClassification(config, rngs=nnx.Rngs(cfg.seed))
    size = None
  prunable = vit.prunable(nnx.state(model, nnx.Param))
  train_batches = sj_data.image_batches(
    train, cfg.batch_size, image_size=size, seed=cfg.seed, num_epochs=None
  )

  def eval_batches():
    return sj_data.image_batches(
      evaluation, 128, image_size=size, shuffle=False, drop_remainder=False, pad_final_batch=True
    )

  def logits(model, batch):
    return model(batch["pixels"], channels_last=True)

  def loss_fn(model, batch):
    logp = jax.nn.log_softmax(logits(model, batch), -1)
    return -jnp.mean(jnp.take_along_axis(logp, batch["labels"][:, None], -1))

  def predict_fn(model, batch):
    return jnp.argmax(logits(model, batch), -1)

  return common.Task(
    model=model,
    prunable=prunable,
    train_batches=train_batches,
    eval_batches=eval_batches,
    loss_fn=loss_fn,
    predict_fn=predict_fn,
    metric_names=spec.metrics,
  )


def main(argv=None):
  configs = common.configs_from_cli(
    argv,
    __doc__.splitlines()[0],
    PRESETS,
    DEFAULT_METHODS,
    rejected={
      "include_pooler": "a ViT has no pooler; the flag applies to the BERT classifiers "
      "(experiments.text, experiments.glue)"
    },
  )
  return common.run_and_report(configs, build_task)


if __name__ == "__main__":
  main()
