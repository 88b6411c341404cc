"""Save and resume whole training states with orbax.

A *training state* is any pytree of arrays: params, optimizer state (SEVEN
masks and statistics included), the step, typed or raw PRNG keys, and the
data position. :class:`CheckpointManager` wraps ``orbax.checkpoint``'s
``CheckpointManager`` with three additions:

* the pytree is stored as a flat, numbered list of leaves plus a JSON
  manifest (key path, shape, dtype of each leaf), so that any pytree node
  type (``nnx.State``, optax ``NamedTuple`` states, dataclasses) round-trips
  as long as the caller gives a target of the same structure;
* restoring into a target of another structure or shape fails *before*
  reading arrays, with a ``ValueError`` naming the first mismatching key and
  both shapes;
* typed PRNG keys (``jax.random.key``) are stored as their key data and
  re-wrapped on restore.

Atomicity comes from orbax: a step is written to a temporary directory and
renamed into place only after all its files are committed, so a crash mid-
save leaves the previous step as the latest one.

Example::

  mngr = CheckpointManager("/tmp/run", max_to_keep=3, save_interval_steps=100)
  state = {"params": params, "opt": opt_state, "step": step,
           "rng": key, "data": {"epoch": epoch, "index": index}}
  for step in ...:
    ...
    mngr.save(step, state)            # only every 100 steps
  # on SIGTERM / SIGINT (preemption), save at a step boundary:
  with mngr.interrupt_guard():
    for step in ...:
      state = train_step(state)
      mngr.save(step, state)
      if mngr.interrupted:
        mngr.save_now(step, state)
        break
  # new process:
  state = mngr.restore(abstract_state)  # latest step
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

_MANIFEST_VERSION = 1


def _is_prng_key(x) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _flatten(tree):
  flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
  return [(jax.tree_util.keystr(p), x) for p, x in flat], treedef


def _leaf_meta(x) -> dict:
  if _is_prng_key(x):
    meta = {"shape": list(x.shape), "dtype": "prng_key"}
    if isinstance(x, jax.Array):  # abstract targets carry no impl object
      meta["impl"] = str(jax.random.key_impl(x))
    return meta
  if isinstance(x, (bool, int, float, np.number)) and not hasattr(x, "shape"):
    a = np.asarray(x)
    return {"shape": [], "dtype": str(a.dtype), "python": type(x).__name__}
  return {"shape": list(x.shape), "dtype": str(np.dtype(x.dtype))}


def _to_saveable(x):
  if _is_prng_key(x):
    return np.asarray(jax.random.key_data(x))
  return x if isinstance(x, jax.Array) else np.asarray(x)


class CheckpointManager:
  """Keeps the last ``max_to_keep`` training states under ``directory``.

  Args:
    directory: root directory; one sub-directory per saved step.
    max_to_keep: number of most recent steps kept (``None``: all).
    save_interval_steps: :meth:`save` only writes when ``step`` is a multiple
      of this; :meth:`save_now` always writes.
    async_save: let orbax write in a background thread (call
      :meth:`wait_until_finished` before relying on the files).
  """

  def __init__(
    self,
    directory: str | os.PathLike,
    *,
    max_to_keep: Optional[int] = 3,
    save_interval_steps: int = 1,
    async_save: bool = False,
  ):
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1 or None, got {max_to_keep}")
    if save_interval_steps < 1:
      raise ValueError(f"save_interval_steps must be >= 1, got {save_interval_steps}")
    self.directory = os.path.abspath(os.fspath(directory))
    self.save_interval_steps = save_interval_steps
    self._interrupted = threading.Event()
    self._mngr = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        # The interval is applied here (orbax would also save the very
        # first step it sees, whatever its number).
        max_to_keep=max_to_keep,
        save_interval_steps=1,
        enable_async_checkpointing=async_save,
        create=True,
        # Leftovers of a crashed save are removed, never promoted.
        cleanup_tmp_directories=True,
      ),
      item_names=("state", "manifest"),
    )

  # -- saving ----------------------------------------------------------------

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Saves ``state`` as ``step`` if the interval policy says so.

    Returns:
      Whether a checkpoint was written (started, when async).
    """
    step = int(step)
    if not force and step % self.save_interval_steps:
      return False
    flat, _ = _flatten(state)
    manifest = {
      "version": _MANIFEST_VERSION,
      "keys": [k for k, _ in flat],
      "leaves": [_leaf_meta(x) for _, x in flat],
    }
    arrays = {f"{i:06d}": _to_saveable(x) for i, (_, x) in enumerate(flat)}
    return self._mngr.save(
      step,
      force=force,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(arrays), manifest=ocp.args.JsonSave(manifest)
      ),
    )

  def save_now(self, step: int, state: Any) -> bool:
    """Saves regardless of the interval (for interrupts / end of training)."""
    if int(step) in self.all_steps():
      return False  # already saved by the regular policy at this step
    saved = self.save(step, state, force=True)
    self.wait_until_finished()
    return saved

  # -- restoring -------------------------------------------------------------

  def latest_step(self) -> Optional[int]:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def restore(self, target: Any, step: Optional[int] = None) -> Any:
    """Restores a state with the structure of ``target``.

    Args:
      target: a pytree of the same structure as what was saved; leaves may
        be arrays, ``jax.ShapeDtypeStruct`` (e.g. from ``jax.eval_shape``) or
        Python scalars.
      step: the step to restore; ``None`` means the latest.

    Raises:
      FileNotFoundError: when there is no checkpoint (at that step).
      ValueError: when the checkpoint's keys, shapes or dtypes differ from
        ``target``; the message names the first mismatching key.
    """
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f"no checkpoint in {self.directory}")
    elif int(step) not in self.all_steps():
      raise FileNotFoundError(
        f"no checkpoint for step {step} in {self.directory} (have {self.all_steps()})"
      )
    step = int(step)
    manifest = self._mngr.restore(step, args=ocp.args.Composite(manifest=ocp.args.JsonRestore()))[
      "manifest"
    ]
    tflat, treedef = _flatten(target)
    self._check(step, manifest, tflat)
    abstract = {}
    for i, (_, x) in enumerate(tflat):
      meta = manifest["leaves"][i]
      if meta["dtype"] == "prng_key":
        data = jax.eval_shape(jax.random.key_data, x)
        abstract[f"{i:06d}"] = jax.ShapeDtypeStruct(data.shape, data.dtype)
      else:
        abstract[f"{i:06d}"] = jax.ShapeDtypeStruct(tuple(meta["shape"]), np.dtype(meta["dtype"]))
    arrays = self._mngr.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
    )["state"]
    leaves = []
    for i, (_, x) in enumerate(tflat):
      meta, a = manifest["leaves"][i], arrays[f"{i:06d}"]
      if meta["dtype"] == "prng_key":
        a = jax.random.wrap_key_data(jnp.asarray(a), impl=meta["impl"])
      elif (
        hasattr(x, "dtype")
        and np.issubdtype(np.dtype(x.dtype), np.integer)
        and np.dtype(x.dtype) != np.dtype(meta["dtype"])
      ):
        a = np.asarray(a).astype(x.dtype)
      elif "python" in meta:
        a = {"int": int, "float": float, "bool": bool}.get(meta["python"], lambda v: v)(
          np.asarray(a).item()
        )
      leaves.append(a)
    return jax.tree_util.tree_unflatten(treedef, leaves)

  @staticmethod
  def _check(step, manifest, tflat):
    keys, metas = manifest["keys"], manifest["leaves"]
    for i in range(max(len(keys), len(tflat))):
      if i >= len(keys):
        raise ValueError(
          f"checkpoint step {step} does not match the target: target key "
          f"{tflat[i][0]!r} is not in the checkpoint (checkpoint has "
          f"{len(keys)} leaves, target {len(tflat)})"
        )
      if i >= len(tflat):
        raise ValueError(
          f"checkpoint step {step} does not match the target: checkpoint "
          f"key {keys[i]!r} is not in the target (checkpoint has "
          f"{len(keys)} leaves, target {len(tflat)})"
        )
      tkey, x = tflat[i]
      tmeta = _leaf_meta(x)
      if keys[i] != tkey:
        raise ValueError(
          f"checkpoint step {step} does not match the target: first "
          f"mismatching key: checkpoint {keys[i]!r} "
          f"(shape {tuple(metas[i]['shape'])}) vs target {tkey!r} "
          f"(shape {tuple(tmeta['shape'])})"
        )
      if tuple(metas[i]["shape"]) != tuple(tmeta["shape"]):
        raise ValueError(
          f"checkpoint step {step} does not match the target at key "
          f"{tkey!r}: checkpoint shape {tuple(metas[i]['shape'])}, target "
          f"shape {tuple(tmeta['shape'])}"
        )
      # Python scalars (e.g. an int step) may come back against a weakly
      # typed ShapeDtypeStruct from jax.eval_shape: their dtype is not fixed.
      scalar = "python" in metas[i] or "python" in tmeta
      # int64 counters saved with x64 on come back as int32 targets from
      # jax.eval_shape with x64 off; integers of either width are accepted.
      ints = all(
        d != "prng_key" and np.issubdtype(np.dtype(d), np.integer)
        for d in (metas[i]["dtype"], tmeta["dtype"])
      )
      if not (scalar or ints) and metas[i]["dtype"] != tmeta["dtype"]:
        raise ValueError(
          f"checkpoint step {step} does not match the target at key "
          f"{tkey!r}: checkpoint dtype {metas[i]['dtype']}, target dtype "
          f"{tmeta['dtype']}"
        )

  # -- interrupts ------------------------------------------------------------

  @property
  def interrupted(self) -> bool:
    """True once a signal caught by :meth:`interrupt_guard` has arrived."""
    return self._interrupted.is_set()

  @contextlib.contextmanager
  def interrupt_guard(self, signals=(signal.SIGTERM, signal.SIGINT)):
    """Turns the given signals into the :attr:`interrupted` flag.

    The handler only sets a flag: saving from inside a signal handler could
    capture a half-updated state, so the training loop checks the flag at a
    step boundary and calls :meth:`save_now`. Previous handlers are restored
    on exit. Must be entered from the main thread (a Python restriction).
    """
    self._interrupted.clear()
    old = {s: signal.signal(s, lambda *_: self._interrupted.set()) for s in signals}
    try:
      yield self
    finally:
      for s, h in old.items():
        signal.signal(s, h)

  # -- lifecycle -------------------------------------------------------------

  def wait_until_finished(self):
    self._mngr.wait_until_finished()

  def close(self):
    self._mngr.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
