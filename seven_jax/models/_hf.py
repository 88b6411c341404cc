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

import dataclasses
import json
import math
import os
import pathlib
import typing
from collections.abc import Callable, Iterable
from typing import Any

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


CONFIG = "config.json"


def read_config(ckpt_dir: pathlib.Path) -> dict:
  """The ``config.json`` of a checkpoint directory as a dict.

  Raises:
    FileNotFoundError: when the directory has no ``config.json``.
    ValueError: naming the file when it is empty, truncated, not JSON, or
      JSON that is not an object.
  """
  f = pathlib.Path(ckpt_dir) / CONFIG
  if not f.is_file():
    raise FileNotFoundError(f"no {CONFIG} in checkpoint directory {ckpt_dir}")
  try:
    text = f.read_text()
  except UnicodeDecodeError as e:
    raise ValueError(f"{f} is not a text file ({e}); expected a JSON config") from e
  try:
    d = json.loads(text)
  except json.JSONDecodeError as e:
    what = "is empty" if not text.strip() else f"is not valid JSON ({e.msg} at line {e.lineno})"
    raise ValueError(
      f"{f} {what}: expected a Hugging Face config (a JSON object); the file may be truncated"
    ) from e
  if not isinstance(d, dict):
    raise ValueError(
      f"{f} holds a JSON {type(d).__name__}, not an object: expected a Hugging Face "
      'config ({"hidden_size": ..., ...})'
    )
  return d


def load_config(config_cls, ckpt_dir: pathlib.Path, overrides: dict):
  """``config_cls.from_dict`` of the directory's ``config.json``.

  Raises:
    TypeError, ValueError: those of the config class, with the file (and the
      overrides, when given) named in front of the message.
  """
  d = read_config(ckpt_dir)
  try:
    return config_cls.from_dict(d, **overrides)
  except (TypeError, ValueError) as e:
    where = str(pathlib.Path(ckpt_dir) / CONFIG)
    if overrides:
      where += f" (with overrides {', '.join(sorted(overrides))})"
    raise type(e)(f"{where}: {e}") from e


# ------------------------------------------------------------ config classes


def config_from_dict(cls, d: dict, overrides: dict):
  """A config dataclass from a Hugging Face ``config.json`` dict.

  Unknown keys (``architectures``, ``transformers_version``, ...) are
  ignored, ``num_labels`` is inferred from ``id2label`` when absent, and the
  overrides win. A ``model_type`` outside ``cls.MODEL_TYPES`` (a ViT config
  next to BERT weights) is refused.

  Raises:
    TypeError: for an override that is not a field of ``cls``.
    ValueError: for another model type.
  """
  model_type = d.get("model_type")
  if model_type is not None and model_type not in cls.MODEL_TYPES:
    raise ValueError(
      f"model_type {model_type!r} is not a {cls.__name__} checkpoint "
      f"(expected {' or '.join(map(repr, cls.MODEL_TYPES))})"
    )
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(overrides) - names)
  if unknown:
    raise TypeError(
      f"unknown {cls.__name__} field(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}"
    )
  kw = {k: v for k, v in d.items() if k in names}
  if "num_labels" not in kw and isinstance(d.get("id2label"), dict):
    kw["num_labels"] = len(d["id2label"])
  kw.update(overrides)
  return cls(**kw)


def config_to_hf_dict(cfg, **extra) -> dict:
  """A ``config.json`` dict: every field but ``dtype``, labels as id2label/label2id."""
  d = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
  d.pop("dtype")
  num_labels = d.pop("num_labels")
  d.update(
    model_type=type(cfg).MODEL_TYPES[0],
    id2label={str(i): f"LABEL_{i}" for i in range(num_labels)},
    label2id={f"LABEL_{i}": i for i in range(num_labels)},
    **extra,
  )
  return d


def _kind(hint) -> tuple[Any, bool]:
  """(base type, whether None is allowed) of a config field annotation."""
  if typing.get_origin(hint) is typing.Union:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return (args[0] if len(args) == 1 else Any), True
  return hint, False


def check_config(cfg) -> None:
  """Checks the type and range of every field of a model config dataclass.

  From the annotations: ``int`` fields (sizes and counts) are integers >= 1;
  ``float`` fields finite numbers, with dropout rates (``*dropout*``,
  ``*_prob``) in [0, 1), ``layer_norm_eps`` > 0 and ``initializer_range``
  >= 0; ``str`` and ``bool`` fields of that type; ``Optional`` fields may
  be ``None``; ``Any`` (``dtype``) is not checked.

  Raises:
    TypeError: naming the field, the value and the expected type.
    ValueError: naming the field, the value and the allowed range.
  """
  hints = typing.get_type_hints(type(cfg))
  for f in dataclasses.fields(cfg):
    kind, optional = _kind(hints[f.name])
    value = getattr(cfg, f.name)
    if kind is Any or (optional and value is None):
      continue
    got = f"got {value!r} ({type(value).__name__})"
    if kind is bool:
      if not isinstance(value, bool):
        raise TypeError(f"{f.name} must be true or false, {got}")
    elif kind is int:
      if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{f.name} must be an integer, {got}")
      if value < 1:
        raise ValueError(f"{f.name} must be >= 1, got {value}")
    elif kind is float:
      if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{f.name} must be a number, {got}")
      if not math.isfinite(value):
        raise ValueError(f"{f.name} must be finite, got {value}")
      if ("dropout" in f.name or f.name.endswith("_prob")) and not 0 <= value < 1:
        raise ValueError(f"{f.name} is a dropout rate and must be in [0, 1), got {value}")
      if f.name == "layer_norm_eps" and value <= 0:
        raise ValueError(f"layer_norm_eps must be > 0, got {value}")
      if f.name == "initializer_range" and value < 0:
        raise ValueError(f"initializer_range must be >= 0, got {value}")
    elif kind is str:
      if not isinstance(value, str):
        raise TypeError(f"{f.name} must be a string, {got}")


def check_divides(cfg, divisor: str, dividend: str) -> None:
  """Raises ValueError unless ``cfg.<divisor>`` divides ``cfg.<dividend>``."""
  a, b = getattr(cfg, divisor), getattr(cfg, dividend)
  if b % a:
    raise ValueError(f"{dividend} ({b}) must be divisible by {divisor} ({a})")


# ------------------------------------------------------------------ weights


def _load_safetensors(f: pathlib.Path) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

  if not f.is_file():
    raise FileNotFoundError(f"{f} is missing (named by {SAFETENSORS_INDEX})")
  try:
    return dict(load_file(str(f)))
  except Exception as e:  # noqa: BLE001 - SafetensorError, OSError: a damaged file
    raise ValueError(
      f"{f} is not a readable safetensors file ({type(e).__name__}: {e}); it may be "
      "truncated or damaged: export or download it again"
    ) from e


def load_state_dict(ckpt_dir: pathlib.Path) -> dict[str, np.ndarray]:
  """Reads PyTorch-layout weights from ``ckpt_dir`` as numpy arrays.

  Raises:
    FileNotFoundError: no weights file, or a shard named by the index is missing.
    ValueError: naming the file when it is damaged (truncated, not safetensors).
  """
  if (ckpt_dir / SAFETENSORS).is_file():
    return _load_safetensors(ckpt_dir / SAFETENSORS)
  if (ckpt_dir / SAFETENSORS_INDEX).is_file():
    index_file = ckpt_dir / SAFETENSORS_INDEX
    try:
      shards = sorted(set(json.loads(index_file.read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
      raise ValueError(
        f"{index_file} is not a safetensors index (a JSON object with a weight_map): {e!r}"
      ) from e
    out = {}
    for shard in shards:
      out.update(_load_safetensors(ckpt_dir / shard))
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


# ------------------------------------------------------- model entry points


def from_pretrained(
  path_or_id: str | os.PathLike,
  *,
  config_cls,
  tasks: dict,
  task: str,
  prefix: str,
  seed: int,
  return_info: bool,
  overrides: dict,
):
  """The body of every model's ``from_pretrained``.

  Args:
    path_or_id: checkpoint directory or a cached Hub id.
    config_cls: the model's config dataclass.
    tasks: ``{task name: (module class, head attribute names)}``; heads may
      be absent from the checkpoint (or another size) and then stay fresh.
    task: a key of ``tasks``.
    prefix: the base-model attribute of task checkpoints (``"bert"``, ...).
    seed: seed of the fresh parts and of dropout.
    return_info: also return ``{"newly_initialized": [keys]}``.
    overrides: config fields that win over ``config.json``.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top

  if task not in tasks:
    raise ValueError(f"task must be one of {sorted(tasks)}, got {task!r}")
  ckpt = resolve_dir(path_or_id)
  cfg = load_config(config_cls, ckpt, overrides)
  cls, heads = tasks[task]
  sd = load_state_dict(ckpt)
  model, fresh = build_and_load(
    lambda: cls(cfg, rngs=nnx.Rngs(seed)), sd, prefix=prefix, optional=heads
  )
  return (model, {"newly_initialized": fresh}) if return_info else model


def param_tree(model_or_params):
  """``nnx.state(model, nnx.Param)`` of a module; any other pytree as given."""
  from flax import nnx  # pylint: disable=g-import-not-at-top

  if isinstance(model_or_params, nnx.Module):
    return nnx.state(model_or_params, nnx.Param)
  return model_or_params


def to_hf_state_dict(model_or_params) -> dict[str, np.ndarray]:
  """PyTorch-layout state dict with Hugging Face key names (model or param state)."""
  return state_dict_from_params(param_tree(model_or_params))


def prunable_tree(params_or_model, is_prunable: Callable[[tuple[str, ...]], bool]):
  """Bool pytree: ``is_prunable(path names)`` for every parameter leaf.

  The tree has the structure of ``nnx.as_pure(param_state)``: nnx.Optimizer
  calls ``tx.init`` on the wrapped state but ``tx.update`` on the pure one,
  and a tree of bare bools is a tree prefix of both, so it works as an optax
  mask either way. Accepts a module, its param state, a pure dict, an
  abstract state, or a Hugging Face Flax params dict.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top

  tree = nnx.as_pure(param_tree(params_or_model))
  return jax.tree_util.tree_map_with_path(lambda p, _: is_prunable(path_names(p)), tree)
