"""experiments.summary on synthetic results.json files: grouping, mean ± std over seeds, plot."""

import json

import numpy as np
import pytest

from experiments import summary


def write_run(
  root,
  task,
  method,
  sparsity,
  seed,
  value,
  *,
  metric="accuracy",
  achieved=None,
  interrupted=False,
  sps=2.0,
  primary=True,
):
  d = root / f"{task.replace('/', '_')}-{method}-s{sparsity:g}-seed{seed}"
  d.mkdir(parents=True)
  results = {
    "config": {"task": task, "method": method, "sparsity": sparsity, "seed": seed},
    "final": {"step": 10, metric: value, "other": -1.0},
    "sparsity": (0.0 if method == "dense" else sparsity) if achieved is None else achieved,
    "steps_per_second": sps,
    "interrupted": interrupted,
  }
  if primary:
    results["primary_metric"] = metric
  (d / "results.json").write_text(json.dumps(results))


@pytest.fixture
def runs(tmp_path):
  root = tmp_path / "runs"
  for seed, (d, s5, s7, m5) in enumerate(
    [(0.90, 0.88, 0.80, 0.85), (0.92, 0.86, 0.84, 0.83), (0.91, 0.87, 0.82, 0.81)]
  ):
    write_run(root, "glue/mrpc", "dense", 0.6, seed, d)  # dense: target 0 whatever the config
    write_run(root / "nested", "glue/mrpc", "seven", 0.5, seed, s5, achieved=0.49)
    write_run(root, "glue/mrpc", "seven", 0.7, seed, s7)
    write_run(root, "glue/mrpc", "magnitude", 0.5, seed, m5)
  write_run(root, "squad/v1.1", "seven", 0.5, 0, 80.0, metric="f1", primary=False)
  write_run(root, "glue/mrpc", "seven", 0.9, 0, 0.1, interrupted=True)  # left out
  (root / "broken").mkdir()
  (root / "broken" / "results.json").write_text("{not json")  # left out
  return root


def test_table_groups_seeds_with_mean_and_std(runs, tmp_path, capsys):
  out = tmp_path / "report" / "summary.md"
  rows = summary.main([str(runs), "--out", str(out)])
  err = capsys.readouterr().err
  assert "interrupted run left out" in err and "broken" in err
  keys = [(r["task"], r["method"], r["target"]) for r in rows]
  assert keys == [
    ("glue/mrpc", "dense", 0.0),
    ("glue/mrpc", "magnitude", 0.5),
    ("glue/mrpc", "seven", 0.5),
    ("glue/mrpc", "seven", 0.7),
    ("squad/v1.1", "seven", 0.5),
  ]
  seven5 = rows[2]
  assert seven5["n"] == 3 and seven5["seeds"] == [0, 1, 2]
  assert seven5["mean"] == pytest.approx(0.87)
  assert seven5["std"] == pytest.approx(np.std([0.88, 0.86, 0.87], ddof=1))
  assert seven5["sparsity"] == pytest.approx(0.49)
  assert rows[-1]["metric"] == "f1" and rows[-1]["std"] == 0.0 and rows[-1]["n"] == 1
  text = out.read_text()
  assert "| glue/mrpc | seven | 50% | 49.00% | accuracy | 0.8700 ± 0.0100 | 3 | 2.00 |" in text
  assert "| squad/v1.1 | seven | 50% | 50.00% | f1 | 80.00 ± 0.00 | 1 | 2.00 |" in text
  assert "![metric versus sparsity](summary.png)" in text
  png = out.with_suffix(".png")
  assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_outputs_go_in_the_folder(runs):
  summary.main([str(runs)])
  assert (runs / "summary.md").exists() and (runs / "summary.png").exists()


@pytest.mark.parametrize(
  "make,needle",
  [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "no results.json under"),
  ],
)
def test_missing_runs_are_named(tmp_path, capsys, make, needle):
  folder = tmp_path / "empty"
  make(folder)
  with pytest.raises(SystemExit):
    summary.main([str(folder)])
  assert needle in capsys.readouterr().err
