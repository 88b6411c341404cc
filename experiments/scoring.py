"""The loss a pre-pruning method scores with: dropout as the method's paper has it.

A pre-pruning score is a function of the model's gradients, and a BERT or ViT
in training mode is a random function of its weights: every dropout layer
draws a new mask. Scoring with one fixed dropout key for every batch (what a
functional ``nnx.merge`` of the same RNG state does by default) scores one
sub-network, not the model, and freezes part of the noise SEVEN_pre averages
over. Each method therefore says how it scores
(:attr:`seven_jax.scores.PreMethod.dropout`):

``"train"``
  dropout on, a fresh dropout key per scoring batch (``fold_in(key, i)`` for
  batch ``i``). The PyTorch reference loops score with ``model.train()``, where
  dropout draws new masks at every forward pass. GraSP's Hessian-gradient
  product uses one key for both passes of a batch (one function).
``"eval"``
  dropout off: the deterministic model (SynFlow, data-free).
``None``
  the method reads no loss (magnitude, random).

:func:`scoring_loss` builds the ``(params, batch) -> loss`` function and
:func:`keyed_batches` attaches the per-batch key; both are used by every
experiment module's ``prepruning`` and by the study's gradient statistics.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional

import jax
import jax.numpy as jnp
from flax import nnx

import seven_jax
from seven_jax import scores

DROPOUT_KEY = "_dropout_key"
"""Batch entry holding the raw dropout key of a ``"train"``-mode scoring batch."""


def dropout_mode(method: str) -> Optional[str]:
  """``"train"``, ``"eval"`` or ``None``: how ``method`` scores (see the module docstring)."""
  return scores.pre_method(method).dropout


def _rng_tags(rest) -> set:
  is_key = lambda x: isinstance(x, nnx.RngKey)
  return {v.tag for v in jax.tree.leaves(rest, is_leaf=is_key) if is_key(v)}


def scoring_loss(model: nnx.Module, loss_fn: Callable, mode: Optional[str]):
  """``(loss(params, batch), params)`` for scoring ``model`` in ``mode``.

  Args:
    model: the NNX model (not modified).
    loss_fn: ``(model, batch) -> scalar``, the task's training loss.
    mode: ``"train"`` (batches must carry :data:`DROPOUT_KEY`, see
      :func:`keyed_batches`), ``"eval"`` or ``None`` (treated as ``"eval"``).
  """
  if mode not in ("train", "eval", None):
    raise ValueError(f"mode must be 'train', 'eval' or None, got {mode!r}")
  if mode == "train":
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tags = _rng_tags(rest)

    def loss(p, batch):
      batch = dict(batch)
      if DROPOUT_KEY not in batch:
        raise ValueError(
          f"a 'train'-mode scoring batch needs its dropout key under {DROPOUT_KEY!r} "
          "(wrap the batches with experiments.scoring.keyed_batches)"
        )
      key = jnp.asarray(batch.pop(DROPOUT_KEY))
      m = nnx.merge(graphdef, p, rest, copy=True)
      if tags:
        nnx.reseed(m, **{tag: key for tag in tags})
      return loss_fn(m, {k: jnp.asarray(v) for k, v in batch.items()})

    return loss, params
  scorer = nnx.merge(*nnx.split(model, nnx.Param, ...), copy=True)
  scorer.eval()  # dropout off; the graph definition records it
  graphdef, params, rest = nnx.split(scorer, nnx.Param, ...)

  def loss(p, batch):
    batch = {k: jnp.asarray(v) for k, v in batch.items() if k != DROPOUT_KEY}
    return loss_fn(nnx.merge(graphdef, p, rest, copy=True), batch)

  return loss, params


def keyed_batches(batches: Iterable[dict], seed: int) -> Iterator[dict]:
  """``batches`` with a fresh raw dropout key per batch: ``fold_in(key(seed), i)``."""
  base = jax.random.key(seed)
  for i, batch in enumerate(batches):
    yield {**batch, DROPOUT_KEY: jax.random.key_data(jax.random.fold_in(base, i))}


def prune_model(model, loss_fn, batches, cfg, prunable, **method_kwargs):
  """SEVEN_pre / SNIP / ... on ``model`` with the method's dropout policy (experiments' ``prepruning``)."""
  mode = dropout_mode(cfg.method)
  loss, params = scoring_loss(model, loss_fn, mode)
  if mode == "train":
    batches = keyed_batches(batches, cfg.seed + 2)
  return seven_jax.prune_before_finetuning(
    loss,
    params,
    batches,
    sparsity=cfg.sparsity,
    method=cfg.method,
    steps=cfg.prune_before_steps,
    prunable=prunable,
    **method_kwargs,
  )
