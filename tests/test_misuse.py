"""A table of bad inputs through every public entry point of checkpoint,
export and report: each must raise the documented error type, with a message
that names the argument (or the file) at fault.

Every case is a function of ``(api, tmp)``: ``api`` holds the entry points
(so the same table can be run against another version of them, e.g. to
tabulate what they did before) and ``tmp`` a fresh directory.
"""

import pathlib
import signal
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import seven_jax
from seven_jax import checkpoint, export, report


def _api():
  return types.SimpleNamespace(
    CheckpointManager=checkpoint.CheckpointManager,
    export_pruned=export.export_pruned,
    sparse_memory_report=export.sparse_memory_report,
    sparsity_report=report.sparsity_report,
  )


# ---- inputs --------------------------------------------------------------------


def _small(step=1):
  return {"w": np.full((3, 4), float(step), np.float32), "step": step}


def _file(tmp):
  f = tmp / "a_file"
  f.write_text("x")
  return f


def _mngr(api, tmp, **kw):
  return api.CheckpointManager(tmp / "ckpt", **kw)


def _saved(api, tmp):
  m = _mngr(api, tmp)
  m.save(1, _small(1))
  return m


_BERT = {}


def _bert():
  """(model, config, pure params) of a tiny BERT, built once."""
  if not _BERT:
    from flax import nnx

    from seven_jax.models import bert

    cfg = bert.BertConfig(
      vocab_size=30,
      hidden_size=8,
      num_hidden_layers=1,
      num_attention_heads=2,
      intermediate_size=16,
      max_position_embeddings=8,
      num_labels=2,
    )
    model = bert.BertForSequenceClassification(cfg, rngs=nnx.Rngs(0))
    _BERT.update(model=model, cfg=cfg, params=nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  return _BERT["model"], _BERT["cfg"], _BERT["params"]


def _vit_config():
  from seven_jax.models import vit

  return vit.ViTConfig(
    image_size=8,
    patch_size=4,
    hidden_size=8,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=16,
  )


def _kernel_masks(fn):
  """Masks on the intermediate kernel of the tiny BERT, from ``fn(kernel)``."""
  _, _, params = _bert()
  k = np.asarray(params["bert"]["encoder"]["layer"][0]["intermediate"]["dense"]["kernel"])
  return {"bert": {"encoder": {"layer": {0: {"intermediate": {"dense": {"kernel": fn(k)}}}}}}}


def _export(api, tmp, **kw):
  model, cfg, _ = _bert()
  args = dict(model_or_params=model, config=cfg, out_dir=tmp / "out")
  args.update(kw)
  return api.export_pruned(**args)


def _pruning_state():
  params = {"w": jnp.ones((4, 4)), "b": jnp.ones(4)}
  tx = seven_jax.seven_mask(optax.adamw(1e-3), sparsity=0.5, start_step=0, pruning_steps=2)
  return params, tx.init(params)


# ---- the table: (entry point, example, call, error type, pattern) ---------------------

CASES = [
  # CheckpointManager(...)
  ("CheckpointManager", "directory=None", lambda a, t: a.CheckpointManager(None), TypeError, "directory"),
  ("CheckpointManager", "directory=3", lambda a, t: a.CheckpointManager(3), TypeError, "directory"),
  ("CheckpointManager", "directory=<a file>", lambda a, t: a.CheckpointManager(_file(t)), ValueError, "directory .*a_file"),
  ("CheckpointManager", "max_to_keep=0", lambda a, t: _mngr(a, t, max_to_keep=0), ValueError, "max_to_keep"),
  ("CheckpointManager", "max_to_keep=2.5", lambda a, t: _mngr(a, t, max_to_keep=2.5), TypeError, "max_to_keep"),
  ("CheckpointManager", "max_to_keep='3'", lambda a, t: _mngr(a, t, max_to_keep="3"), TypeError, "max_to_keep"),
  ("CheckpointManager", "max_to_keep=True", lambda a, t: _mngr(a, t, max_to_keep=True), TypeError, "max_to_keep"),
  ("CheckpointManager", "save_interval_steps=0", lambda a, t: _mngr(a, t, save_interval_steps=0), ValueError, "save_interval_steps"),
  ("CheckpointManager", "save_interval_steps=-1", lambda a, t: _mngr(a, t, save_interval_steps=-1), ValueError, "save_interval_steps"),
  ("CheckpointManager", "save_interval_steps=1.5", lambda a, t: _mngr(a, t, save_interval_steps=1.5), TypeError, "save_interval_steps"),
  ("CheckpointManager", "save_interval_steps=None", lambda a, t: _mngr(a, t, save_interval_steps=None), TypeError, "save_interval_steps"),
  ("CheckpointManager", "async_save='no'", lambda a, t: _mngr(a, t, async_save="no"), TypeError, "async_save"),
  # .save / .save_now
  ("CheckpointManager.save", "step=2.5", lambda a, t: _mngr(a, t).save(2.5, _small()), TypeError, "step"),
  ("CheckpointManager.save", "step=-1", lambda a, t: _mngr(a, t).save(-1, _small()), ValueError, "step"),
  ("CheckpointManager.save", "step='10'", lambda a, t: _mngr(a, t).save("10", _small()), TypeError, "step"),
  ("CheckpointManager.save", "step=None", lambda a, t: _mngr(a, t).save(None, _small()), TypeError, "step"),
  ("CheckpointManager.save", "force='yes'", lambda a, t: _mngr(a, t).save(1, _small(), force="yes"), TypeError, "force"),
  ("CheckpointManager.save", "state={}", lambda a, t: _mngr(a, t).save(1, {}), ValueError, "state"),
  ("CheckpointManager.save", "state={'name': 'bert'}", lambda a, t: _mngr(a, t).save(1, {"name": "bert"}), TypeError, r"state: leaf \['name'\]"),
  ("CheckpointManager.save", "state={'f': print}", lambda a, t: _mngr(a, t).save(1, {"f": print}), TypeError, r"state: leaf \['f'\]"),
  ("CheckpointManager.save", "step before the restored one", lambda a, t: _restored_then(a, t).save(0, _small(0)), ValueError, "step 0 is before step 1"),
  ("CheckpointManager.save_now", "step=2.5", lambda a, t: _mngr(a, t).save_now(2.5, _small()), TypeError, "step"),
  # .restore
  ("CheckpointManager.restore", "empty directory", lambda a, t: _mngr(a, t).restore(_small()), FileNotFoundError, "no checkpoint in .*ckpt"),
  ("CheckpointManager.restore", "step=7 (absent)", lambda a, t: _saved(a, t).restore(_small(), step=7), FileNotFoundError, "step 7 in .*ckpt"),
  ("CheckpointManager.restore", "step=1.5", lambda a, t: _saved(a, t).restore(_small(), step=1.5), TypeError, "step"),
  ("CheckpointManager.restore", "step=-2", lambda a, t: _saved(a, t).restore(_small(), step=-2), ValueError, "step"),
  ("CheckpointManager.restore", "target={}", lambda a, t: _saved(a, t).restore({}), ValueError, "target"),
  ("CheckpointManager.restore", "target={'w': 'x', ...}", lambda a, t: _saved(a, t).restore({"w": "x", "step": 0}), TypeError, r"target: leaf \['w'\]"),
  ("CheckpointManager.restore", "target of another shape", lambda a, t: _saved(a, t).restore({"w": np.zeros((3, 5), np.float32), "step": 0}), ValueError, r"\['w'\].*\(3, 4\).*\(3, 5\)"),
  ("CheckpointManager.restore", "target without a key", lambda a, t: _saved(a, t).restore({"w": np.zeros((3, 4), np.float32)}), ValueError, r"\['step'\]"),
  ("CheckpointManager.step_dir", "step=2.5", lambda a, t: _mngr(a, t).step_dir(2.5), TypeError, "step"),
  # .interrupt_guard
  ("CheckpointManager.interrupt_guard", "signals=SIGTERM", lambda a, t: _enter(_mngr(a, t).interrupt_guard(signal.SIGTERM)), TypeError, "signals"),
  ("CheckpointManager.interrupt_guard", "signals=('TERM',)", lambda a, t: _enter(_mngr(a, t).interrupt_guard(("TERM",))), TypeError, "signals"),
  ("CheckpointManager.interrupt_guard", "signals=(SIGKILL,)", lambda a, t: _enter(_mngr(a, t).interrupt_guard((signal.SIGKILL,))), ValueError, "signals"),
  # export_pruned
  ("export_pruned", "config={'hidden_size': 8}", lambda a, t: _export(a, t, config={"hidden_size": 8}), ValueError, "config"),
  ("export_pruned", "config=ViTConfig, BERT model", lambda a, t: _export(a, t, config=_vit_config()), ValueError, "config is a ViTConfig"),
  ("export_pruned", "config=ViTConfig, BERT params", lambda a, t: _export(a, t, model_or_params=_bert()[2], config=_vit_config()), ValueError, "config .* does not describe"),
  ("export_pruned", "model_or_params=[1, 2]", lambda a, t: _export(a, t, model_or_params=[1, 2]), TypeError, "model_or_params"),
  ("export_pruned", "model_or_params={'w': 'x'}", lambda a, t: _export(a, t, model_or_params={"w": "x"}), TypeError, "model_or_params"),
  ("export_pruned", "out_dir=None", lambda a, t: _export(a, t, out_dir=None), TypeError, "out_dir"),
  ("export_pruned", "out_dir=123", lambda a, t: _export(a, t, out_dir=123), TypeError, "out_dir"),
  ("export_pruned", "out_dir=<a file>", lambda a, t: _export(a, t, out_dir=_file(t)), ValueError, "out_dir .*a_file"),
  ("export_pruned", "out_dir=<a checkpoint dir>", lambda a, t: _export(a, t, out_dir=_hf_dir(t)), FileExistsError, "out_dir .*hf"),
  ("export_pruned", "out_dir=tokenizer_dir", lambda a, t: _export(a, t, out_dir=_hf_dir(t), tokenizer_dir=_hf_dir(t)), ValueError, "out_dir .* is tokenizer_dir"),
  ("export_pruned", "tokenizer_dir=<missing>", lambda a, t: _export(a, t, tokenizer_dir=t / "nope"), ValueError, "tokenizer_dir .*nope"),
  ("export_pruned", "masks=<optimizer state>", lambda a, t: _export(a, t, masks=_pruning_state()[1]), TypeError, r"masks .*seven_jax\.masks"),
  ("export_pruned", "masks=<scores>", lambda a, t: _export(a, t, masks=_kernel_masks(np.abs)), ValueError, "masks: .*intermediate.dense.kernel"),
  ("export_pruned", "masks=<wrong shape>", lambda a, t: _export(a, t, masks=_kernel_masks(lambda k: np.ones((2, 2), bool))), ValueError, "masks: .*intermediate.dense.kernel"),
  ("export_pruned", "masks=<keys of nothing>", lambda a, t: _export(a, t, masks={"encoder": {"q": np.ones((8, 8), bool)}}), ValueError, "masks: .*match no parameter.*encoder.q"),
  ("export_pruned", "masks=<all None>", lambda a, t: _export(a, t, masks=jax.tree.map(lambda _: None, _bert()[2])), ValueError, "masks holds no mask"),
  ("export_pruned", "masks={'...': 'yes'}", lambda a, t: _export(a, t, masks=_kernel_masks(lambda k: "yes")), TypeError, "masks: .*intermediate.dense.kernel"),
  # sparse_memory_report
  ("sparse_memory_report", "as_bcoo='yes'", lambda a, t: a.sparse_memory_report(_bert()[2], as_bcoo="yes"), TypeError, "as_bcoo"),
  ("sparse_memory_report", "model_or_params=None", lambda a, t: a.sparse_memory_report(None), TypeError, "model_or_params"),
  ("sparse_memory_report", "masks=<keys of nothing>", lambda a, t: a.sparse_memory_report(_bert()[2], {"x": np.ones((8, 8), bool)}), ValueError, "masks: .*match no parameter"),
  ("sparse_memory_report", "masks=<wrong shape>", lambda a, t: a.sparse_memory_report(_bert()[2], _kernel_masks(lambda k: np.ones((2, 2), bool))), ValueError, "masks: .*intermediate.dense.kernel"),
  ("sparse_memory_report", "masks=<scores>", lambda a, t: a.sparse_memory_report(_bert()[2], _kernel_masks(np.abs)), ValueError, "masks: .*intermediate.dense.kernel"),
  # sparsity_report
  ("sparsity_report", "params", lambda a, t: a.sparsity_report(_pruning_state()[0]), ValueError, "masks_or_state.*'b' is a float32 array"),
  ("sparsity_report", "plain adamw state", lambda a, t: a.sparsity_report(optax.adamw(1e-3).init(_pruning_state()[0])), ValueError, "masks_or_state.*count"),
  ("sparsity_report", "{}", lambda a, t: a.sparsity_report({}), ValueError, "masks_or_state"),
  ("sparsity_report", "0/1 float masks", lambda a, t: a.sparsity_report({"w": np.ones((2, 2), np.float32)}), ValueError, "masks_or_state.*'w'"),
  ("sparsity_report", "two pruning states", lambda a, t: a.sparsity_report((_pruning_state()[1], _pruning_state()[1])), ValueError, "masks_or_state.*2"),
  ("sparsity_report", "prunable of other keys", lambda a, t: a.sparsity_report(_pruning_state()[1], prunable={"w": True}), ValueError, "prunable"),
]  # fmt: skip


def _restored_then(api, tmp):
  m = _saved(api, tmp)
  m.restore(_small())
  return m


def _enter(guard):
  with guard:
    pass


def _hf_dir(tmp):
  """A Hugging Face checkpoint directory (config + weights + vocab)."""
  d = tmp / "hf"
  if not d.exists():
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"weights")
    (d / "vocab.txt").write_text("[PAD]\n")
  return d


def run_case(api, case, tmp: pathlib.Path):
  """Calls one case; returns the exception it raised (None if none)."""
  try:
    case[2](api, tmp)
  except Exception as e:  # noqa: BLE001 - the table records any outcome
    return e
  return None


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}:{c[1]}" for c in CASES])
def test_misuse_is_a_clear_error(case, tmp_path):
  entry, example, _, exc_type, pattern = case
  before = {p.name for p in tmp_path.iterdir()}
  err = run_case(_api(), case, tmp_path)
  assert err is not None, f"{entry}({example}) raised nothing"
  assert type(err) is exc_type, f"{entry}({example}): {type(err).__name__}: {err}"
  import re

  assert re.search(pattern, str(err)), f"{entry}({example}): {err!r} does not match {pattern!r}"
  assert "\n" not in str(err), f"{entry}({example}): a multi-line message"
  # Nothing was exported: a refused export writes no file.
  if entry == "export_pruned":
    assert not (tmp_path / "out").exists()
    assert not [n for n in {p.name for p in tmp_path.iterdir()} - before if n.startswith(".")]


def test_table_covers_every_public_entry_point():
  entries = {c[0].split(".")[0] for c in CASES}
  assert entries == {
    "CheckpointManager",
    "export_pruned",
    "sparse_memory_report",
    "sparsity_report",
  }
  methods = {c[0].split(".")[1] for c in CASES if "." in c[0]}
  public = {n for n in vars(checkpoint.CheckpointManager) if not n.startswith("_")}
  taking_args = {"save", "save_now", "restore", "interrupt_guard", "step_dir"}
  assert taking_args <= public and methods == taking_args
