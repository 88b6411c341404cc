"""Checkpoints restore exactly in a *new process*: every run here is its own
``python -m experiments.vision`` (a fresh JAX runtime, model, optimizer and data
loader), and the resumed trajectory must equal an uninterrupted run bit for bit:
the loss of every step, the final masks, and every leaf of the final training
state (parameters, dropout keys, optimizer state with the masks, step, data
position), read back from the checkpoints with orbax directly.

The runs are SEVEN_dyn on sklearn's digits with a small ViT, 10 steps, the
pruning window over steps 2..7: after step 7 the loop switches on its own to
``fixed_mask`` + ``freeze``, so a checkpoint at step 4 holds SEVEN's statistics
and one at step 8 the frozen state.

The processes share one XLA compilation cache (``JAX_COMPILATION_CACHE_DIR``):
only the first compiles, the others load the same executables, as a restarted
job on one machine would.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUN = "digits-seven-s0.5-seed0"
STEPS, FREEZE_AT = 10, 7  # window_end = start_step + pruning_steps - 1
ARGS = [
  "--task",
  "digits",
  "--methods",
  "seven",
  "--start-step",
  "2",
  "--pruning-steps",
  "6",
  "--batch-size",
  "32",
  "--sparsity",
  "0.5",
  "--log-every",
  "3",
]


def _env(cache):
  return dict(
    os.environ,
    PYTHONPATH=str(ROOT),
    JAX_PLATFORMS="cpu",
    JAX_COMPILATION_CACHE_DIR=str(cache),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
  )


def _run(out, *extra, cache, steps=STEPS, timeout=900) -> str:
  """One training process; returns its stdout (fails the test on a non-zero exit)."""
  cmd = [sys.executable, "-m", "experiments.vision", *ARGS, "--steps", str(steps)]
  cmd += ["--out", str(out), *extra]
  proc = subprocess.run(
    cmd, check=False, cwd=ROOT, env=_env(cache), capture_output=True, text=True, timeout=timeout
  )
  assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
  return proc.stdout


def _records(run_dir):
  return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def _losses(run_dir):
  """(step, loss) of every logged step, in file order."""
  return [(r["step"], r["loss"]) for r in _records(run_dir) if "loss" in r]


def _checkpoint(run_dir, step):
  """{key path: numpy array} of a saved step, read with orbax (not the code under test)."""
  import orbax.checkpoint as ocp

  path = run_dir / "checkpoints" / str(step)
  manifest = json.loads((path / "manifest" / "metadata").read_text())
  arrays = ocp.StandardCheckpointer().restore((path / "state").resolve())
  keys = manifest["keys"]
  assert sorted(arrays) == [f"{i:06d}" for i in range(len(keys))]
  return {k: np.asarray(arrays[f"{i:06d}"]) for i, k in enumerate(keys)}


def _assert_same_state(a: dict, b: dict):
  assert list(a) == list(b)
  for key, x in a.items():
    assert x.dtype == b[key].dtype and x.shape == b[key].shape, key
    np.testing.assert_array_equal(x, b[key], err_msg=key)


def _assert_same_masks(run_a, run_b):
  masks_a, masks_b = np.load(run_a / "masks.npz"), np.load(run_b / "masks.npz")
  assert masks_a.files == masks_b.files and masks_a.files
  for key in masks_a.files:
    np.testing.assert_array_equal(masks_a[key], masks_b[key], err_msg=key)
  # The masks prune: the comparison is not between two all-ones trees.
  assert sum(int((~masks_a[k].astype(bool)).sum()) for k in masks_a.files) > 0


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("xla-cache")


@pytest.fixture(scope="module")
def straight(tmp_path_factory, cache):
  out = tmp_path_factory.mktemp("straight")
  _run(out, cache=cache)
  run_dir = out / RUN
  results = json.loads((run_dir / "results.json").read_text())
  assert results["steps"] == STEPS and results["frozen_at"] == FREEZE_AT
  return run_dir


def _assert_equals_straight(run_dir, straight):
  results = json.loads((run_dir / "results.json").read_text())
  assert results["steps"] == STEPS and results["frozen_at"] == FREEZE_AT
  assert not results["interrupted"] and not results["stopped_early"]
  # Every step once, each loss bit for bit (json floats round-trip exactly).
  assert [s for s, _ in _losses(run_dir)] == list(range(1, STEPS + 1))
  assert _losses(run_dir) == _losses(straight)
  _assert_same_masks(run_dir, straight)
  _assert_same_state(_checkpoint(run_dir, STEPS), _checkpoint(straight, STEPS))
  reference = json.loads((straight / "results.json").read_text())
  assert results["final"] == reference["final"]


def _is_frozen(state: dict) -> bool:
  """A frozen state keeps masks but none of SEVEN's statistics."""
  assert any(".masks" in k for k in state)
  return not any("grad_ema" in k or ".stats" in k for k in state)


@pytest.mark.slow  # four fresh processes: 157 s measured at load 6-11 on 2 cores
def test_stop_and_resume_in_new_processes_before_and_after_the_freeze(tmp_path, cache, straight):
  """Three processes: steps 1-4 (stop), 5-8 (resume, freeze at 7, stop), 9-10 (resume)."""
  out = tmp_path / "chain"
  stdout = _run(out, "--stop-after", "4", cache=cache)
  assert "stopped after step 4" in stdout
  run_dir = out / RUN
  at_4 = _checkpoint(run_dir, 4)
  assert not _is_frozen(at_4) and int(at_4["['step']"]) == 4

  stdout = _run(out, "--resume", "--stop-after", "4", cache=cache)
  assert f"resumed {RUN} from step 4" in stdout and "stopped after step 8" in stdout
  at_8 = _checkpoint(run_dir, 8)
  assert _is_frozen(at_8) and int(at_8["['step']"]) == 8
  assert json.loads((run_dir / "results.json").read_text())["frozen_at"] == FREEZE_AT

  stdout = _run(out, "--resume", cache=cache)
  assert f"resumed {RUN} from step 8" in stdout
  _assert_equals_straight(run_dir, straight)


def _kill_when_saved(out, step, *, cache, steps, deadline_s=600):
  """Starts a run that checkpoints every step and SIGKILLs it once ``step`` is on disk."""
  cmd = [sys.executable, "-m", "experiments.vision", *ARGS, "--steps", str(steps)]
  cmd += ["--out", str(out), "--checkpoint-every", "1"]
  proc = subprocess.Popen(
    cmd, cwd=ROOT, env=_env(cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  done = out / RUN / "checkpoints" / str(step) / "commit_success.txt"
  deadline = time.time() + deadline_s
  try:
    while not done.exists():
      assert proc.poll() is None, f"the run exited ({proc.returncode}) before step {step}"
      assert time.time() < deadline, f"no checkpoint of step {step} after {deadline_s} s"
      time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # no handler, no final save: a crash
  finally:
    proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  assert not (out / RUN / "results.json").exists()  # it never reached its end


@pytest.mark.slow  # three fresh processes, one of them killed mid-run
def test_sigkill_mid_run_then_resume_in_a_new_process(tmp_path, cache):
  """A crash (SIGKILL, possibly during a save) after the freeze, resumed from the latest
  readable checkpoint in a new process, ends exactly where an uninterrupted run does."""
  steps = 60  # long enough that the kill lands before the end
  straight_out, killed_out = tmp_path / "straight", tmp_path / "killed"
  _run(straight_out, cache=cache, steps=steps)
  _kill_when_saved(killed_out, FREEZE_AT + 2, cache=cache, steps=steps)
  run_dir = killed_out / RUN
  stdout = _run(killed_out, "--resume", cache=cache, steps=steps)
  resumed_from = int(stdout.split(f"resumed {RUN} from step ")[1].split()[0])
  assert FREEZE_AT + 2 <= resumed_from < steps
  straight = straight_out / RUN
  assert [s for s, _ in _losses(run_dir)] == list(range(1, steps + 1))
  assert _losses(run_dir) == _losses(straight)
  _assert_same_masks(run_dir, straight)
  _assert_same_state(_checkpoint(run_dir, steps), _checkpoint(straight, steps))
