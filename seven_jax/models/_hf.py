"""Shared helpers to read and write Hugging Face checkpoint directories.

Only numpy and safetensors are needed for ``model.safetensors``; torch is
imported lazily, and only for the legacy ``pytorch_model.bin`` format.
Parameter paths of our NNX models mirror the PyTorch module names, so the
key mapping is a rename of the last path element plus a transpose:

=============  =====================  ======================================
NNX leaf       PyTorch key suffix     layout change
=============  =====================  ======================================
``kernel``     ``weight``             Linear: transpose; Conv: OIHW -> HWIO
``embedding``  ``weight``             none
``scale``      ``weight`` / gamma     none
``bias``       ``bias`` / beta        none
other          same name              none (e.g. ViT ``cls_token``)
=============  =====================  ======================================
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Iterable

import jax
import numpy as np

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_BIN = "pytorch_model.bin"
TOKENIZER_FILES = (
  "vocab.txt",
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "preprocessor_config.json",
)


def resolve_dir(path_or_id: str | os.PathLike) -> pathlib.Path:
  """Returns a local checkpoint directory for a path or a Hub id.

  A Hub id is looked up in the local Hugging Face cache only when
  ``HF_HUB_OFFLINE`` is set; otherwise ``huggingface_hub`` may download it.

  Raises:
    FileNotFoundError: with an explanation when nothing local is found.
  """
  p = pathlib.Path(path_or_id).expanduser()
  if p.is_dir():
    return p
  if p.exists():
    raise ValueError(
      f"path_or_id must be a checkpoint directory, got the "
      f"file {str(p)!r}; pass its parent directory"
    )
  name = str(path_or_id)
  offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
  try:
    from huggingface_hub import snapshot_download  # pylint: disable=g-import-not-at-top

    return pathlib.Path(
      snapshot_download(
        name, local_files_only=offline, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.bin"]
      )
    )
  except Exception as e:  # noqa: BLE001 - any hub failure means "not here"
    raise FileNotFoundError(
      f"{name!r} is not a local directory and could not be fetched from "
      f"the Hugging Face Hub ({'HF_HUB_OFFLINE is set' if offline else type(e).__name__}). "
      "Pass a local directory containing config.json and "
      "model.safetensors (for all-MiniLM-L6-v2 use "
      "seven_jax.models.bert.default_model_path())."
    ) from e


def read_config(ckpt_dir: pathlib.Path) -> dict:
  f = ckpt_dir / "config.json"
  if not f.is_file():
    raise FileNotFoundError(f"no config.json in checkpoint directory {ckpt_dir}")
  return json.loads(f.read_text())


def load_state_dict(ckpt_dir: pathlib.Path) -> dict[str, np.ndarray]:
  """Reads PyTorch-layout weights from ``ckpt_dir`` as numpy arrays."""
  if (ckpt_dir / SAFETENSORS).is_file():
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

    return dict(load_file(str(ckpt_dir / SAFETENSORS)))
  if (ckpt_dir / SAFETENSORS_INDEX).is_file():
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

    index = json.loads((ckpt_dir / SAFETENSORS_INDEX).read_text())
    out = {}
    for shard in sorted(set(index["weight_map"].values())):
      out.update(load_file(str(ckpt_dir / shard)))
    return out
  if (ckpt_dir / PYTORCH_BIN).is_file():
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(
        f"{ckpt_dir / PYTORCH_BIN} is a PyTorch pickle and reading it needs "
        "torch, which is not installed. Either `pip install torch` (CPU "
        "wheel is enough), or convert it once on a machine with torch:\n"
        "  import torch; from safetensors.torch import save_file\n"
        f"  sd = torch.load('{PYTORCH_BIN}', map_location='cpu')\n"
        "  save_file({k: v.contiguous() for k, v in sd.items()}, "
        "'model.safetensors')"
      ) from e
    sd = torch.load(str(ckpt_dir / PYTORCH_BIN), map_location="cpu", weights_only=True)
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in sd.items()}
  raise FileNotFoundError(f"no {SAFETENSORS}, {SAFETENSORS_INDEX} or {PYTORCH_BIN} in {ckpt_dir}")


def path_names(path: Iterable[Any]) -> tuple[str, ...]:
  """Converts a jax key path (from an nnx.State or a dict) to string names.

  The trailing ``.value`` attribute of an ``nnx.Variable`` is dropped, so a
  path from ``nnx.state(model, nnx.Param)`` and one from
  ``nnx.to_pure_dict`` give the same names.
  """
  out = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      out.append(str(k.key))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      if k.name in ("value", "raw_value"):
        continue
      out.append(k.name)
    elif isinstance(k, jax.tree_util.SequenceKey):
      out.append(str(k.idx))
    else:
      out.append(str(getattr(k, "key", getattr(k, "name", k))))
  return tuple(out)


def torch_key(names: tuple[str, ...]) -> tuple[str, list[str]]:
  """Returns (canonical PyTorch key, alternative keys) for NNX leaf names."""
  *head, last = names
  base = ".".join(head)
  join = lambda s: f"{base}.{s}" if base else s
  if last in ("kernel", "embedding"):
    return join("weight"), []
  if last == "scale":
    return join("weight"), [join("gamma")]
  if last == "bias":
    return join("bias"), [join("beta")]
  return join(last), []


def to_flax_layout(names: tuple[str, ...], arr: np.ndarray) -> np.ndarray:
  if names[-1] != "kernel":
    return arr
  if arr.ndim == 2:
    return arr.T
  if arr.ndim == 4:  # Conv: PyTorch OIHW -> Flax HWIO
    return arr.transpose(2, 3, 1, 0)
  return arr


def to_torch_layout(names: tuple[str, ...], arr: np.ndarray) -> np.ndarray:
  if names[-1] != "kernel":
    return arr
  if arr.ndim == 2:
    return arr.T
  if arr.ndim == 4:
    return arr.transpose(3, 2, 0, 1)
  return arr


def fill_params(
  params_state,
  sd: dict[str, np.ndarray],
  *,
  prefix: str,
  optional: tuple[str, ...] = (),
  fallback=None,
):
  """Returns ``params_state`` with every leaf replaced by its checkpoint tensor.

  Args:
    params_state: ``nnx.state(model, nnx.Param)`` of a freshly built model.
    sd: PyTorch-layout state dict.
    prefix: the base-model attribute (``"bert"``/``"vit"``). Checkpoints of a
      bare base model have no such prefix on their keys; task checkpoints do.
    optional: top-level attribute names (task heads) that may be absent from
      the checkpoint, or present with another shape (another label count);
      they then keep their fresh initialisation.
    fallback: ``fallback(path, leaf)`` gives the fresh value of such a
      leaf; by default the leaf itself.

  Returns:
    (new_state, missing_optional): the filled state and the list of keys that
    kept their initialisation.

  Raises:
    ValueError: naming the first missing key or the first shape mismatch.
  """
  missing_optional = []

  def lookup(path, leaf):
    names = path_names(path)
    key, alts = torch_key(names)
    cands = [key] + alts
    # Accept both "bert.x" and "x" spellings of base-model keys.
    extra = []
    for c in cands:
      if c.startswith(prefix + "."):
        extra.append(c[len(prefix) + 1 :])
      else:
        extra.append(f"{prefix}.{c}")
    for c in cands + extra:
      if c in sd:
        arr = to_flax_layout(names, np.asarray(sd[c]))
        if arr.shape != tuple(leaf.shape) and names[0] in optional:
          # A task head of another size (e.g. 1000 ImageNet classes into a
          # 10-class model): keep the fresh head, as fine-tuning expects.
          missing_optional.append(key)
          return fallback(path, leaf) if fallback else leaf
        if arr.shape != tuple(leaf.shape):
          raise ValueError(
            f"checkpoint tensor {c!r} has shape {arr.shape} (model layout) "
            f"but the model parameter {'.'.join(names)!r} has shape "
            f"{tuple(leaf.shape)}; the config does not match the weights"
          )
        return np.asarray(arr, dtype=np.float32)
    if names[0] in optional:
      missing_optional.append(key)
      return fallback(path, leaf) if fallback else leaf
    raise ValueError(
      f"checkpoint has no tensor for parameter {'.'.join(names)!r} (looked for {cands + extra})"
    )

  new = jax.tree_util.tree_map_with_path(lookup, params_state)
  return new, missing_optional


def state_dict_from_params(params_state) -> dict[str, np.ndarray]:
  """PyTorch-layout ``{key: array}`` from an NNX param state (or pure dict)."""
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(params_state):
    names = path_names(path)
    key, _ = torch_key(names)
    out[key] = np.ascontiguousarray(to_torch_layout(names, np.asarray(leaf)))
  return out


def build_and_load(make, sd: dict[str, np.ndarray], *, prefix: str, optional: tuple[str, ...] = ()):
  """Builds ``make()`` with checkpoint weights, without a full random init.

  The parameter tree comes from ``nnx.eval_shape`` (no compute). Only the
  small non-parameter state (RNG streams) and the task heads are computed,
  in one jitted init from which XLA prunes every unused initialiser. This
  is several times faster than an eager init followed by an overwrite.

  Returns:
    (model, keys of head tensors that kept their fresh initialisation)
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top

  graphdef, abstract, _ = nnx.split(nnx.eval_shape(make), nnx.Param, ...)

  @jax.jit
  def small_init():
    _, params, rest = nnx.split(make(), nnx.Param, ...)
    heads = {k: nnx.as_pure(params[k]) for k in optional if k in params}
    return nnx.as_pure(rest), heads

  rest, heads = small_init()

  def fallback(path, leaf):
    del leaf
    node = heads
    for k in path:
      if isinstance(k, jax.tree_util.GetAttrKey) and k.name in ("value", "raw_value"):
        continue
      node = node[getattr(k, "key", getattr(k, "name", None))]
    return node

  params, fresh = fill_params(
    nnx.as_pure(abstract), sd, prefix=prefix, optional=optional, fallback=fallback
  )
  params = jax.tree.map(jax.numpy.asarray, params)
  return nnx.merge(graphdef, params, rest), fresh
