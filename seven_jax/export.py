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
from typing import Any, Optional

import jax
import numpy as np
from flax import nnx

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


def _architecture(model_or_params, family: str) -> str:
  if isinstance(model_or_params, nnx.Module):
    name = type(model_or_params).__name__
    if name not in _ARCH:
      raise ValueError(f"model_or_params: unsupported model class {name}")
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


def _mask_lookup(masks) -> dict[tuple[str, ...], Any]:
  """Flattens a mask pytree to ``{path names: mask}`` (None leaves dropped).

  Keying by names rather than tree structure lets masks come as an
  ``nnx.State``, a pure dict, or a dict holding only the prunable leaves.
  """
  flat = jax.tree_util.tree_leaves_with_path(masks, is_leaf=lambda x: x is None)
  return {_hf.path_names(p): m for p, m in flat if m is not None}


def export_pruned(
  model_or_params,
  config,
  out_dir: str | os.PathLike,
  masks: Optional[Any] = None,
  tokenizer_dir: Optional[str | os.PathLike] = None,
) -> dict:
  """Writes a Hugging Face-format directory of a pruned model.

  Args:
    model_or_params: an NNX BERT/ViT model, or its ``nnx.Param`` state / pure
      dict (the architecture is then inferred from the head's name).
    config: the model's :class:`~seven_jax.models.bert.BertConfig`,
      :class:`~seven_jax.models.vit.ViTConfig` or
      :class:`~seven_jax.models.clip_vision.CLIPVisionConfig` (CLIP exports
      the bare ``CLIPVisionModel`` only).
    out_dir: output directory (created; existing files are overwritten).
    masks: optional pytree of keep-masks (bool or 0/1 arrays) shaped like the
      params, keyed like the param state; leaves may be ``None``/absent for
      unmasked parameters. Masked-out weights are written as exact ``0.0``.
      Parameters that are ``True`` as a Python bool are kept whole.
    tokenizer_dir: directory whose tokenizer files (``vocab.txt``,
      ``tokenizer.json``, ...) are copied; e.g. the source checkpoint.

  Returns:
    The sparsity report (also written to ``sparsity_report.json``): per
    masked tensor its HF key, shape, size and zeros, and totals over the
    masked tensors (over the model's prunable preset when ``masks`` is None).

  Raises:
    ValueError: on an unknown config type, or a mask whose shape differs from
      its parameter (naming the parameter).
  """
  if isinstance(config, bert_modeling.BertConfig):
    family, preset = "bert", bert_params.is_prunable_path
  elif isinstance(config, vit_modeling.ViTConfig):
    family, preset = "vit", vit_params.is_prunable_path
  elif isinstance(config, clip_modeling.CLIPVisionConfig):
    family, preset = "clip_vision", clip_params.is_prunable_path
  else:
    raise ValueError(
      f"config must be a BertConfig, ViTConfig or CLIPVisionConfig, got {type(config).__name__}"
    )
  state = (
    nnx.state(model_or_params, nnx.Param)
    if isinstance(model_or_params, nnx.Module)
    else model_or_params
  )
  arch = _architecture(model_or_params, family)
  lookup = _mask_lookup(masks) if masks is not None else {}

  tensors, rows = {}, []
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    names = _hf.path_names(path)
    w = np.asarray(jax.device_get(leaf), dtype=np.float32)
    key, _ = _hf.torch_key(names)
    m = lookup.get(names)
    counted = preset(names) if masks is None else m is not None
    if m is not None and not (isinstance(m, bool) and m):
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

  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  save_file(tensors, str(out / _hf.SAFETENSORS), metadata={"format": "pt"})
  cfg = config.to_hf_dict()
  cfg["architectures"] = [arch]
  cfg["torch_dtype"] = "float32"
  (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
  copied = []
  if tokenizer_dir is not None:
    src = pathlib.Path(tokenizer_dir)
    if not src.is_dir():
      raise ValueError(f"tokenizer_dir {str(src)!r} is not a directory")
    for name in _hf.TOKENIZER_FILES:
      if (src / name).is_file():
        shutil.copyfile(src / name, out / name)
        copied.append(name)

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
  (out / "sparsity_report.json").write_text(json.dumps(report, indent=2))
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
  """
  state = (
    nnx.state(model_or_params, nnx.Param)
    if isinstance(model_or_params, nnx.Module)
    else model_or_params
  )
  lookup = _mask_lookup(masks) if masks is not None else {}
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
    elif not (isinstance(m, bool) and m):
      w = np.where(np.asarray(m).astype(bool), w, np.float32(0.0))
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
