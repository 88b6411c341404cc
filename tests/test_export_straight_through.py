"""An exported straight-through (movement) run holds exact zeros where it prunes.

Inside the pruning window the run keeps the dense weights (the straight-through
estimator needs them); ``export_pruned`` with the run's masks must still write
every pruned weight as exactly 0, and the model the run hands back computes
with ``W * M`` already.
"""

import dataclasses

import jax
import numpy as np
from flax import nnx
from safetensors.numpy import load_file

import seven_jax
from benchmarks import loop as bench
from experiments import common
from seven_jax.export import export_pruned
from seven_jax.models import _hf


def test_exported_movement_run_has_exact_zeros_where_pruned(tmp_path):
  cfg = common.ExperimentConfig(
    task="rotten_tomatoes",
    method="movement",
    sparsity=0.6,
    start_step=0,
    pruning_steps=6,
    steps=8,
    stop_after=3,  # inside the window: params still hold the dense pruned weights
    lr=1e-3,
    log_every=1,
    out=str(tmp_path / "runs"),
  )
  task = bench.make_task("tiny", dropout=0.0)
  result = common.run(cfg, task)
  assert result["straight_through"] and result["stopped_early"]
  # The checkpoint: dense weights and the masks of the state.
  fresh = bench.make_task("tiny", dropout=0.0)
  _, params, rest = nnx.split(fresh.model, nnx.Param, ...)
  opt_state = common.make_optimizer(cfg, fresh.prunable).init(params)
  target = common._checkpoint_tree(params, rest, opt_state, 0, {"epoch": 0, "index": 0})
  with seven_jax.CheckpointManager(common.checkpoint_dir(cfg)) as manager:
    restored = manager.restore(jax.eval_shape(lambda: target))
  dense, masks = restored["params"], seven_jax.masks(restored["opt_state"])
  flat_masks = {
    _hf.path_names(p): np.asarray(m)
    for p, m in jax.tree_util.tree_leaves_with_path(masks)
    if isinstance(m, jax.Array)
  }
  flat_dense = {
    _hf.path_names(p): np.asarray(w) for p, w in jax.tree_util.tree_leaves_with_path(dense)
  }
  pruned = sum(int((~m).sum()) for m in flat_masks.values())
  assert pruned > 0
  assert any((flat_dense[n][~m] != 0).any() for n, m in flat_masks.items())  # kept dense

  config = task.model.config
  report = export_pruned(dense, config, tmp_path / "from_dense", masks=masks)
  tensors = load_file(str(tmp_path / "from_dense" / _hf.SAFETENSORS))
  for names, m in flat_masks.items():
    key, _ = _hf.torch_key(names)
    expected = np.where(m, flat_dense[names], 0.0).astype(np.float32)
    np.testing.assert_array_equal(tensors[key], _hf.to_torch_layout(names, expected))
    assert np.all(tensors[key][~_hf.to_torch_layout(names, m)] == 0.0)
  assert report["zero_weights"] >= pruned
  # The model the run returned computes with W * M: the same export without masks.
  export_pruned(task.model, config, tmp_path / "from_model")
  again = load_file(str(tmp_path / "from_model" / _hf.SAFETENSORS))
  assert again.keys() == tensors.keys()
  for key in tensors:
    np.testing.assert_array_equal(again[key], tensors[key])
  # Finishing the run (past the window) zeroes the weights themselves.
  resumed = bench.make_task("tiny", dropout=0.0)
  finished = common.run(dataclasses.replace(cfg, stop_after=0, resume=True), resumed)
  assert finished["frozen_at"] == cfg.start_step + cfg.pruning_steps - 1
  final = {
    _hf.path_names(p): np.asarray(w)
    for p, w in jax.tree_util.tree_leaves_with_path(nnx.state(resumed.model, nnx.Param))
  }
  saved = np.load(tmp_path / "runs" / cfg.run_name / "masks.npz")
  assert saved.files
  for path, m in jax.tree_util.tree_leaves_with_path(masks):
    if isinstance(m, jax.Array):
      final_mask = saved[jax.tree_util.keystr(path)]
      assert np.all(final[_hf.path_names(path)][~final_mask] == 0.0)
