"""The quick example runs end to end on real data and prunes to the requested sparsity."""

from experiments import digits


def test_digits_example_prunes_and_learns():
  rows = digits.main(["--steps", "200", "--sparsity", "0.8"])
  dense, seven = rows
  assert dense["method"] == "dense" and seven["method"] == "seven"
  assert abs(seven["sparsity"] - 0.8) < 1e-3
  # Real digits: both models are far above chance (10%) even after 200 steps.
  assert dense["accuracy"] > 0.85 and seven["accuracy"] > 0.85


def test_digits_resumes_exactly_and_refuses_a_missing_checkpoint(tmp_path, capsys):
  import shutil

  import pytest

  args = ["--steps", "60", "--sparsity", "0.5", "--checkpoint-every", "20"]
  straight = digits.main(args + ["--out", str(tmp_path / "a")])
  digits.main(args + ["--out", str(tmp_path / "b")])
  for run in (tmp_path / "b").iterdir():  # as if killed after the checkpoint at step 40
    shutil.rmtree(run / "checkpoints" / "60")
  resumed = digits.main(args + ["--out", str(tmp_path / "b"), "--resume"])
  for a, b in zip(straight, resumed):
    assert b["resumed_from"] == 40
    assert (a["accuracy"], a["sparsity"], a["final_loss"]) == (
      b["accuracy"],
      b["sparsity"],
      b["final_loss"],
    )
  with pytest.raises(SystemExit) as info:
    digits.main(args + ["--out", str(tmp_path / "none"), "--resume"])
  assert info.value.code == 2 and "argument --resume: no checkpoint" in capsys.readouterr().err
  with pytest.raises(SystemExit) as info:
    digits.main(["--batch-size", "0"])
  assert info.value.code == 2 and "argument --batch-size: must be an integer >= 1, got 0" in (
    capsys.readouterr().err
  )
