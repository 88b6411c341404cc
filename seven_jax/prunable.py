"""Which parameters may be pruned: a static pytree of bools shaped like params."""

from __future__ import annotations

from typing import Any, Callable, Union

import jax
import numpy as np

__all__ = ["resolve_prunable", "default_prunable", "path_str", "is_embedding_path"]

PrunableSpec = Union[None, Any, Callable[[Any], Any]]


def path_str(path) -> str:
  """``('encoder', 'layer_0', 'kernel')`` style path as ``encoder/layer_0/kernel``."""
  return "/".join(_key_name(k) for k in path) or "<root>"


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def is_embedding_path(path) -> bool:
  """True if a key of ``path`` names an embedding (contains ``embed``, any case):
  Flax's ``nn.Embed``/``nnx.Embed`` (``.../embedding``), Hugging Face's
  ``word_embeddings``, ``position_embeddings``, ``embed_tokens``, ..."""
  return any("embed" in _key_name(k).lower() for k in path)


def default_prunable(params) -> Any:
  """Every floating-point array with ``ndim >= 2`` (matrices, kernels) that
  is not an embedding table (:func:`is_embedding_path`).

  Embedding tables are left out: a global budget would otherwise take most
  of its pruning from them (their rows of rare tokens have tiny gradients).
  For Transformers prefer a model preset (e.g. ``seven_jax.models.bert``),
  which also leaves out task heads as the official code does.
  """

  def prunable(path, p):
    dtype = getattr(p, "dtype", None)
    # Complex and integer arrays are never pruned by default.
    floating = dtype is None or jax.numpy.issubdtype(dtype, jax.numpy.floating)
    return bool(np.ndim(p) >= 2 and floating and not is_embedding_path(path))

  return jax.tree_util.tree_map_with_path(prunable, params)


def resolve_prunable(prunable: PrunableSpec, params) -> Any:
  """Returns a pytree of Python bools with the structure of ``params``.

  Raises:
    ValueError: the tree does not match ``params`` (the message names the
      first mismatching path), a leaf is not a bool, or nothing is prunable.
  """
  if prunable is None:
    tree = default_prunable(params)
  elif callable(prunable):
    tree = prunable(params)
  else:
    tree = prunable
  is_flag = lambda x: isinstance(x, (bool, np.bool_))
  try:
    # A tree of bools may be a prefix of params: nnx.Optimizer calls init on
    # Variable-wrapped state (leaf paths end in '/value') and update on the
    # pure state; one bool per parameter covers both.
    tree = jax.tree.map(
      lambda flag, sub: jax.tree.map(lambda _: flag, sub), tree, params, is_leaf=is_flag
    )
  except (ValueError, TypeError):
    pass  # not a prefix: the path comparison below names the mismatch
  param_paths = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  spec_paths = [path_str(p) for p, _ in flat]
  if spec_paths != param_paths:
    for i, (a, b) in enumerate(zip(param_paths, spec_paths)):
      if a != b:
        raise ValueError(
          f"prunable does not match params: at leaf {i} params has '{a}' but prunable has '{b}'."
        )
    longer, name = (
      (param_paths, "params") if len(param_paths) > len(spec_paths) else (spec_paths, "prunable")
    )
    raise ValueError(
      f"prunable does not match params: '{longer[min(len(param_paths), len(spec_paths))]}' "
      f"exists only in {name} ({len(param_paths)} params leaves, "
      f"{len(spec_paths)} prunable leaves)."
    )
  values = []
  for path, leaf in flat:
    if isinstance(leaf, (bool, np.bool_)):
      values.append(bool(leaf))
    else:
      raise ValueError(
        f"prunable must hold Python bools, got {type(leaf).__name__} at "
        f"'{path_str(path)}' (masks are chosen statically, outside jit)."
      )
  if not any(values):
    raise ValueError("prunable selects no leaf: nothing would be pruned.")
  return jax.tree.unflatten(jax.tree.structure(params), values)
