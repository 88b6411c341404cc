"""Fault injection: damaged checkpoints, saves after a rollback, unsafe exports.

Checkpoints: every file of the latest step is deleted, truncated or zeroed in
turn (and whole item directories removed, and single bits flipped); restoring
the latest step must then give either that step intact or the previous step
(with a warning naming the damaged directory), never an exception and never
wrong data. A save after a rollback must be written and must retire the
abandoned newer steps before anything else.

Export: ``out_dir`` that is the source checkpoint, masks that match nothing,
a config of another model family, and a crash in the middle of the write must
leave every file on disk as it was.
"""

import hashlib
import json
import os
import pathlib
import shutil
import warnings

import jax
import numpy as np
import pytest

from seven_jax.checkpoint import CheckpointManager, DamagedCheckpointError

# orbax leaves a callback of a failed (damaged) read to an event loop that is
# closed by then; Python reports it as unraisable. Noise, not a failure.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

STEPS = (10, 20, 30)


def _state(step):
  """A tiny state whose every leaf depends on ``step`` (random, incompressible)."""
  rng = np.random.default_rng(step)
  return {
    "w": rng.normal(size=(64, 64)).astype(np.float32),
    "b": np.full((5,), step, np.int32),
    "rng": jax.random.key(step),
    "step": step,
  }


TARGET = jax.eval_shape(lambda: _state(0))


def _assert_is(restored, step):
  ref = _state(step)
  assert restored["step"] == step
  np.testing.assert_array_equal(restored["w"], ref["w"])
  np.testing.assert_array_equal(restored["b"], ref["b"])
  np.testing.assert_array_equal(
    jax.random.key_data(restored["rng"]), jax.random.key_data(ref["rng"])
  )


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("ckpt_src") / "ckpt"
  with CheckpointManager(d, max_to_keep=None) as m:
    for s in STEPS:
      assert m.save(s, _state(s))
  return d


@pytest.fixture
def ckpt(good_dir, tmp_path):
  d = tmp_path / "ckpt"
  shutil.copytree(good_dir, d)
  return d


def _files_of_latest(d):
  root = d / str(STEPS[-1])
  return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _essential(d):
  """Files without which step 30 cannot be read: the JSON manifest, orbax's
  array metadata, the OCDBT root, and the biggest file (the array bytes)."""
  root = d / str(STEPS[-1])
  biggest = max(
    (p for p in (root / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
  )
  return {"manifest/metadata", "state/_METADATA", "state/manifest.ocdbt"} | {
    biggest.relative_to(root).as_posix()
  }


def _damage(path: pathlib.Path, kind: str):
  if kind == "delete":
    path.unlink()
  elif kind == "truncate":
    with open(path, "r+b") as f:
      f.truncate(path.stat().st_size // 2)
  elif kind == "zero":
    path.write_bytes(b"\0" * path.stat().st_size)
  elif kind == "flip":  # four bytes in the middle, inverted
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 4] = bytes(b ^ 0xFF for b in data[mid : mid + 4])
    path.write_bytes(bytes(data))
  else:
    raise AssertionError(kind)


def _restore_latest(d):
  """(restored state, damage warnings) of restore() of the latest step."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with CheckpointManager(d) as m:
      restored = m.restore(TARGET)
  return restored, [str(w.message) for w in caught if "damaged" in str(w.message)]


@pytest.mark.parametrize("kind", ["delete", "truncate", "zero"])
def test_every_damaged_file_falls_back_or_is_harmless(good_dir, tmp_path, kind):
  files = _files_of_latest(good_dir)
  essential = _essential(good_dir)
  assert essential <= set(files), (essential, files)
  outcomes = {}
  for i, rel in enumerate(files):
    d = tmp_path / f"c{i}"
    shutil.copytree(good_dir, d)
    _damage(d / str(STEPS[-1]) / rel, kind)
    restored, damage_warnings = _restore_latest(d)
    if restored["step"] == 30:  # a file orbax does not need to read back
      _assert_is(restored, 30)
      assert not damage_warnings, (rel, damage_warnings)
    else:
      _assert_is(restored, 20)
      assert len(damage_warnings) == 1, (rel, damage_warnings)
      assert os.path.join(str(d), "30") in damage_warnings[0]
    outcomes[rel] = restored["step"]
    shutil.rmtree(d)
  for rel in essential:
    assert outcomes[rel] == 20, f"{kind} {rel}: restored {outcomes[rel]} without noticing"


@pytest.mark.parametrize("item", ["state", "manifest", "."])
def test_missing_item_directory_falls_back(ckpt, item):
  target = ckpt / "30" / item
  if item == ".":
    for p in target.iterdir():  # an empty step directory
      shutil.rmtree(p) if p.is_dir() else p.unlink()
  else:
    shutil.rmtree(target)
  restored, damage_warnings = _restore_latest(ckpt)
  _assert_is(restored, 20)
  assert len(damage_warnings) == 1 and str(ckpt / "30") in damage_warnings[0]


def test_flipped_bytes_in_array_data_caught_by_checksum(good_dir, tmp_path):
  """orbax reads flipped bytes of a large array back without complaint; the
  per-leaf CRC-32 of the manifest catches them."""
  d = tmp_path / "ckpt"
  shutil.copytree(good_dir, d)
  root = d / "30" / "state"
  biggest = max((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  _damage(biggest, "flip")
  restored, damage_warnings = _restore_latest(d)
  _assert_is(restored, 20)
  assert "CRC-32" in damage_warnings[0] or "unreadable" in damage_warnings[0]


def test_explicit_damaged_step_is_a_one_line_error(ckpt):
  (ckpt / "30" / "manifest" / "metadata").write_bytes(b"")
  with CheckpointManager(ckpt) as m:
    with pytest.raises(DamagedCheckpointError) as info:
      m.restore(TARGET, step=30)
    _assert_is(m.restore(TARGET, step=20), 20)
  msg = str(info.value)
  assert "\n" not in msg and str(ckpt / "30") in msg
  # Short traceback: raised from our frame, the orbax chain suppressed.
  assert info.value.__suppress_context__


def test_every_step_damaged(ckpt):
  for s in STEPS:
    shutil.rmtree(ckpt / str(s) / "state")
  with CheckpointManager(ckpt) as m:
    with pytest.warns(UserWarning, match="damaged"):
      with pytest.raises(DamagedCheckpointError, match=r"every checkpoint.*\[10, 20, 30\]"):
        m.restore(TARGET)


def test_target_mismatch_is_not_mistaken_for_damage(ckpt):
  """A wrong target is the caller's mistake: a ValueError, no fallback."""
  bad = dict(TARGET, w=jax.ShapeDtypeStruct((64, 65), np.float32))
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # no "damaged" warning either
    with CheckpointManager(ckpt) as m:
      with pytest.raises(ValueError, match=r"\['w'\].*\(64, 64\).*\(64, 65\)"):
        m.restore(bad)


def test_save_after_fallback_retires_the_damaged_step(ckpt):
  shutil.rmtree(ckpt / "30" / "state")
  with CheckpointManager(ckpt) as m:
    with pytest.warns(UserWarning, match="damaged"):
      _assert_is(m.restore(TARGET), 20)
    with pytest.warns(UserWarning, match=r"step\(s\) \[30\].*obsolete"):
      assert m.save(21, _state(21))
    assert m.all_steps() == [10, 20, 21]
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    _assert_is(_restore_latest(ckpt)[0], 21)


@pytest.mark.parametrize(
  "manifest",
  ['{"version": 2}', "[1, 2, 3]", '{"version": 99, "keys": [], "leaves": []}', "{"],
  ids=["no-keys", "a-list", "unknown-version", "bad-json"],
)
def test_malformed_manifest_falls_back(ckpt, manifest):
  (ckpt / "30" / "manifest" / "metadata").write_text(manifest)
  restored, damage_warnings = _restore_latest(ckpt)
  _assert_is(restored, 20)
  assert len(damage_warnings) == 1 and "manifest" in damage_warnings[0]


def test_manifest_without_checksums_still_restores(ckpt):
  """Checkpoints written before the CRC-32 (manifest version 1) restore."""
  path = ckpt / "30" / "manifest" / "metadata"
  manifest = json.loads(path.read_text())
  assert manifest["version"] == 2 and all("crc32" in leaf for leaf in manifest["leaves"])
  manifest["version"] = 1
  for leaf in manifest["leaves"]:
    del leaf["crc32"]
  path.write_text(json.dumps(manifest))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    _assert_is(_restore_latest(ckpt)[0], 30)


# ---- a save after a rollback ------------------------------------------------


def test_save_after_rollback_writes_and_retires_the_abandoned_steps(ckpt):
  with CheckpointManager(ckpt, max_to_keep=None) as m:
    _assert_is(m.restore(TARGET, step=10), 10)
    with pytest.warns(UserWarning, match=r"step\(s\) \[20, 30\].*obsolete"):
      assert m.save(20, _state(120))
    assert m.save(25, _state(125)) and m.save(30, _state(130))
    assert m.all_steps() == [10, 20, 25, 30]
  # A new process resumes the new trajectory, at every one of its steps.
  with CheckpointManager(ckpt) as m:
    for step, seed in ((20, 120), (25, 125), (30, 130)):
      r = m.restore(TARGET, step=step)
      np.testing.assert_array_equal(r["w"], _state(seed)["w"])


def test_abandoned_steps_retired_before_the_first_write(ckpt):
  """A kill between the rollback and the first written save must not resume
  the abandoned trajectory: the first save() call, even one the interval
  skips, retires the newer steps."""
  with CheckpointManager(ckpt, save_interval_steps=10) as m:
    m.restore(TARGET, step=10)
    with pytest.warns(UserWarning, match="obsolete"):
      assert not m.save(11, _state(11))  # skipped by the interval
    assert m.all_steps() == [10]
  # "kill" here: the next process resumes from 10, the rolled-back step.
  _assert_is(_restore_latest(ckpt)[0], 10)


def test_new_run_in_an_old_directory_retires_the_old_run(ckpt):
  with CheckpointManager(ckpt) as m:  # no restore: a fresh run
    with pytest.warns(UserWarning, match=r"\[10, 20, 30\].*obsolete"):
      assert m.save(10, _state(110))
    assert m.all_steps() == [10]
  np.testing.assert_array_equal(_restore_latest(ckpt)[0]["w"], _state(110)["w"])


def test_same_trajectory_step_is_not_rewritten(ckpt):
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    with CheckpointManager(ckpt) as m:
      _assert_is(m.restore(TARGET), 30)
      assert not m.save(30, _state(30))  # e.g. save_now right after resuming
      assert not m.save_now(30, _state(30))
      assert m.save(31, _state(31)) and not m.save_now(31, _state(31))
      assert m.all_steps() == [20, 30, 31]


def test_save_before_the_restored_step_is_refused(ckpt):
  with CheckpointManager(ckpt) as m:
    m.restore(TARGET)
    with pytest.raises(ValueError, match="step 5 is before step 30"):
      m.save(5, _state(5))
    assert m.all_steps() == [10, 20, 30]  # nothing was deleted


def test_rollback_with_async_saves(ckpt):
  with CheckpointManager(ckpt, async_save=True, max_to_keep=None) as m:
    m.restore(TARGET, step=20)
    with pytest.warns(UserWarning, match=r"\[30\].*obsolete"):
      assert m.save(21, _state(121))
    assert m.save(30, _state(130))
    m.wait_until_finished()
    assert m.all_steps() == [10, 20, 21, 30]
  np.testing.assert_array_equal(_restore_latest(ckpt)[0]["w"], _state(130)["w"])


# ---- export ---------------------------------------------------------------------


def _digest(d: pathlib.Path) -> dict:
  return {
    p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
    for p in sorted(d.rglob("*"))
    if p.is_file()
  }


@pytest.fixture(scope="module")
def tiny_bert():
  from flax import nnx

  from seven_jax.models import bert

  cfg = bert.BertConfig(
    vocab_size=40,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=16,
    num_labels=2,
  )
  model = bert.BertForSequenceClassification(cfg, rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  return model, cfg, params


@pytest.fixture
def source_ckpt(tiny_bert, tmp_path):
  """A Hugging Face checkpoint directory as one downloads it (no report)."""
  from seven_jax.export import export_pruned

  model, cfg, _ = tiny_bert
  d = tmp_path / "source"
  export_pruned(model, cfg, d)
  (d / "sparsity_report.json").unlink()
  (d / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n")
  return d


def test_export_into_its_source_is_refused_before_writing(tiny_bert, source_ckpt):
  from seven_jax.export import export_pruned

  model, cfg, params = tiny_bert
  before = _digest(source_ckpt)
  k = np.asarray(params["bert"]["encoder"]["layer"][0]["intermediate"]["dense"]["kernel"])
  masks = {"bert": {"encoder": {"layer": {0: {"intermediate": {"dense": {"kernel": k > 0}}}}}}}
  with pytest.raises(ValueError, match="out_dir .* is tokenizer_dir, the source checkpoint"):
    export_pruned(model, cfg, source_ckpt, masks=masks, tokenizer_dir=source_ckpt)
  with pytest.raises(FileExistsError, match="not an earlier export"):
    export_pruned(model, cfg, source_ckpt, masks=masks)
  assert _digest(source_ckpt) == before
  assert sorted(p.name for p in source_ckpt.parent.iterdir()) == ["source"]  # no temp left


def test_export_masks_matching_nothing(tiny_bert, tmp_path):
  from seven_jax.export import export_pruned

  model, cfg, params = tiny_bert
  out = tmp_path / "out"
  wrong_keys = {"encoder": {"layer_0": {"query": {"kernel": np.zeros((16, 16), bool)}}}}
  with pytest.raises(ValueError, match=r"1 of 1 masks match no parameter.*encoder\.layer_0"):
    export_pruned(model, cfg, out, masks=wrong_keys)
  with pytest.raises(ValueError, match="holds no mask"):
    export_pruned(model, cfg, out, masks=jax.tree.map(lambda _: None, params))
  with pytest.raises(ValueError, match="match no parameter"):
    export_pruned(model, cfg, out, masks={"w": np.ones((2, 2), bool)})
  assert not out.exists()


def test_export_config_of_another_family(tiny_bert, tmp_path):
  from flax import nnx

  from seven_jax.export import export_pruned
  from seven_jax.models import bert, vit

  model, cfg, params = tiny_bert
  vit_cfg = vit.ViTConfig(
    image_size=16,
    patch_size=4,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
  )
  out = tmp_path / "out"
  with pytest.raises(ValueError, match="config is a ViTConfig but model_or_params is a BertFor"):
    export_pruned(model, vit_cfg, out)
  with pytest.raises(ValueError, match="does not describe these weights.*look like a Bert model"):
    export_pruned(params, vit_cfg, out)
  # Same family, other sizes: the shapes say so.
  wide = bert.BertConfig(**{**cfg.__dict__, "intermediate_size": 48})
  with pytest.raises(ValueError, match=r"intermediate\.dense\.(bias|kernel).*32.*48"):
    export_pruned(params, wide, out)
  vit_model = vit.ViTModel(vit_cfg, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="config is a BertConfig but model_or_params is a ViTModel"):
    export_pruned(vit_model, cfg, out)
  assert not out.exists()


def test_export_crash_mid_write_leaves_the_earlier_export(tiny_bert, tmp_path, monkeypatch):
  import safetensors.numpy

  from seven_jax.export import export_pruned

  model, cfg, params = tiny_bert
  out = tmp_path / "export"
  export_pruned(model, cfg, out)
  before = _digest(out)

  def crash(tensors, filename, metadata=None):
    pathlib.Path(filename).write_bytes(b"half a file")
    raise KeyboardInterrupt("killed mid-write")

  monkeypatch.setattr(safetensors.numpy, "save_file", crash)
  k = np.asarray(params["classifier"]["kernel"])
  with pytest.raises(KeyboardInterrupt):
    export_pruned(model, cfg, out, masks={"classifier": {"kernel": k > 0}})
  assert _digest(out) == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # the temp dir is gone
  with pytest.raises(KeyboardInterrupt):
    export_pruned(model, cfg, tmp_path / "fresh")
  assert not (tmp_path / "fresh").exists()


def test_export_replaces_an_earlier_export_whole(tiny_bert, tmp_path):
  import json

  from seven_jax.export import export_pruned

  model, cfg, params = tiny_bert
  out = tmp_path / "export"
  export_pruned(model, cfg, out)
  k = np.asarray(params["classifier"]["kernel"])
  report = export_pruned(model, cfg, out, masks={"classifier": {"kernel": k > 0}})
  on_disk = json.loads((out / "sparsity_report.json").read_text())
  assert on_disk == json.loads(json.dumps(report))
  assert on_disk["zero_weights"] == int(np.count_nonzero(k <= 0))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
  # Anything that is not an export file blocks the replacement.
  (out / "notes.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="notes.txt"):
    export_pruned(model, cfg, out)
  assert (out / "notes.txt").read_text() == "mine"
