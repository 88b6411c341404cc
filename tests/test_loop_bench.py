"""benchmarks/loop.py: the loop/bare ratio compares like with like, reports what it
measured, and stops with a clear error (not a TypeError) when a signal cuts a loop
segment short, which is what crashed its MiniLM mode under ``timeout``."""

import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import time
import types

import pytest
from flax import nnx

from benchmarks import loop
from experiments import common

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _simulated_periods(steps, log_every):
  """The loop's rule, replayed step by step: a period closes at a multiple of
  ``log_every`` (``period``) and at the last step (``drain``)."""
  out, open_steps = [], 0
  for step in range(1, steps + 1):
    open_steps += 1
    if step == steps or step % log_every == 0:
      out.append(open_steps)
      open_steps = 0
  return out


@pytest.mark.parametrize("steps,log_every", [(9, 4), (21, 10), (3, 50), (8, 1), (6, 3)])
def test_period_lengths_are_the_stacks_the_loop_builds(steps, log_every):
  lengths = _simulated_periods(steps, log_every)
  assert sum(lengths) == steps
  assert loop.period_lengths(steps, log_every) == set(lengths)


def _fake_bench():
  """A LoopBench without a model build: only what ``loop()`` touches."""
  model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  _, params, rest = nnx.split(model, nnx.Param, ...)
  task = types.SimpleNamespace(model=model, train_batches=loop.ListBatches([{}]))
  return types.SimpleNamespace(
    name="tiny",
    steps=5,
    log_every=2,
    initial=(params, rest),
    task=task,
    last_params={},
    config=lambda out, stop_after=0: loop._config(6, out, 2, stop_after),
  )


@pytest.mark.parametrize("at_step", [1, 3])
def test_an_interrupted_loop_segment_is_an_error_not_a_partial_number(monkeypatch, at_step):
  # common.run returns early with a checkpoint when SIGTERM/SIGINT reaches its
  # guard; at step 1 steady_steps_per_second is None (the old TypeError), later
  # it is a rate over a partial run. Neither may become a ratio.
  rate = None if at_step == 1 else 2.0
  fake_result = {"interrupted": True, "steps": at_step, "steady_steps_per_second": rate}
  monkeypatch.setattr(common, "run", lambda cfg, task: fake_result)
  with pytest.raises(loop.LoopInterrupted, match=rf"interrupted at step {at_step} of 6"):
    loop.LoopBench.loop(_fake_bench())


def test_a_loop_segment_without_a_steady_rate_is_an_error(monkeypatch):
  result = {"interrupted": False, "steps": 6, "steady_steps_per_second": None}
  monkeypatch.setattr(common, "run", lambda cfg, task: result)
  with pytest.raises(RuntimeError, match="steady_steps_per_second=None: no measurement"):
    loop.LoopBench.loop(_fake_bench())


def test_the_window_outlasts_every_segment():
  cfg = loop._config(9, "/tmp/x", 3)
  # No switch to fixed_mask + freeze inside a timed segment: that step differs.
  assert common.window_end(cfg) > cfg.steps and cfg.start_step == 0


@pytest.mark.parametrize(
  "argv,message",
  [
    (["--models", "tiny,gpt"], "argument --models: unknown 'gpt'; valid: tiny, minilm, bert-base"),
    (["--models", ","], "argument --models: give at least one of"),
    (["--steps", "-1"], "argument --steps: must be an integer >= 0, got -1"),
    (["--rounds", "0"], "argument --rounds: must be an integer >= 1, got 0"),
    (["--log-every", "-2"], "argument --log-every: must be an integer >= 0, got -2"),
    (["--out", "/nonexistent-dir/x.json"], "argument --out: folder /nonexistent-dir does not"),
  ],
)
def test_bad_arguments_are_named_before_anything_runs(argv, message, capsys, monkeypatch):
  monkeypatch.setattr(loop, "measure", lambda *a, **k: pytest.fail("measure ran"))
  with pytest.raises(SystemExit) as info:
    loop.main(argv)
  assert info.value.code == 2
  assert message in capsys.readouterr().err


def test_main_turns_an_interrupt_into_exit_1_with_the_reason(monkeypatch, capsys):
  def interrupted(*a, **k):
    raise loop.LoopInterrupted("the loop segment of tiny was interrupted at step 1 of 21")

  monkeypatch.setattr(loop, "measure", interrupted)
  with pytest.raises(SystemExit) as info:
    loop.main(["--models", "tiny"])
  assert info.value.code == 1
  assert "interrupted at step 1 of 21" in capsys.readouterr().err


@pytest.mark.slow  # compiles the tiny BERT's SEVEN step (~25-50 s on 2 loaded cores)
def test_tiny_measurement_is_like_for_like_and_reports_what_it_measured(tmp_path):
  rows = loop.main(
    ["--models", "tiny", "--steps", "6", "--rounds", "2", "--out", str(tmp_path / "r.json")]
  )
  (row,) = json.loads((tmp_path / "r.json").read_text())
  assert row == json.loads(json.dumps(rows[0]))
  # Both sides computed the same steps from the same start: bitwise equal params.
  assert row["same_result"] is True
  assert row["steps"] == 6 and row["repeats"] == 2 and row["timed_steps_per_side"] == 12
  assert row["log_every"] == 3  # steps // 2: periods close on the step path too
  kinds = [(s["round"], s["kind"]) for s in row["segments"]]
  assert kinds == [(0, "bare"), (0, "loop"), (1, "loop"), (1, "bare")]  # alternating order
  bare = [s["seconds"] for s in row["segments"] if s["kind"] == "bare"]
  looped = [s["seconds"] for s in row["segments"] if s["kind"] == "loop"]
  assert row["ratios"] == pytest.approx([b / l for b, l in zip(bare, looped)])
  assert row["ratio"] == pytest.approx(statistics.median(row["ratios"]))
  assert row["bare_steps_per_s"] == pytest.approx(6 / statistics.median(bare))
  assert row["loop_steps_per_s"] == pytest.approx(6 / statistics.median(looped))
  # The loop's run() and the bare stepper built one XLA program (a cache hit).
  assert row["warm_up"]["step_programs"] == 1
  assert len(row["load_avg_start"]) == 3 and row["load_1min"] >= 0
  # Parameters of the tiny BERT counted by hand (embeddings with 512 positions and
  # 2 token types, LayerNorms, attention, FFN, pooler, 2-way head).
  layers, h, _, inter, vocab, _, _ = loop.SHAPES["tiny"]
  layer = 4 * (h * h + h) + (h * inter + inter) + (inter * h + h) + 2 * 2 * h
  assert row["params"] == vocab * h + 512 * h + 2 * h + 2 * h + layers * layer + (h * h + h) + (
    2 * h + 2
  )


@pytest.mark.slow  # a subprocess that compiles the tiny step before the signal
def test_sigterm_during_a_loop_segment_exits_1_with_the_reason(tmp_path):
  """The MiniLM crash, reproduced small: `timeout` sent SIGTERM while a loop segment
  compiled its first step; run() saved and returned at step 1 and the old code
  divided by steady_steps_per_second=None (TypeError)."""
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "benchmarks.loop", "--models", "tiny", "--steps", "4"]
  proc = subprocess.Popen(
    cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )
  # The progress bar appears when run() starts; its first step then compiles for
  # tens of seconds inside the interrupt guard.
  deadline = time.time() + 300
  seen = ""
  while "seven:" not in seen:
    assert proc.poll() is None and time.time() < deadline, seen[-2000:]
    seen += proc.stderr.read(1)
  time.sleep(2.0)
  proc.send_signal(signal.SIGTERM)
  stdout, stderr = proc.communicate(timeout=300)
  stderr = seen + stderr
  assert proc.returncode == 1, stderr[-3000:]
  assert "TypeError" not in stderr
  assert "benchmarks.loop: the loop segment of tiny was interrupted at step 1 of 5" in stderr
  assert "interrupted at step 1; checkpoint saved" in stdout
