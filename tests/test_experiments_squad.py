"""experiments.squad on tfds mock data: flags, bad input, a tiny end-to-end run with EM/F1."""

import json

import pytest

tfds = pytest.importorskip("tensorflow_datasets", reason="pip install tensorflow-datasets==4.9.10")

from experiments import squad  # noqa: E402


def mock(num_examples):
  return tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE)


@pytest.mark.parametrize(
  "argv,needle",
  [
    (["--methods", "dense,bogus"], "unknown method 'bogus'; valid methods: dense"),
    (["--task", "glue/mrpc"], "unknown task 'glue/mrpc'; valid tasks: squad/v1.1"),
    (["--preset", "nope"], "invalid choice: 'nope' (choose from 'cpu-quick', 'paper')"),
    (["--doc-stride", "400"], "doc_stride must be in (0, max_len=384)"),
    (
      ["--eval-split", "test"],
      "argument --eval-split: unknown eval split 'test' for squad/v1.1; valid splits: train, validation",
    ),
  ],
)
def test_bad_arguments_are_named(argv, needle, capsys):
  with mock(4), pytest.raises(SystemExit):
    squad.main(argv)
  assert needle in capsys.readouterr().err


def test_tiny_end_to_end(tmp_path, capsys):
  with mock(12):
    (cfg,) = squad.configs_from_args(
      ["--max-len", "48", "--doc-stride", "16", "--batch-size", "8", "--epochs", "1"]
      + ["--start-step", "0", "--pruning-steps", "2"]
    )
    num_features = len(squad.train_features(cfg))
    assert num_features >= 12  # long mock contexts are split into several windows
    assert cfg.steps == -(-num_features // 8) == cfg.eval_every
    rows = squad.main(
      [
        "--max-len",
        "48",
        "--doc-stride",
        "16",
        "--batch-size",
        "8",
        "--steps",
        "4",
        "--eval-every",
        "2",
        "--start-step",
        "1",
        "--pruning-steps",
        "3",
        "--methods",
        "dense,seven",
        "--out",
        str(tmp_path),
      ]
    )
  out = capsys.readouterr().out
  assert out.startswith("config: ") and '"doc_stride": 16' in out and "exact_match" in out
  dense, seven = rows
  assert dense["sparsity"] == 0.0
  assert seven["sparsity"] == pytest.approx(1 - (0.5 + 0.5 * (1 / 3) ** 3), abs=1e-3)
  for row in rows:
    assert row["primary_metric"] == "f1" and row["steps"] == 4
    assert [e["step"] for e in row["evaluations"]] == [2, 4]
    for e in row["evaluations"]:
      assert 0.0 <= e["exact_match"] <= e["f1"] <= 100.0
  run_dir = tmp_path / "squad_v1.1-seven-s0.5-seed3404"
  for artefact in ["config.json", "results.json", "log.jsonl", "curves.png", "masks.npz"]:
    assert (run_dir / artefact).exists(), artefact
  assert json.loads((run_dir / "config.json").read_text())["max_answer_length"] == 30


CONTEXT = (
  "The Normans were the people who in the 10th and 11th centuries gave their name to "
  "Normandy, a region in France. They were descended from Norse raiders and pirates from "
  "Denmark, Iceland and Norway who, under their leader Rollo, agreed to swear fealty to "
  "King Charles III of West Francia."
)
QUESTIONS = [
  ("q1", "In what country is Normandy located?", "France"),
  ("q2", "Who was the Norse leader?", "Rollo"),
  ("q3", "Which king?", "King Charles III"),
]


@pytest.fixture
def tiny_squad(monkeypatch):
  """A hand-made SQuAD-format dataset registered as ``squad_tiny`` (train = validation)
  for this test only, so other tests see the registry unchanged."""
  from seven_jax import data
  from seven_jax.data import registry

  columns = {
    "id": [q[0] for q in QUESTIONS],
    "title": ["Normans"] * 3,
    "question": [q[1] for q in QUESTIONS],
    "context": [CONTEXT] * 3,
    "answers": [{"text": [q[2]], "answer_start": [CONTEXT.index(q[2])]} for q in QUESTIONS],
  }
  spec = data.DatasetSpec(
    name="squad_tiny",
    task="extractive_qa",
    splits=("train", "validation"),
    num_labels=None,
    metrics=("exact_match", "f1"),
    description="3 hand-made questions",
    source="tests",
    how_to_get="-",
    licence="-",
    loader=lambda spec, split, **_: data.InMemoryDataset(spec, split, columns),
  )
  monkeypatch.setitem(registry._REGISTRY, spec.name, spec)  # undone after the test
  return spec.name


def test_decoding_path_scores_gold_logits(monkeypatch, tiny_squad):
  """The evaluation hook merges windows and decodes spans: logits put on the gold
  positions of each window give EM = F1 = 100, though every context spans several windows."""
  import numpy as np
  from experiments import common

  (cfg,) = squad.configs_from_args(
    [
      "--task",
      tiny_squad,
      "--max-len",
      "32",
      "--doc-stride",
      "8",
      "--batch-size",
      "2",
      "--steps",
      "1",
      "--eval-every",
      "0",
      "--method",
      "dense",
    ]
  )
  task = squad.build_task(cfg)
  assert len(squad.train_features(cfg)) > 3 * 2

  def gold_logits(model, batch, fn, mesh):
    start = np.full(batch["input_ids"].shape, -10.0)
    end = np.full(batch["input_ids"].shape, -10.0)
    rows = np.arange(len(start))
    start[rows, batch["start_positions"]] = 10.0
    end[rows, batch["end_positions"]] = 10.0
    return start, end

  monkeypatch.setattr(common, "predict", gold_logits)
  assert common.evaluate(task, None) == {"f1": 100.0, "exact_match": 100.0}
