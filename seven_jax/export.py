"""Export a (pruned) NNX BERT/ViT as a Hugging Face checkpoint directory.

The directory holds ``config.json``, ``model.safetensors`` (PyTorch layout and
key names, pruned weights as exact zeros), the tokenizer files copied from
``tokenizer_dir``, and ``sparsity_report.json``. Any transformers model class
of the matching architecture (PyTorch or Flax) loads it.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
import uuid
from typing import Any, Optional

import jax
import numpy as np
from flax import nnx

from seven_jax import validation
from seven_jax.models import _hf
from seven_jax.models.bert import modeling as bert_modeling
from seven_jax.models.bert import params as bert_params
from seven_jax.models.clip_vision import modeling as clip_modeling
from seven_jax.models.clip_vision import params as clip_params
from seven_jax.models.vit import modeling as vit_modeling
from seven_jax.models.vit import params as vit_params

# Our task classes and the Hugging Face architecture names they export as.
_ARCH = {
  "BertModel": "BertModel",
  "BertForSequenceClassification": "BertForSequenceClassification",
  "BertForQuestionAnswering": "BertForQuestionAnswering",
  "ViTModel": "ViTModel",
  "ViTForImageClassification": "ViTForImageClassification",
  "CLIPVisionModel": "CLIPVisionModel",
}


# Config class -> (family, prunable preset, model classes by architecture).
def _family(config):
  if isinstance(config, bert_modeling.BertConfig):
    return "bert", bert_params.is_prunable_path
  if isinstance(config, vit_modeling.ViTConfig):
    return "vit", vit_params.is_prunable_path
  if isinstance(config, clip_modeling.CLIPVisionConfig):
    return "clip_vision", clip_params.is_prunable_path
  raise ValueError(
    f"config must be a BertConfig, ViTConfig or CLIPVisionConfig, got {type(config).__name__}"
  )


_CLASSES = {
  "BertModel": ("bert", bert_modeling.BertModel),
  "BertForSequenceClassification": ("bert", bert_modeling.BertForSequenceClassification),
  "BertForQuestionAnswering": ("bert", bert_modeling.BertForQuestionAnswering),
  "ViTModel": ("vit", vit_modeling.ViTModel),
  "ViTForImageClassification": ("vit", vit_modeling.ViTForImageClassification),
  "CLIPVisionModel": ("clip_vision", clip_modeling.CLIPVisionModel),
}
_CONFIG_NAMES = {"bert": "BertConfig", "vit": "ViTConfig", "clip_vision": "CLIPVisionConfig"}
# Parameter names that only one family has: they name the family of weights
# that came with the config of another.
_FAMILY_MARKERS = {
  "bert": "word_embeddings",
  "vit": "patch_embeddings",
  "clip_vision": "vision_model",
}


def _architecture(model_or_params, family: str) -> str:
  if isinstance(model_or_params, nnx.Module):
    name = type(model_or_params).__name__
    if name not in _ARCH:
      raise ValueError(f"model_or_params: unsupported model class {name}")
    model_family = _CLASSES[_ARCH[name]][0]
    if model_family != family:
      raise ValueError(
        f"config is a {_CONFIG_NAMES[family]} but model_or_params is a {name} (a "
        f"{_CONFIG_NAMES[model_family][:-6]} model): pass the config of the model's own family."
      )
    return _ARCH[name]
  roots = set(model_or_params.keys())
  if family == "clip_vision":
    return "CLIPVisionModel"
  if family == "bert":
    if "classifier" in roots:
      return "BertForSequenceClassification"
    if "qa_outputs" in roots:
      return "BertForQuestionAnswering"
    return "BertModel"
  return "ViTForImageClassification" if "classifier" in roots else "ViTModel"


def _check_weights_fit_config(names_shapes: dict, arch: str, family: str, config) -> None:
  """Every parameter exists in ``arch`` built from ``config``, with its shape.

  A config of another family, or of other sizes, would otherwise be written
  next to the weights into a directory no loader can read.
  """
  cls = _CLASSES[arch][1]
  try:
    abstract = nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0)))
  except Exception as e:  # noqa: BLE001 - a config the model cannot be built from
    raise ValueError(
      f"config: a {arch} cannot be built from this {type(config).__name__} "
      f"({type(e).__name__}: {e})"
    ) from None
  expected = {
    _hf.path_names(p): tuple(x.shape)
    for p, x in jax.tree_util.tree_leaves_with_path(nnx.state(abstract, nnx.Param))
  }
  unknown = [n for n in names_shapes if n not in expected]
  # A base model may come without its pooler (add_pooling_layer=False).
  missing = [n for n in expected if n not in names_shapes and "pooler" not in n]
  if unknown or missing:
    joined = " ".join(".".join(n) for n in names_shapes)
    other = [f for f, marker in _FAMILY_MARKERS.items() if f != family and marker in joined]
    hint = (
      f" The weights look like a {_CONFIG_NAMES[other[0]][:-6]} model: pass its "
      f"{_CONFIG_NAMES[other[0]]}."
      if other
      else ""
    )
    first = (
      f"model_or_params has {'.'.join(unknown[0])!r}, which a {arch} does not have"
      if unknown
      else f"a {arch} needs {'.'.join(missing[0])!r}, which model_or_params lacks"
    )
    raise ValueError(
      f"config ({type(config).__name__}) does not describe these weights: {first} "
      f"({len(unknown)} unknown, {len(missing)} missing parameters).{hint}"
    )
  for n, shape in names_shapes.items():
    if expected[n] != shape:
      raise ValueError(
        f"config ({type(config).__name__}) does not describe these weights: "
        f"{'.'.join(n)!r} has shape {shape}, the config gives {expected[n]}."
      )


def _param_state(model_or_params, arg: str = "model_or_params"):
  if isinstance(model_or_params, nnx.Module):
    return nnx.state(model_or_params, nnx.Param)
  if not hasattr(model_or_params, "keys"):
    raise TypeError(
      f"{arg} must be an NNX model, its nnx.Param state or a dict of arrays, got "
      f"{type(model_or_params).__name__}."
    )
  for path, leaf in jax.tree_util.tree_leaves_with_path(model_or_params):
    if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
      raise TypeError(
        f"{arg}: {'.'.join(_hf.path_names(path))!r} is a {type(leaf).__name__}, not an array."
      )
  return model_or_params


def _mask_lookup(masks, param_names) -> dict[tuple[str, ...], Any]:
  """Flattens a mask pytree to ``{path names: mask}`` (None leaves dropped).

  Keying by names rather than tree structure lets masks come as an
  ``nnx.State``, a pure dict, or a dict holding only the prunable leaves.

  Raises:
    TypeError: masks is an optimizer state, or a leaf is not a bool/0-1 array.
    ValueError: a mask names no parameter, no mask at all, or a mask holds
      values other than 0 and 1 (scores passed as masks).
  """
  from seven_jax import transform  # pylint: disable=g-import-not-at-top

  try:
    transform.find_state(masks)
    is_state = True
  except ValueError:
    is_state = False
  if is_state:
    raise TypeError(
      "masks is an optimizer state; pass seven_jax.masks(opt_state) (keep-masks keyed like "
      "the params)."
    )
  flat = jax.tree_util.tree_leaves_with_path(masks, is_leaf=lambda x: x is None)
  lookup = {_hf.path_names(p): m for p, m in flat if m is not None}
  if not lookup:
    raise ValueError(
      "masks holds no mask (an empty tree, or every leaf None); pass masks=None to "
      "export the weights as they are."
    )
  unknown = [n for n in lookup if n not in param_names]
  if unknown:
    raise ValueError(
      f"masks: {len(unknown)} of {len(lookup)} masks match no parameter of model_or_params, "
      f"e.g. {'.'.join(unknown[0])!r} (parameters look like "
      f"{'.'.join(next(iter(param_names)))!r}); key the masks like nnx.state(model, nnx.Param)."
    )
  for names, m in lookup.items():
    if isinstance(m, (bool, np.bool_)):
      continue
    if not hasattr(m, "shape"):
      raise TypeError(
        f"masks: the mask for {'.'.join(names)!r} is a {type(m).__name__}; use a bool array "
        "(True = kept), True (keep all) or None (no mask)."
      )
    a = np.asarray(jax.device_get(m))
    if a.dtype != np.bool_ and not np.isin(a, (0, 1)).all():
      bad = a[~np.isin(a, (0, 1))].flat[0]
      raise ValueError(
        f"masks: the mask for {'.'.join(names)!r} holds {bad!r}; keep-masks hold only "
        "True/False (or 1/0). Scores are not masks."
      )
  return lookup


_EXPORT_FILES = frozenset(
  ("config.json", _hf.SAFETENSORS, "sparsity_report.json") + tuple(_hf.TOKENIZER_FILES)
)


def _check_out_dir(out: pathlib.Path, tokenizer_dir: Optional[pathlib.Path]) -> None:
  """Refuses an ``out_dir`` whose files an export would destroy."""
  if out.exists() and not out.is_dir():
    raise ValueError(f"out_dir {str(out)!r} is a file, not a directory.")
  if tokenizer_dir is not None and out.is_dir() and os.path.samefile(out, tokenizer_dir):
    raise ValueError(
      f"out_dir {str(out)!r} is tokenizer_dir, the source checkpoint: the export would "
      "overwrite the model it was read from. Choose another out_dir."
    )
  if not out.is_dir():
    return
  names = {p.name for p in out.iterdir()}
  if not names:
    return
  foreign = sorted(names - _EXPORT_FILES)
  if "sparsity_report.json" not in names:
    raise FileExistsError(
      f"out_dir {str(out)!r} holds {sorted(names)[:4]} and no sparsity_report.json: it is not "
      "an earlier export (e.g. it is the source checkpoint). Refusing to overwrite it; "
      "choose a new or empty out_dir."
    )
  if foreign:
    raise FileExistsError(
      f"out_dir {str(out)!r} is an earlier export but also holds {foreign[:4]}, which an "
      "export would delete when replacing it; choose a new or empty out_dir."
    )


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _replace_dir_atomically(out: pathlib.Path, write) -> None:
  """Runs ``write(tmp)`` in a temporary sibling of ``out``, then renames it to
  ``out``: a crash leaves either the old directory or the new one.

  An existing (earlier export) ``out`` is renamed aside first and deleted
  after the swap; only a crash between the two renames leaves it, complete,
  as ``.<name>.old-*`` next to ``out``.
  """
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
  try:
    write(tmp)
    for f in tmp.iterdir():  # on disk before the rename makes them visible
      with open(f, "rb+") as fh:
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private
    old = None
    if out.is_dir() and any(out.iterdir()):
      old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
      os.rename(out, old)
    os.rename(tmp, out)  # onto a missing or empty directory: atomic
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def export_pruned(
  model_or_params,
  config,
  out_dir: str | os.PathLike,
  masks: Optional[Any] = None,
  tokenizer_dir: Optional[str | os.PathLike] = None,
) -> dict:
  """Writes a Hugging Face-format directory of a pruned model.

  Everything is checked before anything is written, and the directory is
  written atomically (into a temporary sibling, then renamed into place), so
  a failure or a crash never leaves a half-written export.

  Args:
    model_or_params: an NNX BERT/ViT model, or its ``nnx.Param`` state / pure
      dict (the architecture is then inferred from the head's name).
    config: the model's :class:`~seven_jax.models.bert.BertConfig`,
      :class:`~seven_jax.models.vit.ViTConfig` or
      :class:`~seven_jax.models.clip_vision.CLIPVisionConfig` (CLIP exports
      the bare ``CLIPVisionModel`` only). Every parameter must exist, with its
      shape, in that architecture built from ``config``.
    out_dir: output directory: new, empty, or an earlier export (which is
      replaced as a whole). A directory holding anything else, e.g. the
      source checkpoint, is refused.
    masks: optional pytree of keep-masks (bool or 0/1 arrays) shaped like the
      params, keyed like the param state; leaves may be ``None``/absent for
      unmasked parameters, but every mask must name a parameter. Masked-out
      weights are written as exact ``0.0``. Parameters that are ``True`` as a
      Python bool are kept whole.
    tokenizer_dir: directory whose tokenizer files (``vocab.txt``,
      ``tokenizer.json``, ...) are copied; e.g. the source checkpoint.

  Returns:
    The sparsity report (also written to ``sparsity_report.json``): per
    masked tensor its HF key, shape, size and zeros, and totals over the
    masked tensors (over the model's prunable preset when ``masks`` is None).

  Raises:
    TypeError: ``model_or_params``, ``masks``, ``out_dir`` or
      ``tokenizer_dir`` of the wrong kind (e.g. an optimizer state as masks).
    ValueError: an unknown config type; a config that does not describe the
      weights (another family, other sizes); masks that name no parameter,
      hold values other than 0/1, or differ in shape from their parameter
      (naming it); ``out_dir`` equal to ``tokenizer_dir``.
    FileExistsError: ``out_dir`` holds files that are not an earlier export.
  """
  family, preset = _family(config)
  for name, value in (("out_dir", out_dir), ("tokenizer_dir", tokenizer_dir)):
    if value is not None and not isinstance(value, (str, os.PathLike)):
      raise TypeError(f"{name} must be a str or os.PathLike, got {type(value).__name__}.")
  if out_dir is None:
    raise TypeError("out_dir must be a str or os.PathLike, got None.")
  src = None
  if tokenizer_dir is not None:
    src = pathlib.Path(tokenizer_dir)
    if not src.is_dir():
      raise ValueError(f"tokenizer_dir {str(src)!r} is not a directory")
  out = pathlib.Path(out_dir).absolute()
  _check_out_dir(out, src)

  state = _param_state(model_or_params)
  arch = _architecture(model_or_params, family)
  flat = [(_hf.path_names(path), leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(state)]
  if not flat:
    raise ValueError("model_or_params holds no parameters.")
  _check_weights_fit_config({n: tuple(np.shape(x)) for n, x in flat}, arch, family, config)
  lookup = _mask_lookup(masks, {n for n, _ in flat}) if masks is not None else {}

  tensors, rows = {}, []
  for names, leaf in flat:
    w = np.asarray(jax.device_get(leaf), dtype=np.float32)
    key, _ = _hf.torch_key(names)
    m = lookup.get(names)
    counted = preset(names) if masks is None else m is not None
    if m is not None and not (isinstance(m, (bool, np.bool_)) and m):
      m = np.asarray(jax.device_get(m))
      if m.shape != w.shape:
        raise ValueError(
          f"masks: mask for {'.'.join(names)!r} has shape {m.shape}, parameter has {w.shape}"
        )
      # where (not multiply) so pruned entries are +0.0, never -0.0 or NaN.
      w = np.where(m.astype(bool), w, np.float32(0.0))
    tensors[key] = np.ascontiguousarray(_hf.to_torch_layout(names, w))
    if counted:
      rows.append(
        {
          "key": key,
          "shape": list(w.shape),
          "size": int(w.size),
          "zeros": int(np.count_nonzero(w == 0)),
        }
      )

  cfg = config.to_hf_dict()
  cfg["architectures"] = [arch]
  cfg["torch_dtype"] = "float32"
  copied = [n for n in _hf.TOKENIZER_FILES if src is not None and (src / n).is_file()]
  total = sum(r["size"] for r in rows)
  zeros = sum(r["zeros"] for r in rows)
  report = {
    "architecture": arch,
    "num_tensors": len(rows),
    "total_weights": total,
    "zero_weights": zeros,
    "sparsity": zeros / total if total else 0.0,
    "remain_ratio": 1.0 - zeros / total if total else 1.0,
    "all_params": int(sum(t.size for t in tensors.values())),
    "tokenizer_files": copied,
    "tensors": rows,
  }

  def write(tmp: pathlib.Path):
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

    save_file(tensors, str(tmp / _hf.SAFETENSORS), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    for name in copied:
      shutil.copyfile(src / name, tmp / name)
    (tmp / "sparsity_report.json").write_text(json.dumps(report, indent=2))

  _replace_dir_atomically(out, write)
  return report


def sparse_memory_report(
  model_or_params, masks: Optional[Any] = None, *, as_bcoo: bool = False
) -> dict:
  """Memory of the masked matrices in dense, BCOO and 2:4 layouts.

  Args:
    model_or_params: an NNX model, or its param state / pure dict.
    masks: keep-masks as for :func:`export_pruned` (leaves ``None`` or absent
      for unmasked parameters). ``None`` uses the weights' own zeros on every
      2-D kernel.
    as_bcoo: also return the matrices as
      ``jax.experimental.sparse.BCOO`` under ``"bcoo"`` (key: HF-style name).

  Returns:
    A dict with, over the masked matrices: ``dense_bytes`` (float32),
    ``bcoo_bytes`` (float32 values + int32 (row, col) indices),
    ``two_four_bytes`` (half the values in float32 + 2-bit positions, as
    NVIDIA's 2:4 format) when every group of 4 consecutive inputs keeps at
    most 2, else ``None``, and ``two_four_ok``.

  Raises:
    TypeError, ValueError: as :func:`export_pruned` for ``model_or_params``
      and ``masks``; ``as_bcoo`` not a bool.
  """
  as_bcoo = validation.check_bool("as_bcoo", as_bcoo)
  state = _param_state(model_or_params)
  param_names = {_hf.path_names(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)}
  lookup = _mask_lookup(masks, param_names) if masks is not None else {}
  dense = bcoo = nnz_total = 0
  two_four_ok = True
  two_four = 0
  mats = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    names = _hf.path_names(path)
    m = lookup.get(names)
    if masks is not None and m is None:
      continue
    w = np.asarray(jax.device_get(leaf), np.float32)
    if masks is None:
      if names[-1] != "kernel" or w.ndim != 2:
        continue
    elif not (isinstance(m, (bool, np.bool_)) and m):
      m = np.asarray(jax.device_get(m))
      if m.shape != w.shape:
        raise ValueError(
          f"masks: mask for {'.'.join(names)!r} has shape {m.shape}, parameter has {w.shape}"
        )
      w = np.where(m.astype(bool), w, np.float32(0.0))
    nnz = int(np.count_nonzero(w))
    dense += w.size * 4
    bcoo += nnz * (4 + 4 * w.ndim)
    nnz_total += nnz
    # 2:4 groups run along the input (reduction) axis: kernel rows.
    if w.ndim == 2 and w.shape[0] % 4 == 0:
      groups = (w != 0).reshape(w.shape[0] // 4, 4, w.shape[1]).sum(1)
      two_four_ok &= bool(groups.max(initial=0) <= 2)
      two_four += w.size // 2 * 4 + w.size // 2 * 2 // 8
    else:
      two_four_ok = False
    if as_bcoo:
      from jax.experimental import sparse  # pylint: disable=g-import-not-at-top

      mats[_hf.torch_key(names)[0]] = sparse.BCOO.fromdense(w, nse=nnz)
  out = {
    "dense_bytes": dense,
    "bcoo_bytes": bcoo,
    "nonzeros": nnz_total,
    "two_four_ok": two_four_ok,
    "two_four_bytes": two_four if two_four_ok else None,
  }
  if as_bcoo:
    out["bcoo"] = mats
  return out
