"""--include-pooler / --no-include-pooler: the BERT experiments prune the pooler's
dense kernel by default (as the official SEVEN code) and leave it whole with
--no-include-pooler; models without a pooler refuse the flag.

The runs use a tiny BERT checkpoint (2 layers, 32 wide, MiniLM's tokenizer)
written once per session in Hugging Face format, so that ``experiments.text``
goes through its real path (``--model``, tokenizer, data, run, results) in a
few seconds.
"""

import json
import pathlib

import jax
import numpy as np
import pytest

from experiments import common, squad, summary, text, vision

HIDDEN = 32


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
  """A random 2-layer, 32-wide BertModel with a pooler, MiniLM's vocabulary and tokenizer."""
  from flax import nnx

  import seven_jax
  from seven_jax.models import bert

  try:
    minilm = bert.default_model_path()
  except ImportError as e:
    pytest.skip(str(e))
  config = bert.BertConfig(
    vocab_size=bert.load_config(minilm).vocab_size,
    hidden_size=HIDDEN,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
  )
  model = bert.BertModel(config, rngs=nnx.Rngs(0))
  out = tmp_path_factory.mktemp("tiny_bert")
  seven_jax.export.export_pruned(model, config, out, tokenizer_dir=minilm)
  return out


def _config(checkpoint, *flags, out="runs"):
  """The config ``python -m experiments.text`` builds from these flags."""
  (cfg,) = common.configs_from_cli(
    ["--model", str(checkpoint), "--method", "snip", "--sparsity", "0.5"]
    + ["--steps", "2", "--max-len", "16", "--batch-size", "8", "--eval-examples", "16"]
    + ["--prune-before-steps", "2", "--out", str(out), *flags],
    text.__doc__.splitlines()[0],
    text.PRESETS,
    text.DEFAULT_METHODS,
  )
  return cfg


def _pooler(tree):
  return tree["bert"]["pooler"]["dense"]["kernel"]


def test_the_flag_reaches_the_config(tiny_checkpoint):
  assert _config(tiny_checkpoint).include_pooler is True  # official SEVEN: pruned
  assert _config(tiny_checkpoint, "--include-pooler").include_pooler is True
  assert _config(tiny_checkpoint, "--no-include-pooler").include_pooler is False


def test_the_prunable_set_loses_exactly_the_pooler_kernel(tiny_checkpoint):
  """experiments.text's task: the same prunable leaves but the pooler kernel."""
  from flax import nnx

  import seven_jax

  counts, leaves = {}, {}
  for flags in ([], ["--no-include-pooler"]):
    cfg = _config(tiny_checkpoint, *flags)
    task = text.build_task(cfg)
    params = nnx.state(task.model, nnx.Param)
    spec = seven_jax.resolve_prunable(task.prunable, params)
    assert _pooler(task.prunable) is cfg.include_pooler
    counts[cfg.include_pooler] = sum(
      np.size(p) for p, s in zip(jax.tree.leaves(params), jax.tree.leaves(spec)) if s
    )
    leaves[cfg.include_pooler] = jax.tree.leaves(spec)
  assert counts[True] - counts[False] == HIDDEN * HIDDEN
  differ = [i for i, (a, b) in enumerate(zip(leaves[True], leaves[False])) if a != b]
  assert len(leaves[True]) == len(leaves[False]) and len(differ) == 1


@pytest.mark.slow  # two SNIP runs of a tiny BERT: ~45 s on the 2-core machine
def test_runs_record_it_and_leave_the_pooler_whole(tiny_checkpoint, tmp_path):
  """Two SNIP runs at 50% as ``python -m experiments.text`` makes them: the
  default prunes part of the pooler; --no-include-pooler has one 32 x 32
  kernel less to prune, keeps its mask all True and its weights nonzero."""
  rows, pooler_weights, run_dirs = {}, {}, {}
  for flags in ([], ["--no-include-pooler"]):
    # The run name does not say include_pooler (nor scope): one folder each.
    cfg = _config(tiny_checkpoint, *flags, out=tmp_path / str(not flags))
    task = text.build_task(cfg)
    rows[cfg.include_pooler] = common.run(cfg, task)
    # common.run leaves the final (pruned, trained) weights in task.model.
    pooler_weights[cfg.include_pooler] = np.asarray(task.model.bert.pooler.dense.kernel.value)
    run_dirs[cfg.include_pooler] = pathlib.Path(cfg.out) / cfg.run_name
  for include, row in rows.items():
    saved = json.loads((run_dirs[include] / "results.json").read_text())
    assert saved["include_pooler"] is include and saved["config"]["include_pooler"] is include
    assert saved["prunable_weights"] == row["prunable_weights"]
    assert row["sparsity"] == pytest.approx(0.5, abs=2.0 / row["prunable_weights"])
  assert rows[True]["prunable_weights"] - rows[False]["prunable_weights"] == HIDDEN * HIDDEN
  assert rows[True]["prunable_leaves"] - rows[False]["prunable_leaves"] == 1

  def pooler_leaf(row):
    (leaf,) = [
      x for x in row["sparsity_per_layer"] if "pooler" in x["path"] and "kernel" in x["path"]
    ]
    return leaf

  assert pooler_leaf(rows[True])["prunable"] and pooler_leaf(rows[True])["sparsity"] > 0
  assert not pooler_leaf(rows[False])["prunable"]
  with np.load(run_dirs[True] / "masks.npz") as masks:
    (key,) = [k for k in masks.files if "pooler" in k and "kernel" in k]
    kept = masks[key]
  # Default: SNIP prunes part of the pooler, and those weights are exact zeros.
  assert kept.shape == (HIDDEN, HIDDEN) and 0 < kept.sum() < kept.size
  np.testing.assert_array_equal(pooler_weights[True] == 0, ~kept)
  # Without it: no mask entry prunes it (absent or all True), no weight is zero.
  with np.load(run_dirs[False] / "masks.npz") as masks:
    assert all(masks[k].all() for k in masks.files if "pooler" in k)
  assert np.all(pooler_weights[False] != 0)


def test_glue_offers_the_flag():
  """experiments.glue builds its tasks with experiments.text: the flag reaches its configs."""
  tfds = pytest.importorskip(
    "tensorflow_datasets", reason="pip install tensorflow-datasets==4.9.10"
  )
  from experiments import glue

  with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
    (default,) = glue.configs_from_args(["--task", "mrpc", "--method", "seven_pre"])
    (without,) = glue.configs_from_args(
      ["--task", "mrpc", "--method", "seven_pre", "--no-include-pooler"]
    )
  assert default.include_pooler is True and without.include_pooler is False


@pytest.mark.parametrize("option", ["--no-include-pooler", "--include-pooler"])
@pytest.mark.parametrize(
  "main,needle",
  [
    (vision.main, "a ViT has no pooler"),
    (squad.main, "BERT for question answering has no pooler"),
  ],
)
def test_models_without_a_pooler_refuse_the_flag(main, needle, option, capsys):
  with pytest.raises(SystemExit) as info:
    main(["--methods", "dense", option])
  assert info.value.code == 2
  assert f"argument {option}: {needle}" in capsys.readouterr().err


def test_summary_counts_a_run_without_the_field_as_include_pooler_true(tmp_path):
  """A run older than the flag pruned the pooler: it shares a row with include_pooler=True
  runs, and --no-include-pooler runs are a row of their own."""
  base = {
    "task": "rotten_tomatoes",
    "method": "snip",
    "sparsity": 0.5,
    "steps": 10,
    "eval_split": "test",
    "eval_examples": 0,
  }
  for name, seed, extra, value in [
    ("old", 0, {}, 0.70),
    ("new", 1, {"include_pooler": True, "scope": "global"}, 0.72),
    ("nopool", 0, {"include_pooler": False}, 0.60),
  ]:
    d = tmp_path / name
    d.mkdir()
    results = {
      "config": {**base, "seed": seed, **extra},
      "primary_metric": "accuracy",
      "final": {"accuracy": value},
      "sparsity": 0.5,
      "majority_rate": 0.5,
      "steps_per_second": 1.0,
    }
    (d / "results.json").write_text(json.dumps(results))
  rows = summary.aggregate(summary.load_runs(tmp_path))
  got = {r["settings"]["include_pooler"]: (r["n"], r["mean"]) for r in rows}
  assert got.keys() == {True, False}
  assert got[True][0] == 2 and got[True][1] == pytest.approx(0.71)
  assert got[False] == (1, pytest.approx(0.60))
  assert "include_pooler=False" in summary.markdown(rows)


def test_run_names_keep_non_default_settings_apart():
  """A run that prunes a different set never lands in the default run's folder."""
  base = common.ExperimentConfig(method="seven")
  assert base.run_name == "rotten_tomatoes-seven-s0.6-seed0"
  names = {
    base.run_name,
    common.ExperimentConfig(method="seven", include_pooler=False).run_name,
    common.ExperimentConfig(method="seven", scope="per_leaf").run_name,
    common.ExperimentConfig(method="movement", straight_through=False).run_name,
    common.ExperimentConfig(method="movement").run_name,
  }
  assert len(names) == 5
  assert common.ExperimentConfig(method="seven", include_pooler=False).run_name.endswith(
    "-nopooler"
  )
  # straight_through is only read by movement methods: no suffix elsewhere.
  assert common.ExperimentConfig(method="seven", straight_through=False).run_name == base.run_name


def test_dense_alone_rejects_the_flag(capsys):
  """Dense prunes nothing: --no-include-pooler with it alone would be silently ignored."""
  tfds = pytest.importorskip(
    "tensorflow_datasets", reason="pip install tensorflow-datasets==4.9.10"
  )
  from experiments import glue

  with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
    with pytest.raises(SystemExit) as info:
      glue.configs_from_args(["--task", "mrpc", "--method", "dense", "--no-include-pooler"])
  assert info.value.code == 2
  assert "include-pooler: not used by method(s) dense" in capsys.readouterr().err
