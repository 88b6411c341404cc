"""Save and resume whole training states with orbax.

A *training state* is any pytree of arrays: params, optimizer state (SEVEN
masks and statistics included), the step, typed or raw PRNG keys, and the
data position. :class:`CheckpointManager` wraps ``orbax.checkpoint``'s
``CheckpointManager`` with these additions:

* the pytree is stored as a flat, numbered list of leaves plus a JSON
  manifest (key path, shape, dtype and CRC-32 of each leaf), so that any
  pytree node type (``nnx.State``, optax ``NamedTuple`` states, dataclasses)
  round-trips as long as the caller gives a target of the same structure;
* restoring into a target of another structure or shape fails *before*
  reading arrays, with a ``ValueError`` naming the first mismatching key and
  both shapes;
* typed PRNG keys (``jax.random.key``) are stored as their key data and
  re-wrapped on restore;
* a damaged step (a file deleted, truncated or overwritten; caught by orbax,
  by the manifest checks or by the per-leaf CRC-32, computed for every leaf
  one process can read whole) is never fatal when the
  latest step is asked for: :meth:`CheckpointManager.restore` warns, naming
  the damaged step's directory, and falls back to the newest readable step.
  Asked for a damaged step explicitly, it raises a one-line
  :class:`DamagedCheckpointError` naming the directory;
* a directory holds *one* trajectory. A save at step ``s`` makes every step
  after ``s`` on disk obsolete (they belong to a run that was rolled back or
  started over): they are deleted, with a warning naming them, before
  anything is written, so that a later resume can never pick up the
  abandoned trajectory. See :meth:`CheckpointManager.save`.

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
  state = mngr.restore(abstract_state)  # latest readable step
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import warnings
import zlib
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from seven_jax import validation

__all__ = ["CheckpointManager", "DamagedCheckpointError"]

# Version 2 adds a CRC-32 per leaf; version 1 manifests still restore
# (without the checksum test).
_MANIFEST_VERSION = 2
_READABLE_VERSIONS = (1, 2)


class DamagedCheckpointError(OSError):
  """A checkpoint step on disk cannot be read back (files missing, truncated,
  overwritten, or failing their checksum). The message names its directory."""


class _Damaged(Exception):
  """Internal: a step failed to read; carries a one-line reason."""


def _is_prng_key(x) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _flatten(tree):
  flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
  return [(jax.tree_util.keystr(p), x) for p, x in flat], treedef


def _is_python_scalar(x) -> bool:
  return isinstance(x, (bool, int, float, np.number)) and not hasattr(x, "shape")


def _leaf_meta(x, key: str = "", arg: str = "state") -> dict:
  if _is_prng_key(x):
    meta = {"shape": list(x.shape), "dtype": "prng_key"}
    if isinstance(x, jax.Array):  # abstract targets carry no impl object
      meta["impl"] = str(jax.random.key_impl(x))
    return meta
  if _is_python_scalar(x):
    a = np.asarray(x)
    return {"shape": [], "dtype": str(a.dtype), "python": type(x).__name__}
  if not (hasattr(x, "shape") and hasattr(x, "dtype")):
    raise TypeError(
      f"{arg}: leaf {key or '<root>'} is a {type(x).__name__}, not an array, a "
      "jax.ShapeDtypeStruct or a Python number; only those can be checkpointed."
    )
  try:
    dtype = np.dtype(x.dtype)
  except TypeError:
    raise TypeError(f"{arg}: leaf {key or '<root>'} has dtype {x.dtype}, which numpy cannot store.")
  return {"shape": list(x.shape), "dtype": str(dtype)}


def _to_saveable(x):
  if _is_prng_key(x):
    return np.asarray(jax.random.key_data(x))
  return x if isinstance(x, jax.Array) else np.asarray(x)


def _crc32(a, dtype) -> int:
  """CRC-32 of the C-order bytes of ``a`` as ``dtype`` (the stored dtype)."""
  return zlib.crc32(np.ascontiguousarray(np.asarray(a, dtype=dtype)).view(np.uint8).reshape(-1))


def _is_local(a) -> bool:
  """Whether this process can read every element of ``a`` (a checksum needs
  them all): not so for an array sharded over several hosts."""
  return not isinstance(a, jax.Array) or a.is_fully_addressable or a.is_fully_replicated


def _widens(saved, target) -> bool:
  """A float leaf saved in a narrower float dtype than the target's (bfloat16
  -> float32: exact), restored by casting: states saved when SEVEN's scores
  were stored in bfloat16 (``stats_dtype="bfloat16"`` before they stayed
  float32) resume. Narrowing is still a mismatch."""
  if "prng_key" in (str(saved), str(target)):
    return False
  saved, target = jnp.dtype(saved), jnp.dtype(target)
  floats = jnp.issubdtype(saved, jnp.floating) and jnp.issubdtype(target, jnp.floating)
  return floats and saved != target and jnp.promote_types(saved, target) == target


def _one_line(e: BaseException, limit: int = 200) -> str:
  text = " ".join(str(e).split()) or "(no message)"
  text = text if len(text) <= limit else text[: limit - 3] + "..."
  return f"{type(e).__name__}: {text}"


def _check_manifest(manifest) -> None:
  """Raises :class:`_Damaged` unless ``manifest`` has the layout we write."""
  if not isinstance(manifest, dict):
    raise _Damaged(f"manifest is a {type(manifest).__name__}, not a JSON object")
  if manifest.get("version") not in _READABLE_VERSIONS:
    raise _Damaged(
      f"manifest version {manifest.get('version')!r} is not one of {_READABLE_VERSIONS}"
    )
  keys, leaves = manifest.get("keys"), manifest.get("leaves")
  if not isinstance(keys, list) or not isinstance(leaves, list) or len(keys) != len(leaves):
    raise _Damaged("manifest 'keys'/'leaves' are missing or of different lengths")
  for i, meta in enumerate(leaves):
    ok = (
      isinstance(keys[i], str)
      and isinstance(meta, dict)
      and isinstance(meta.get("shape"), list)
      and all(isinstance(d, int) and d >= 0 for d in meta["shape"])
      and isinstance(meta.get("dtype"), str)
    )
    if ok and meta["dtype"] != "prng_key":
      try:
        np.dtype(meta["dtype"])
      except TypeError:
        ok = False
    if not ok:
      raise _Damaged(f"manifest entry {i} is malformed")


class CheckpointManager:
  """Keeps the last ``max_to_keep`` training states under ``directory``.

  Args:
    directory: root directory; one sub-directory per saved step (created).
    max_to_keep: number of most recent steps kept (``None``: all).
    save_interval_steps: :meth:`save` only writes when ``step`` is a multiple
      of this; :meth:`save_now` always writes.
    async_save: let orbax write in a background thread (call
      :meth:`wait_until_finished` before relying on the files).

  Raises:
    TypeError: an argument of the wrong kind (e.g. ``max_to_keep=2.5``).
    ValueError: an argument out of range, or ``directory`` is a file.
  """

  def __init__(
    self,
    directory: str | os.PathLike,
    *,
    max_to_keep: Optional[int] = 3,
    save_interval_steps: int = 1,
    async_save: bool = False,
  ):
    if not isinstance(directory, (str, os.PathLike)):
      raise TypeError(f"directory must be a str or os.PathLike, got {type(directory).__name__}.")
    if max_to_keep is not None:
      max_to_keep = validation.check_int("max_to_keep", max_to_keep, 1)
    save_interval_steps = validation.check_int("save_interval_steps", save_interval_steps, 1)
    async_save = validation.check_bool("async_save", async_save)
    self.directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(self.directory) and not os.path.isdir(self.directory):
      raise ValueError(f"directory {self.directory!r} exists and is not a directory.")
    self.save_interval_steps = save_interval_steps
    self._interrupted = threading.Event()
    # Steps of the current trajectory that are on disk: written by this
    # manager, or the step it restored. Saving one of them again is a no-op.
    self._ours: set[int] = set()
    self._restored: Optional[int] = None
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

  def step_dir(self, step: int) -> str:
    """The directory of ``step`` (whether or not it exists)."""
    return os.path.join(self.directory, str(validation.check_int("step", step, 0)))

  # -- saving ----------------------------------------------------------------

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Saves ``state`` as ``step`` if the interval policy says so.

    One directory holds one trajectory: every call (also one that the
    interval skips) first retires the steps it makes obsolete, with a
    :class:`UserWarning` naming them:

    * every step *after* ``step`` (a rollback: :meth:`restore` of an older
      step, or a new run started from scratch in this directory);
    * ``step`` itself when it was written by another run (neither saved nor
      restored by this manager).

    They are deleted before anything is written, so a kill at any moment
    resumes the new trajectory (at worst from an older step of it), never the
    abandoned one.

    Args:
      step: the step number, an integer ``>= 0``.
      state: the pytree to save (arrays, PRNG keys, Python numbers).
      force: write even when ``step`` is not a multiple of
        ``save_interval_steps``.

    Returns:
      Whether a checkpoint was written (started, when async). ``False`` when
      the interval skips ``step``, or when ``step`` is already on disk from
      this trajectory (saved or restored by this manager): the same state is
      not written twice.

    Raises:
      TypeError: ``step`` not an integer, or a leaf of ``state`` that cannot
        be stored (the message names its key).
      ValueError: ``step`` is negative, ``state`` has no leaves, or ``step``
        is before the step this manager restored (that would discard the
        restored trajectory; restore that older step first if meant).
    """
    step = validation.check_int("step", step, 0)
    force = validation.check_bool("force", force)
    if self._restored is not None and step < self._restored:
      raise ValueError(
        f"step {step} is before step {self._restored}, which this manager restored from "
        f"{self.directory}: continue from step {self._restored}, or restore(step=...) "
        f"an earlier step first to roll back."
      )
    flat, _ = _flatten(state)
    if not flat:
      raise ValueError("state has no array leaves; there is nothing to checkpoint.")
    metas = [_leaf_meta(x, k) for k, x in flat]  # type errors before touching the disk
    self._retire_obsolete(step)
    if step in self._ours and step in self.all_steps():
      return False
    if not force and step % self.save_interval_steps:
      return False
    arrays = {f"{i:06d}": _to_saveable(x) for i, (_, x) in enumerate(flat)}
    for meta, a in zip(metas, arrays.values()):
      if not _is_local(a):
        continue  # shards on other hosts: no one process sees all the bytes
      # Key data keep their own dtype (uint32); others the manifest's.
      dtype = np.asarray(a).dtype if meta["dtype"] == "prng_key" else np.dtype(meta["dtype"])
      meta["crc32"] = _crc32(a, dtype)
    manifest = {"version": _MANIFEST_VERSION, "keys": [k for k, _ in flat], "leaves": metas}
    saved = self._mngr.save(
      step,
      force=True,  # the policy was applied above
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(arrays), manifest=ocp.args.JsonSave(manifest)
      ),
    )
    if saved:
      self._ours.add(step)
    return saved

  def save_now(self, step: int, state: Any) -> bool:
    """Saves regardless of the interval (for interrupts / end of training) and
    waits until the files are written. ``False`` when ``step`` is already on
    disk from this trajectory (see :meth:`save`)."""
    saved = self.save(step, state, force=True)
    self.wait_until_finished()
    return saved

  def _retire_obsolete(self, step: int) -> None:
    steps = self.all_steps()
    obsolete = [s for s in steps if s > step or (s == step and s not in self._ours)]
    if not obsolete:
      return
    self.wait_until_finished()  # never delete under an async write
    warnings.warn(
      f"CheckpointManager: a save at step {step} makes step(s) {obsolete} in "
      f"{self.directory} obsolete (they belong to a trajectory that was rolled back or "
      "started over); deleting them so that a resume cannot pick them up.",
      UserWarning,
      stacklevel=3,
    )
    for s in obsolete:
      self._mngr.delete(s)
      self._ours.discard(s)

  # -- restoring -------------------------------------------------------------

  def latest_step(self) -> Optional[int]:
    """The newest step on disk (it may be damaged: :meth:`restore` then falls
    back to an older one)."""
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def restore(self, target: Any, step: Optional[int] = None) -> Any:
    """Restores a state with the structure of ``target``.

    Args:
      target: a pytree of the same structure as what was saved; leaves may
        be arrays, ``jax.ShapeDtypeStruct`` (e.g. from ``jax.eval_shape``) or
        Python scalars.
      step: the step to restore; ``None`` means the newest readable step: a
        damaged newer step is skipped with a :class:`UserWarning` naming its
        directory (the next :meth:`save` deletes it).

    Raises:
      FileNotFoundError: when there is no checkpoint (at that step).
      DamagedCheckpointError: ``step`` was given and that step is damaged, or
        every step is damaged; one line naming the directory and the cause.
      ValueError: when the checkpoint's keys, shapes or dtypes differ from
        ``target`` (a mistake in the target, not damage: no fallback); the
        message names the first mismatching key.
    """
    tflat, treedef = _flatten(target)
    if not tflat:
      raise ValueError("target has no leaves; pass a pytree shaped like the saved state.")
    tmetas = [_leaf_meta(x, k, "target") for k, x in tflat]
    if step is not None:
      step = validation.check_int("step", step, 0)
      if step not in self.all_steps():
        raise FileNotFoundError(
          f"no checkpoint for step {step} in {self.directory} (have {self.all_steps()})"
        )
      try:
        leaves = self._read(step, tflat, tmetas)
      except _Damaged as e:
        raise DamagedCheckpointError(
          f"checkpoint step {step} at {self.step_dir(step)} is damaged and cannot be restored: {e}"
        ) from None
    else:
      steps = self.all_steps()
      if not steps:
        raise FileNotFoundError(f"no checkpoint in {self.directory}")
      damaged = []
      for step in reversed(steps):
        try:
          leaves = self._read(step, tflat, tmetas)
          break
        except _Damaged as e:
          damaged.append(step)
          warnings.warn(
            f"CheckpointManager: checkpoint step {step} at {self.step_dir(step)} is damaged "
            f"({e}); falling back to the previous step.",
            UserWarning,
            stacklevel=2,
          )
      else:
        raise DamagedCheckpointError(
          f"every checkpoint in {self.directory} is damaged (steps {sorted(damaged)}); "
          "see the warnings above for each cause."
        ) from None
    self._restored = step
    self._ours = {step}
    return jax.tree_util.tree_unflatten(treedef, leaves)

  def _read(self, step: int, tflat, tmetas) -> list:
    """The leaves of ``step`` shaped like ``tflat``; :class:`_Damaged` when the
    step cannot be read, ``ValueError`` when it does not match the target."""
    try:
      manifest = self._mngr.restore(step, args=ocp.args.Composite(manifest=ocp.args.JsonRestore()))[
        "manifest"
      ]
    except Exception as e:  # noqa: BLE001 - orbax/json/OS errors all mean "unreadable"
      raise _Damaged(f"manifest unreadable ({_one_line(e)})") from None
    _check_manifest(manifest)
    self._check(step, manifest, tflat, tmetas)
    abstract = {}
    for i, (_, x) in enumerate(tflat):
      meta = manifest["leaves"][i]
      if meta["dtype"] == "prng_key":
        data = jax.eval_shape(jax.random.key_data, x)
        abstract[f"{i:06d}"] = jax.ShapeDtypeStruct(data.shape, data.dtype)
      else:
        abstract[f"{i:06d}"] = jax.ShapeDtypeStruct(tuple(meta["shape"]), np.dtype(meta["dtype"]))
    try:
      arrays = self._mngr.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
      )["state"]
    except Exception as e:  # noqa: BLE001 - tensorstore DATA_LOSS, missing items, bad JSON
      raise _Damaged(f"arrays unreadable ({_one_line(e)})") from None
    leaves = []
    for i, (key, x) in enumerate(tflat):
      meta, a = manifest["leaves"][i], arrays.get(f"{i:06d}")
      if a is None or tuple(np.shape(a)) != tuple(abstract[f"{i:06d}"].shape):
        raise _Damaged(f"leaf {key} is missing or has the wrong shape")
      if (
        "crc32" in meta and _is_local(a) and _crc32(a, abstract[f"{i:06d}"].dtype) != meta["crc32"]
      ):
        raise _Damaged(f"leaf {key} fails its CRC-32 check (its bytes changed on disk)")
      if meta["dtype"] == "prng_key":
        a = jax.random.wrap_key_data(jnp.asarray(a), impl=meta["impl"])
      elif (
        hasattr(x, "dtype")
        and (np.issubdtype(np.dtype(x.dtype), np.integer) or _widens(meta["dtype"], x.dtype))
        and np.dtype(x.dtype) != np.dtype(meta["dtype"])
      ):
        a = np.asarray(a).astype(x.dtype)
      elif "python" in meta:
        a = {"int": int, "float": float, "bool": bool}.get(meta["python"], lambda v: v)(
          np.asarray(a).item()
        )
      leaves.append(a)
    return leaves

  @staticmethod
  def _check(step, manifest, tflat, tmetas):
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
      tkey, tmeta = tflat[i][0], tmetas[i]
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
      if (metas[i]["dtype"] == "prng_key") != (tmeta["dtype"] == "prng_key"):
        raise ValueError(
          f"checkpoint step {step} does not match the target at key {tkey!r}: "
          f"checkpoint dtype {metas[i]['dtype']}, target dtype {tmeta['dtype']}"
        )
      if metas[i]["dtype"] == "prng_key" and "impl" not in metas[i]:
        raise ValueError(f"checkpoint step {step}: PRNG key {tkey!r} was saved without its impl")
      # Python scalars (e.g. an int step) may come back against a weakly
      # typed ShapeDtypeStruct from jax.eval_shape: their dtype is not fixed.
      scalar = "python" in metas[i] or "python" in tmeta
      # int64 counters saved with x64 on come back as int32 targets from
      # jax.eval_shape with x64 off; integers of either width are accepted.
      ints = all(
        d != "prng_key" and np.issubdtype(np.dtype(d), np.integer)
        for d in (metas[i]["dtype"], tmeta["dtype"])
      )
      widens = _widens(metas[i]["dtype"], tmeta["dtype"])
      if not (scalar or ints or widens) and metas[i]["dtype"] != tmeta["dtype"]:
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

    Raises:
      TypeError: ``signals`` is not an iterable of signal numbers.
      ValueError: a signal that cannot be caught (``SIGKILL``, ``SIGSTOP``) or
        an unknown number.
    """
    if isinstance(signals, (int, str)) or not hasattr(signals, "__iter__"):
      raise TypeError(
        f"signals must be an iterable of signal numbers (e.g. (signal.SIGTERM,)), got {signals!r}."
      )
    signals = tuple(signals)
    valid = set(signal.valid_signals())
    for s in signals:
      if isinstance(s, bool) or not isinstance(s, int):
        raise TypeError(f"signals must hold signal numbers, got {s!r} ({type(s).__name__}).")
      if s not in valid or s in (signal.SIGKILL, signal.SIGSTOP):
        raise ValueError(f"signals: {s!r} cannot be caught (SIGKILL/SIGSTOP or unknown).")
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
