"""experiments.summary on synthetic run folders (results.json as experiments.common
writes it): grouping by recipe, mean ± std and n over seeds, one-seed rows,
the majority-class rate, every method visible, collapsed rows kept off the y-range."""

import json

import numpy as np
import pytest

from experiments import summary

BASE_CONFIG = {
  "task": "rotten_tomatoes",
  "method": "seven",
  "model": None,
  "sparsity": 0.6,
  "start_step": 20,
  "pruning_steps": 80,
  "b1": 0.8,
  "b2": 0.9,
  "update_every": 1,
  "lr": 5e-05,
  "batch_size": 32,
  "max_len": 32,
  "steps": 120,
  "eval_examples": 0,
  "eval_split": "test",
  "seed": 0,
  "out": "runs",
  "resume": False,
  "log_every": 50,
}


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
  majority=None,
  **config,
):
  cfg = dict(BASE_CONFIG, task=task, method=method, sparsity=sparsity, seed=seed, **config)
  d = root / f"{task.replace('/', '_')}-{method}-s{sparsity:g}-seed{seed}-{cfg['steps']}"
  d.mkdir(parents=True)
  results = {
    "config": cfg,
    "final": {"step": cfg["steps"], metric: value, "other": -1.0},
    "sparsity": (0.0 if method == "dense" else sparsity) if achieved is None else achieved,
    "steps_per_second": sps,
    "train_seconds": cfg["steps"] / sps,
    "interrupted": interrupted,
  }
  if primary:
    results["primary_metric"] = metric
  if majority is not None:
    results["majority_rate"] = majority
  (d / "results.json").write_text(json.dumps(results))
  (d / "config.json").write_text(json.dumps(cfg))


# The majority-class rate from "dataset labels": 6 of 10 labels are 1 (0.6).
LABELS = np.asarray([1, 0, 1, 1, 0, 1, 0, 1, 0, 1])


@pytest.fixture
def fake_labels(monkeypatch):
  calls = []

  def labels(task, split):
    calls.append((task, split))
    if task != "rotten_tomatoes":
      raise FileNotFoundError(f"{task} not prepared")
    return LABELS

  summary._majority_from_labels.cache_clear()
  monkeypatch.setattr(summary, "dataset_labels", labels)
  yield calls
  summary._majority_from_labels.cache_clear()


@pytest.fixture
def runs(tmp_path, fake_labels):
  root = tmp_path / "runs"
  for seed, (d, s5, s7, m5) in enumerate(
    [(0.90, 0.88, 0.80, 0.85), (0.92, 0.86, 0.84, 0.83), (0.91, 0.87, 0.82, 0.81)]
  ):
    write_run(root, "rotten_tomatoes", "dense", 0.6, seed, d)  # dense: target 0 whatever the config
    write_run(root / "nested", "rotten_tomatoes", "seven", 0.5, seed, s5, achieved=0.49)
    write_run(root, "rotten_tomatoes", "seven", 0.7, seed, s7)
    write_run(root, "rotten_tomatoes", "magnitude", 0.5, seed, m5)
  # The same methods on a 300-step recipe: a second panel with its own dense line.
  write_run(root, "rotten_tomatoes", "dense", 0.6, 0, 0.95, steps=300)
  write_run(root, "rotten_tomatoes", "seven", 0.5, 0, 0.93, steps=300)
  write_run(root, "squad/v1.1", "seven", 0.5, 0, 80.0, metric="f1", primary=False)
  write_run(root, "rotten_tomatoes", "seven", 0.9, 0, 0.1, interrupted=True)  # left out
  (root / "broken").mkdir()
  (root / "broken" / "results.json").write_text("{not json")  # left out
  return root


def test_rows_group_by_recipe_with_mean_std_and_n(runs, tmp_path, capsys):
  out = tmp_path / "report" / "summary.md"
  rows = summary.main([str(runs), "--out", str(out)])
  err = capsys.readouterr().err
  assert "interrupted run left out" in err and "broken" in err
  keys = [(r["task"], r["recipe_id"], r["method"], r["target"]) for r in rows]
  assert keys == [
    ("rotten_tomatoes", "R1", "dense", 0.0),
    ("rotten_tomatoes", "R1", "magnitude", 0.5),
    ("rotten_tomatoes", "R1", "seven", 0.5),
    ("rotten_tomatoes", "R1", "seven", 0.7),
    ("rotten_tomatoes", "R2", "dense", 0.0),
    ("rotten_tomatoes", "R2", "seven", 0.5),
    ("squad/v1.1", "R1", "seven", 0.5),
  ]
  assert rows[0]["recipe"]["steps"] == 120 and rows[4]["recipe"]["steps"] == 300
  seven5 = rows[2]
  assert seven5["n"] == 3 and seven5["seeds"] == [0, 1, 2]
  assert seven5["mean"] == pytest.approx(0.87)
  assert seven5["std"] == pytest.approx(np.std([0.88, 0.86, 0.87], ddof=1))
  assert seven5["sparsity"] == pytest.approx(0.49)
  # One seed: no spread (NaN, not 0), and the table says so.
  assert rows[5]["n"] == 1 and np.isnan(rows[5]["std"])
  text = out.read_text()
  assert (
    "| rotten_tomatoes | R1 | seven |  | 50% | 49.00% | accuracy | 0.8700 ± 0.0100 | 3 | 0, 1, 2 "
    "| 0.6000 | +0.2700 | 2.00 |" in text
  )
  assert (
    "| rotten_tomatoes | R2 | seven |  | 50% | 50.00% | accuracy | 0.9300 (one seed: no spread) | 1 | 0 |"
    in text
  )
  assert (
    "| squad/v1.1 | R1 | seven |  | 50% | 50.00% | f1 | 80.00 (one seed: no spread) | 1 | 0 |  |  | 2.00 |"
    in text
  )
  # The recipe legend names what differs between the two recipes first.
  assert "- **rotten_tomatoes R1**: steps=120 (the rest:" in text
  assert "- **rotten_tomatoes R2**: steps=300 (the rest:" in text
  assert "![metric versus sparsity](summary.png)" in text
  png = out.with_suffix(".png")
  assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_seed_output_and_bookkeeping_do_not_split_a_recipe_but_the_schedule_does(
  tmp_path, fake_labels
):
  root = tmp_path / "runs"
  write_run(root, "rotten_tomatoes", "magnitude", 0.6, 0, 0.70, out="a", log_every=10)
  write_run(root, "rotten_tomatoes", "magnitude", 0.6, 1, 0.72, out="b", resume=True)
  # Another update_every is another row of the same recipe (a method setting) ...
  write_run(root / "x", "rotten_tomatoes", "magnitude", 0.6, 0, 0.75, update_every=10)
  # ... and dense ignores the method settings: its two seeds are one row.
  write_run(root, "rotten_tomatoes", "dense", 0.6, 0, 0.80, pruning_steps=10)
  write_run(root, "rotten_tomatoes", "dense", 0.6, 1, 0.82)
  # Another learning rate is another recipe.
  write_run(root / "y", "rotten_tomatoes", "magnitude", 0.6, 0, 0.60, lr=1e-4)
  rows = summary.aggregate(summary.load_runs(root))
  got = {(r["recipe_id"], r["method"], r["settings"].get("update_every")): r["n"] for r in rows}
  assert got == {
    ("R1", "dense", None): 2,
    ("R1", "magnitude", 1): 2,
    ("R1", "magnitude", 10): 1,
    ("R2", "magnitude", 1): 1,
  }
  lr = {r["recipe_id"]: r["recipe"]["lr"] for r in rows}
  assert lr == {"R1": 5e-05, "R2": 1e-4}
  text = summary.markdown(rows)
  assert "| magnitude | update_every=10 |" in text and "| magnitude | update_every=1 |" in text


def test_majority_rate_sources(tmp_path, fake_labels):
  root = tmp_path / "runs"
  write_run(root, "rotten_tomatoes", "seven", 0.6, 0, 0.8, majority=0.5472)  # recorded by the run
  write_run(root, "rotten_tomatoes", "seven", 0.6, 0, 0.8, steps=50)  # counted from the labels
  write_run(root, "rotten_tomatoes", "seven", 0.6, 0, 0.8, steps=60, eval_examples=4)  # 3 of 4
  write_run(root, "glue/sst2", "seven", 0.6, 0, 0.8)  # labels unavailable
  write_run(root, "glue/stsb", "seven", 0.6, 0, 0.8, metric="pearson")  # not an accuracy
  rows = {
    (r["task"], r["recipe"]["steps"], r["recipe"]["eval_examples"]): r
    for r in summary.aggregate(summary.load_runs(root))
  }
  assert rows[("rotten_tomatoes", 120, 0)]["majority"] == pytest.approx(0.5472)
  assert rows[("rotten_tomatoes", 120, 0)]["majority_source"] == "results.json"
  expected = np.bincount(LABELS).max() / LABELS.size
  assert rows[("rotten_tomatoes", 50, 0)]["majority"] == pytest.approx(expected)
  assert rows[("rotten_tomatoes", 50, 0)]["majority_source"] == "dataset labels"
  assert rows[("rotten_tomatoes", 60, 4)]["majority"] == pytest.approx(0.75)
  assert rows[("glue/sst2", 120, 0)]["majority"] is None
  assert rows[("glue/sst2", 120, 0)]["majority_source"] == "labels not available"
  assert rows[("glue/stsb", 120, 0)]["majority_source"] == "not an accuracy"
  assert ("rotten_tomatoes", "test") in fake_labels
  text = summary.markdown(list(rows.values()))
  assert "glue/sst2: majority-class rate labels not available" in text
  assert "| 0.8000 (one seed: no spread) | 1 | 0 | n/a | n/a |" in text


def test_collapsed_rows_are_marked_and_do_not_squash_the_y_range(tmp_path, fake_labels):
  root = tmp_path / "runs"
  majority = 0.5472
  for seed, (d, s, p) in enumerate([(0.80, 0.78, 0.76), (0.81, 0.77, 0.75)]):
    write_run(root, "rotten_tomatoes", "dense", 0.6, seed, d, majority=majority)
    write_run(root, "rotten_tomatoes", "seven", 0.6, seed, s, majority=majority)
    write_run(root, "rotten_tomatoes", "platon", 0.6, seed, p, majority=majority)
    write_run(root, "rotten_tomatoes", "magnitude", 0.6, seed, majority, majority=majority)
  write_run(root, "rotten_tomatoes", "movement", 0.6, 0, majority + 0.001, majority=majority)
  rows = summary.aggregate(summary.load_runs(root))
  collapsed = {r["method"]: r["collapsed"] for r in rows}
  assert collapsed == {"dense": 0, "magnitude": 2, "movement": 1, "platon": 0, "seven": 0}
  text = summary.markdown(rows)
  assert "| **collapsed** (2/2 seeds) |" in text and "| **collapsed** (1/1 seeds) |" in text
  (panel,) = summary.plot(rows, tmp_path / "p.png")
  lo, hi = panel["ylim"]
  # The y-range is set by the rows that learned: it sits above the majority rate ...
  assert majority < lo < 0.75 and hi > 0.81 and not panel["majority_in_view"]
  assert (hi - lo) < 0.2
  by_series = {p["series"]: p for p in panel["points"]}
  # ... and the collapsed rows are drawn inside it, at the bottom edge, with their true mean.
  for name in ("magnitude", "movement"):
    p = by_series[name]
    assert p["clipped"] and lo < p["y"] < 0.75 and p["mean"] < lo
  assert not by_series["seven"]["clipped"] and by_series["seven"]["y"] == pytest.approx(0.775)


def test_every_method_stays_visible(tmp_path, fake_labels):
  root = tmp_path / "runs"
  # Four methods with the same value at the same sparsity would sit on one point.
  for method in ("movement", "platon", "seven", "taylor_instant"):
    for seed in (0, 1):
      write_run(root, "rotten_tomatoes", method, 0.6, seed, 0.8, majority=0.5)
  write_run(root, "rotten_tomatoes", "magnitude", 0.6, 0, 0.8, majority=0.5)  # one seed
  rows = summary.aggregate(summary.load_runs(root))
  (panel,) = summary.plot(rows, tmp_path / "p.png")
  xs = [p["x"] for p in panel["points"]]
  markers = [p["marker"] for p in panel["points"]]
  assert len(set(xs)) == 5 and len(set(markers)) == 5
  assert all(abs(x - 0.6) < 0.05 for x in xs)  # offsets stay near the true sparsity
  hollow = {p["series"]: p["hollow"] for p in panel["points"]}
  assert hollow == {
    "magnitude": True,
    "movement": False,
    "platon": False,
    "seven": False,
    "taylor_instant": False,
  }
  # Without a collapsed row the majority line is in view.
  assert panel["majority_in_view"] and panel["ylim"][0] < 0.5


def test_low_outliers_without_a_majority_rate():
  rows = [
    {"mean": m, "std": 0.01, "values": [m], "n": 1, "majority": None, "collapsed": 0}
    for m in (0.80, 0.81, 0.79, 0.82, 0.10)
  ]
  assert summary._low_outliers(rows) == {4}
  assert summary._low_outliers(rows[:2] + rows[4:]) == set()  # too few rows for quartiles


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
