"""``python -m seven_jax.data`` lists every dataset with its availability."""

import os
import subprocess
import sys

from seven_jax import data
from seven_jax.data.__main__ import main


def test_list_prints_every_dataset_and_how_to_get_missing_ones(tmp_path, capsys):
  assert main(["list", "--data_dir", str(tmp_path)]) == 0
  output = capsys.readouterr().out
  for name in data.datasets():
    assert f"\n{name} " in "\n" + output
  assert "rotten_tomatoes  available" in output
  assert "glue/mrpc        MISSING" in output
  assert "to get it: python -m seven_jax.data prepare glue/mrpc" in output
  assert "datasets available on this machine" in output


def test_module_runs_as_a_command():
  result = subprocess.run(
    [sys.executable, "-m", "seven_jax.data"],
    capture_output=True,
    text=True,
    timeout=120,
    env={**os.environ, "TFDS_DATA_DIR": "/nonexistent-tfds-dir"},
  )
  assert result.returncode == 0, result.stderr
  assert "mnist5k" in result.stdout and "squad/v1.1" in result.stdout


def test_prepare_refuses_offline_datasets(capsys):
  import pytest

  with pytest.raises(SystemExit) as exit_:
    main(["prepare", "rotten_tomatoes"])
  assert exit_.value.code == 2
  err = capsys.readouterr().err
  assert "rotten_tomatoes is not a tfds dataset" in err and "glue/mrpc" in err


def test_prepare_without_a_name_lists_the_names(capsys):
  import pytest

  with pytest.raises(SystemExit):
    main(["prepare"])
  assert "prepare needs a dataset name" in capsys.readouterr().err
