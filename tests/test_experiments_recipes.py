"""Recipes of the experiment loop: learning-rate schedules, the weight-decay mask,
pre-pruned runs that start on the pruned weights, and runs that diverge."""

import dataclasses
import gc
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import seven_jax
from benchmarks import loop as bench
from experiments import common


def _cfg(**kw):
  base = dict(task="rotten_tomatoes", lr=1e-3, steps=10, warmup_steps=0, lr_schedule="constant")
  return common.ExperimentConfig(**{**base, **kw})


@pytest.mark.parametrize("schedule", ["constant", "linear"])
@pytest.mark.parametrize("warmup", [0, 3])
def test_learning_rate_schedule_matches_the_formula(schedule, warmup):
  cfg = _cfg(lr_schedule=schedule, warmup_steps=warmup)
  lr = common.learning_rate(cfg)
  got = np.array([float(lr(t)) for t in range(cfg.steps)])
  t = np.arange(cfg.steps, dtype=np.float64)
  after = np.full_like(t, 1e-3) if schedule == "constant" else 1e-3 * (10 - t) / (10 - warmup)
  want = np.where(t < warmup, 1e-3 * t / max(warmup, 1), after)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)


def test_weight_decay_skips_biases_and_layernorm_of_bert():
  task = bench.make_task("tiny")
  params = nnx.state(task.model, nnx.Param)
  mask = common.decay_mask(params)
  flat = {jax.tree_util.keystr(p): bool(m) for p, m in jax.tree_util.tree_leaves_with_path(mask)}
  leaf = lambda k: re.findall(r"\['(\w+)'\]", k)[-1]  # noqa: E731 - the leaf's own name
  norms = [k for k in flat if "LayerNorm" in k]
  biases = [k for k in flat if leaf(k) in ("bias", "scale")]
  kernels = [k for k in flat if leaf(k) in ("kernel", "embedding")]
  assert len(kernels) + len(biases) == len(flat)
  assert norms and biases and kernels
  assert not any(flat[k] for k in norms + biases)
  assert all(flat[k] for k in kernels)
  # And AdamW applies it: with a zero gradient only the decayed leaves move.
  tx = common.inner_optimizer(_cfg(weight_decay=0.1, lr=0.5))
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  moved = {
    jax.tree_util.keystr(p): bool(jnp.any(u != 0))
    for p, u in jax.tree_util.tree_leaves_with_path(updates)
  }
  assert moved == {k: flat[k] and v for k, v in moved.items()} and any(moved.values())


def _run(tmp_path, method, **kw):
  task = bench.make_task("tiny", dropout=0.0)
  params = nnx.state(task.model, nnx.Param)
  if method != "dense":
    task.prepruning = lambda: seven_jax.prune_before_finetuning(
      None, params, None, sparsity=0.7, method=method, prunable=task.prunable
    )
  cfg = dataclasses.replace(
    _cfg(method=method, sparsity=0.7, steps=2, out=str(tmp_path), log_every=1), **kw
  )
  return common.run(cfg, task), task, tmp_path / cfg.run_name


def _step_losses(run_dir):
  lines = (run_dir / "log.jsonl").read_text().splitlines()
  return [r["loss"] for r in map(json.loads, lines) if "loss" in r]


def test_pre_pruned_run_starts_on_the_pruned_weights(tmp_path):
  dense, _, dense_dir = _run(tmp_path, "dense")
  pruned, _, pruned_dir = _run(tmp_path, "magnitude_pre")
  assert pruned["sparsity"] == pytest.approx(0.7, abs=1e-3)
  # An independent forward pass: a fresh model (same seed), magnitude pruning's
  # masks (deterministic) applied by hand with numpy, the first batch. It is the
  # loss the run logged at step 1.
  task = bench.make_task("tiny", dropout=0.0)
  graphdef, params, rest = nnx.split(task.model, nnx.Param, ...)
  masks = seven_jax.prune_before_finetuning(
    None, params, None, sparsity=0.7, method="magnitude_pre", prunable=task.prunable
  )
  zeroed = jax.tree.map(lambda m, x: jnp.asarray(np.where(np.asarray(m), x, 0)), masks, params)
  saved = np.load(pruned_dir / "masks.npz")
  pruned_weights = sum(int((~saved[k]).sum()) for k in saved.files)
  assert pruned_weights == sum(int((~np.asarray(m)).sum()) for m in jax.tree.leaves(masks)) > 0
  batch = {k: jnp.asarray(v) for k, v in task.train_batches.batches[0].items()}
  expected = float(task.loss_fn(nnx.merge(graphdef, zeroed, rest), batch))
  dense_first = float(task.loss_fn(nnx.merge(graphdef, params, rest), batch))
  first = _step_losses(pruned_dir)[0]
  assert first == pytest.approx(expected, rel=1e-5)
  assert _step_losses(dense_dir)[0] == pytest.approx(dense_first, rel=1e-5)
  assert abs(first - dense_first) > 1e-4  # step 1 did not run on the dense weights


def test_zero_pruned_sets_exactly_the_pruned_weights_to_zero():
  params = {"w": jnp.arange(1.0, 7.0).reshape(2, 3), "b": jnp.ones(3)}
  masks = {"w": jnp.array([[True, False, True], [False, True, True]]), "b": optax.MaskedNode()}
  out = common.zero_pruned(params, masks)
  np.testing.assert_array_equal(out["w"], [[1, 0, 3], [0, 5, 6]])
  np.testing.assert_array_equal(out["b"], params["b"])


def _task_with_nan_at_step_3():
  task = bench.make_task("tiny", dropout=0.0)
  for i, batch in enumerate(task.train_batches.batches):
    batch["scale"] = np.float32(np.nan if i == 2 else 1.0)  # the third step's loss is NaN
  inner_loss = task.loss_fn
  task.loss_fn = lambda model, batch: inner_loss(model, batch) * batch["scale"]
  return task


def test_a_non_finite_loss_stops_the_run_before_any_checkpoint_holds_it(tmp_path, capsys):
  task = _task_with_nan_at_step_3()
  cfg = _cfg(method="dense", steps=8, out=str(tmp_path), checkpoint_every=1, log_every=4)
  with pytest.raises(common.TrainingDiverged, match="the loss became nan at step 3"):
    common.run(cfg, task)
  assert gc.get_freeze_count() == 0  # the loop's gc.freeze() is undone on the way out
  saved = sorted(int(p.name) for p in (tmp_path / cfg.run_name / "checkpoints").iterdir())
  assert saved and max(saved) < 3, saved
  # The command line ends with status 1 and the message, without a traceback.
  # A fresh task: the first run donated the model's buffers to its steps.
  with pytest.raises(SystemExit) as info:
    common.run_and_report(
      [dataclasses.replace(cfg, out=str(tmp_path / "cli"))], lambda c: _task_with_nan_at_step_3()
    )
  assert "error: the loss became nan at step 3" in str(info.value.code)


@pytest.mark.parametrize("include_pooler", [True, False])
def test_results_record_the_majority_rate_and_the_prunable_set(tmp_path, include_pooler):
  from seven_jax.models import bert

  task = bench.make_task("tiny", dropout=0.0)
  params = nnx.state(task.model, nnx.Param)
  task.prunable = bert.prunable(params, include_pooler=include_pooler)
  cfg = _cfg(method="dense", steps=1, out=str(tmp_path), log_every=1)
  result = common.run(cfg, task)
  saved = json.loads((tmp_path / cfg.run_name / "results.json").read_text())
  # eval_batches is the first training batch: its most frequent label's share.
  labels = task.train_batches.batches[0]["labels"]
  assert saved["majority_rate"] == pytest.approx(np.bincount(labels).max() / len(labels))
  flags = [bool(f) for f in jax.tree.leaves(task.prunable)]
  sizes = [np.size(p) for p in jax.tree.leaves(params)]
  assert saved["prunable_leaves"] == sum(flags) == result["prunable_leaves"]
  assert saved["prunable_weights"] == sum(s for s, f in zip(sizes, flags) if f)
  assert saved["include_pooler"] is include_pooler
  assert saved["straight_through"] is False and saved["config"]["scope"] == "global"
  assert gc.get_freeze_count() == 0


def test_majority_rate_leaves_out_padding_and_regression():
  task = bench.make_task("tiny", dropout=0.0)
  batch = {"labels": np.array([1, 1, 0, 2, 2, 2]), "example_mask": np.array([1, 1, 1, 1, 0, 0])}
  task.eval_batches = lambda: iter([dict(batch), {"labels": np.array([0, 0])}])
  assert common.majority_rate(task) == pytest.approx(3 / 6)  # label 0: 3 of the 6 valid rows
  task.eval_batches = lambda: iter([{"labels": np.array([0.5, 1.5], np.float32)}])
  assert common.majority_rate(task) is None
