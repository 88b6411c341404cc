"""experiments.text: bad input gets clear errors; a short real run writes every artefact."""

import json

import pytest

from experiments import text


@pytest.mark.parametrize(
  "argv,needle",
  [
    (["--methods", "dense,bogus"], "unknown method 'bogus'"),
    (["--task", "nope"], "unknown task 'nope'"),
    (["--task", "digits", "--methods", "dense"], "experiments.text handles"),
    (
      ["--sparsity", "1.5", "--methods", "seven"],
      "argument --sparsity: must be a finite number in [0, 1), got 1.5",
    ),
    (["--preset", "nope"], "invalid choice"),
  ],
)
def test_bad_arguments_are_named(argv, needle, capsys):
  with pytest.raises((SystemExit, ValueError)) as info:
    text.main(argv)
  message = capsys.readouterr().err + str(info.value)
  assert needle in message


def test_minilm_rotten_tomatoes_short_run_writes_everything(tmp_path):
  rows = text.main(
    [
      "--methods",
      "dense,seven",
      "--steps",
      "6",
      "--start-step",
      "1",
      "--pruning-steps",
      "4",
      "--eval-examples",
      "64",
      "--max-len",
      "16",
      "--batch-size",
      "8",
      "--out",
      str(tmp_path),
    ]
  )
  dense, seven = rows
  assert dense["sparsity"] == 0.0
  # r = 0.4 + 0.6 * (1 - 3/4)^3 after the last of the N - 1 = 3 window steps.
  assert abs(seven["sparsity"] - (1 - (0.4 + 0.6 * (1 / 4) ** 3))) < 1e-3
  runs = sorted(p.name for p in tmp_path.iterdir())
  assert len(runs) == 2
  for name in runs:
    d = tmp_path / name
    for artefact in ["config.json", "results.json", "log.jsonl", "curves.png"]:
      assert (d / artefact).exists(), (name, artefact)
    assert (d / "tensorboard").is_dir() and (d / "checkpoints").is_dir()
    results = json.loads((d / "results.json").read_text())
    assert results["steps"] == 6 and 0.0 <= results["final"]["accuracy"] <= 1.0
    # The sparsity the loop logs (counted on the device, count_kept) is the
    # final masks' as the report counts them on the host.
    logged = [r["sparsity"] for r in map(json.loads, (d / "log.jsonl").open()) if "sparsity" in r]
    assert logged and logged[-1] == pytest.approx(results["sparsity"], abs=1e-6)
