r"""The optimizer states of seven-jax and the functions that read them.

This is the bottom layer of the package (it imports JAX, optax and numpy,
nothing of seven-jax), so every other module can read a state without an
import cycle, and which state types :func:`masks` recognises does not depend
on what happened to be imported: it is the fixed tuple :data:`MASK_STATES`.

Layout of a state, for params with prunable leaves :math:`P` and the others
:math:`\bar P`:

* ``masks``, each tree of ``stats`` and ``scores`` have the structure of the
  params with :class:`optax.MaskedNode` (an empty node: no array, no bytes,
  nothing to save or to shard) at every leaf of :math:`\bar P`, and an array
  created *like its parameter* (``jnp.zeros_like(p, dtype)``,
  ``jnp.ones_like(p, bool)``) at every leaf of :math:`P`: under a mesh each
  such leaf has its parameter's sharding, straight after ``init`` (eager or
  jitted) and after every step.
* ``layout`` is a static :class:`Layout` (no arrays) that records the shapes
  of the :math:`\bar P` leaves, so that :func:`masks` returns a tree of bools
  shaped like the params without the params.

Sharding recipes: optax's :func:`optax.tree.map_params` works with the same
``is_leaf`` that :func:`optax.masked` states need::

  state_shardings = optax.tree.map_params(
      tx, lambda _, s: s, state, param_shardings,
      transform_non_params=lambda _: replicated,
      is_leaf=lambda x: isinstance(x, optax.MaskedNode))

(a ``MaskedNode`` hole then receives its parameter's sharding, which is a
valid prefix for ``jax.jit`` and ``jax.device_put``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
  "PruningState",
  "SevenMaskState",
  "FixedMaskState",
  "Layout",
  "MASK_STATES",
  "find_state",
  "masks",
  "freeze",
  "prunable_tree",
  "is_hole",
  "map_kept",
  "placeholder_layout",
]

HOLE = optax.MaskedNode()


def is_hole(x) -> bool:
  """True for the :class:`optax.MaskedNode` that stands for a non-prunable leaf."""
  return isinstance(x, optax.MaskedNode)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class Layout:
  """Static record of the non-prunable leaves: their shapes in tree order.

  A static pytree node (no array leaves): it costs nothing in memory, in a
  checkpoint or under sharding.
  """

  hole_shapes: tuple
  """Shape of every hole in tree order; ``None`` for a leaf that was already
  an ``optax.MaskedNode`` in the params (given to another transformation by
  ``optax.multi_transform`` or ``optax.masked``)."""


class _NotParams:
  """The ``layout`` of a state built from ``optax``'s params placeholder: a
  plain leaf, so that :func:`optax.tree.map_params` passes the real layout
  through as a non-params field."""

  def __repr__(self):
    return "<layout placeholder>"


def placeholder_layout():
  return _NotParams()


class PruningState(NamedTuple):
  """State of :func:`seven_jax.pruning_mask` (every dynamic method).

  Attributes:
    count: int32, number of ``update`` calls so far.
    masks: bool, shaped like params for prunable leaves (``True`` = kept),
      :class:`optax.MaskedNode` for the others; :func:`masks` returns the
      params-shaped tree.
    stats: tuple of the rule's statistics, each a tree laid out like
      ``masks`` (``stats_dtype`` arrays, holes at non-prunable leaves).
    scores: the rule's scores, same layout, float32.
    inner_state: state of the wrapped optimizer.
    layout: static :class:`Layout` of the non-prunable leaves.
    tau: float32, the score threshold of the last selection (a scalar for a
      global budget, one per prunable leaf for ``scope="per_leaf"``; NaN
      before the first selection and for N:M patterns), for inspection (the
      engine does not warm-start from it: SEVEN's survivors all score above
      it and its pruned weights score 0, and a search started at the edge
      of that empty gap took 14-47 passes instead of 3-4). A global
      reduction: replicated under a mesh, like ``count``.
  """

  count: jax.Array
  masks: Any
  stats: tuple
  scores: Any
  inner_state: Any
  layout: Any = Layout(())
  tau: Any = np.float32(np.nan)


class SevenMaskState(PruningState):
  """State of :func:`seven_jax.seven_mask`: a :class:`PruningState` whose
  ``stats`` are SEVEN's two EMAs, also readable by their names.

  Attributes (beyond :class:`PruningState`'s):
    grad_ema: ``m``, EMA of ``|g|`` (``stats[0]``).
    sq_grad_ema: ``v``, EMA of ``g**2`` (``stats[1]``).
  """

  __slots__ = ()

  @property
  def grad_ema(self):
    return self.stats[0]

  @property
  def sq_grad_ema(self):
    return self.stats[1]


class FixedMaskState(NamedTuple):
  """State of :func:`seven_jax.fixed_mask`: the frozen masks and the inner state.

  ``masks`` holds bool arrays for the leaves with at least one pruned weight
  and :class:`optax.MaskedNode` for the all-kept ones (``layout`` records
  their shapes), as in :class:`PruningState`.
  """

  count: jax.Array
  masks: Any
  inner_state: Any
  layout: Any = Layout(())


MASK_STATES = (PruningState, FixedMaskState)
"""Every state type that holds masks (``SevenMaskState`` is a ``PruningState``)."""


def _unwrap_variable(x):
  # flax.nnx stores optimizer state leaves in Variable boxes.
  return x.value if hasattr(x, "value") and not isinstance(x, jax.Array) else x


def _is_mask_state(x) -> bool:
  return isinstance(x, MASK_STATES)


def find_state(opt_state) -> PruningState | FixedMaskState:
  """The mask state (of ``seven_mask``, ``pruning_mask`` or ``fixed_mask``)
  inside any chain, wrapper or nnx optimizer state.

  Raises:
    ValueError: none, or more than one, is found.
  """
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=_is_mask_state) if _is_mask_state(x)]
  if not found:
    raise ValueError("No seven_mask state found in this optimizer state.")
  if len(found) > 1:
    raise ValueError(
      f"Found {len(found)} seven_mask states; pass the one you mean (e.g. opt_state[0])."
    )
  return found[0]


def _fill_holes(tree, layout, fill):
  shapes = iter(getattr(layout, "hole_shapes", ()))

  def leaf(x):
    x = _unwrap_variable(x)
    if is_hole(x):
      try:
        shape = next(shapes)
      except StopIteration:
        raise ValueError("the state's layout does not match its masks.") from None
      # None: a leaf optax itself masked out (multi_transform / masked).
      return x if shape is None else fill(shape)
    return x

  return jax.tree.map(leaf, tree, is_leaf=lambda x: is_hole(x) or hasattr(x, "value"))


def masks(opt_state) -> Any:
  """Pytree of bool arrays like params (``True`` = kept) from an optimizer state.

  Works on the state of ``seven_mask``, ``pruning_mask`` or ``fixed_mask``
  itself, of any ``optax.chain``, ``optax.inject_hyperparams`` or
  ``optax.MultiSteps`` around it, of a Flax ``TrainState``
  (``state.opt_state``) and of ``nnx.Optimizer.opt_state``. Non-prunable
  leaves come back all ``True``.
  """
  state = find_state(opt_state)
  return _fill_holes(state.masks, state.layout, lambda shape: jnp.ones(shape, jnp.bool_))


def prunable_tree(opt_state) -> Any:
  """Pytree of Python bools like params: which leaves the state prunes
  (``fixed_mask``: which leaves have a mask)."""
  state = find_state(opt_state)
  return _fill_holes(
    jax.tree.map(lambda x: x if is_hole(x) else True, state.masks, is_leaf=is_hole),
    state.layout,
    lambda shape: False,
  )


def map_kept(fn, mask_tree, *trees):
  """``fn(mask, *leaves)`` at the prunable leaves; the first of ``trees`` as
  it is (or the hole, without trees) at the others."""

  def leaf(m, *xs):
    if is_hole(m):
      return xs[0] if xs else m
    return fn(m, *xs)

  return jax.tree.map(leaf, mask_tree, *trees, is_leaf=is_hole)


def freeze(opt_state: Any) -> Any:
  """Swaps every pruning state in ``opt_state`` for a :class:`FixedMaskState`.

  After the pruning window the masks never change, yet ``seven_mask`` (and
  every ``pruning_mask``) still holds its statistics and scores, 12 bytes
  per prunable weight (8 with bfloat16 statistics), in memory and in
  checkpoints (the step itself skips them: the window's work is a loop of 0
  trips then). Freezing keeps the masks, the
  step count and the inner optimizer's state (so Adam's moments carry on)
  and drops the rest; continue with :func:`seven_jax.fixed_mask` in the same
  place of the optimizer, which gives the same updates (up to float
  rounding)::

    tx = seven_jax.fixed_mask(optax.adamw(2e-5), seven_jax.masks(opt_state))
    opt_state = seven_jax.freeze(opt_state)

  The optimizer changes, so the training step is traced and compiled again.
  """
  find_state(opt_state)  # a clear error when there is none
  is_pruning = lambda x: isinstance(x, PruningState)

  def to_fixed(x):
    if not is_pruning(x):
      return x
    return FixedMaskState(x.count, x.masks, x.inner_state, x.layout)

  return jax.tree.map(to_fixed, opt_state, is_leaf=is_pruning)
