"""experiments.text: bad input gets clear errors; the real run is a slow test."""

import pytest

from experiments import text


@pytest.mark.parametrize("argv,needle", [
    (["--methods", "dense,bogus"], "unknown method"),
    (["--dataset", "nope"], "unknown dataset"),
    (["--sparsity", "1.5"], "--sparsity must be in"),
    (["--preset", "nope"], "invalid choice"),
])
def test_bad_arguments_are_named(argv, needle, capsys):
  with pytest.raises(SystemExit):
    text.parse_config(argv)
  assert needle in capsys.readouterr().err


def test_flags_override_the_preset():
  cfg = text.parse_config(["--preset", "paper-sst2", "--steps", "7"])
  assert cfg.steps == 7 and cfg.start_step == 1000 and cfg.pruning_steps == 4000


@pytest.mark.slow
def test_minilm_rotten_tomatoes_end_to_end(tmp_path):
  rows = text.main(["--methods", "dense,seven", "--steps", "12", "--start-step", "2",
                    "--pruning-steps", "8", "--eval-examples", "64", "--out", str(tmp_path)])
  assert abs(rows[1]["sparsity"] - 0.6) < 0.01
  assert (tmp_path / "results.json").exists()
