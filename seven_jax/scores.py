r"""Score rules: what each dynamic pruning method ranks weights by.

A dynamic method is a small pure function of one prunable leaf,

.. code-block:: python

   new_stats, new_score = rule.update(hp, inputs, stats, score)

where ``inputs`` (:class:`ScoreInputs`) carries the weights, this step's
gradient of the masked network and the position in the pruning window,
``stats`` is a tuple of the method's own per-weight statistics (float32, the
leaf's shape) and ``score`` the previous score. Everything else (masked
gradients, exact zeros, schedules, the global / per-leaf / N:M selection and
the no-resurrection rule) is shared: see :func:`seven_jax.pruning_mask` and
:mod:`seven_jax.selection`. Higher scores are kept.

Registered rules (``seven_jax.methods("dynamic")``), with
:math:`I = |W \odot g|`:

``seven``
  SEVEN (Xiao et al. 2024), the official code's accumulated
  :math:`S \mathrel{+}= |W_p \odot |g| \odot \hat m / (\sqrt{\hat v} + \epsilon)|`
  (spec 2.1, :mod:`seven_jax.statistics`).
``platon``
  PLATON, canonical (Zhang et al. 2022): the sensitivity :math:`I` is averaged
  over a local window of :math:`\Delta_T` steps; at the end of each window
  :math:`\bar I \leftarrow \beta_1 \bar I + (1-\beta_1) I_{win}`,
  :math:`\bar U \leftarrow \beta_2 \bar U + (1-\beta_2)|I_{win} - \bar I|`
  (against the *updated* :math:`\bar I`), score :math:`\bar I \bar U`, and the
  mask is recomputed every :math:`\Delta_T` steps. Defaults
  :math:`\beta_1 = 0.85, \beta_2 = 0.95, \Delta_T = 10`; resurrection on, as
  the original zeroes weights but lets them be re-scored.
``platon_seven_repo``
  The official SEVEN repository's simplified PLATON: the same EMAs fed with
  this step's :math:`I`, updated and pruned every step, defaults 0.8 / 0.9,
  no resurrection.
``movement``
  Movement pruning, canonical (Sanh et al. 2020): the accumulated, signed
  :math:`S \mathrel{+}= -W \odot g` with :math:`W` the weights the gradient
  was taken at; top-k of the signed score.
``taylor_instant``
  The official SEVEN repository's ``movement``: the instantaneous first-order
  Taylor score :math:`|W_p \odot g|`, neither accumulated nor signed (so not
  movement pruning).
``soft_movement``
  Soft movement pruning (Sanh et al. 2020): learned scores :math:`S`, trained
  by the straight-through gradient :math:`W \odot g` plus the gradient of the
  L1 penalty :math:`\lambda \frac1D \sum \sigma(S)`
  (:func:`soft_movement_penalty`), :math:`S \leftarrow S - \eta_S (W \odot g
  + \frac{\lambda}{D}\sigma(S)(1-\sigma(S)))`. With ``threshold=tau`` the mask
  is :math:`\sigma(S) > \tau` (the paper's form, sparsity set by
  :math:`\lambda`); by default it is the top-k of :math:`S` on the schedule, so
  that methods are compared at equal sparsity.
``magnitude``
  Gradual magnitude pruning (Zhu & Gupta 2017): :math:`|W_p|` on the same
  cubic schedule.

References:
  Xiao et al, `Pruning Transformer Model by Reserving Sentinels
  <https://arxiv.org/abs/2403.12688>`_, 2024.
  Zhang et al, `PLATON: Pruning Large Transformer Models with Upper
  Confidence Bound of Weight Importance <https://arxiv.org/abs/2206.12562>`_,
  ICML 2022.
  Sanh et al, `Movement Pruning: Adaptive Sparsity by Fine-Tuning
  <https://arxiv.org/abs/2005.07683>`_, NeurIPS 2020.
  Zhu & Gupta, `To prune, or not to prune
  <https://arxiv.org/abs/1710.01878>`_, 2017.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from seven_jax.state import PruningState, find_state
from seven_jax.statistics import (
  SevenStats,
  finite_or_zero,
  seven_score_increment,
  update_seven_stats,
)

__all__ = [
  "ScoreInputs",
  "ScoreRule",
  "register_rule",
  "get_rule",
  "methods",
  "method_kind",
  "soft_movement_penalty",
  "DYNAMIC_RULES",
  "PRE_METHODS",
  "PreMethod",
]


class ScoreInputs(NamedTuple):
  """What a score rule sees for one prunable leaf on one pruning step.

  Attributes:
    param: float32 weights the gradient was taken at (before the step).
    weight_after: float32 weights after this step's optimizer update, before
      the new mask (the official SEVEN ordering); equals ``param`` when
      scoring without weight updates.
    grad: the gradient of the masked network (pruned entries are 0), as the
      caller passed it (may hold non-finite values).
    mask: the current mask, before this step's selection.
    local_step: int32 ``p``, 0 on the first pruning step.
    is_last: bool, True on the last step of the pruning window.
    total: static number ``D`` of prunable weights over all leaves.
  """

  param: jax.Array
  weight_after: jax.Array
  grad: jax.Array
  mask: jax.Array
  local_step: jax.Array
  is_last: jax.Array
  total: int


class ScoreRule(NamedTuple):
  """A dynamic pruning method: a pure per-leaf score update plus defaults.

  Attributes:
    name: registry name.
    num_stats: how many per-weight statistics the rule keeps.
    update: ``(hp, inputs, stats, score) -> (stats, score)``; ``hp`` is the
      dict of hyper-parameters (defaults merged with the user's).
    defaults: hyper-parameter names and default values; any other keyword is
      rejected.
    signed: scores may be negative.
    resurrect: default of the ``resurrect`` option.
    update_every: ``hp -> int``, default mask period in steps.
    threshold: ``hp -> None | float``: a fixed score threshold replacing the
      budget (soft movement).
    summary: one line for :func:`methods`.
    score_from_stats: optional ``(hp, inputs, new_stats, score) -> score``,
      the score half of ``update`` written on the *new* statistics (which
      ``update`` must equal: ``update(hp, x, st, s) == (new,
      score_from_stats(hp, x, new, s))``). The engine scores the statistics
      it keeps (non-finite values replaced by the old ones; with
      ``stats_dtype=bfloat16`` as stored, i.e. rounded) with it, which lets
      XLA write them once and the score read them
      (:func:`seven_jax.engine.score_leaf`).
    next_stat: optional ``(hp, inputs, i, new, old) -> statistic i``, the
      statistics half of ``update`` one statistic at a time, for rules whose
      statistics read each other's new values (PLATON: ``I_bar`` reads the
      new window mean, ``U_bar`` the new ``I_bar``); ``new`` holds the new
      statistics ``0 .. i-1``, ``old`` all the old ones. The engine passes
      ``new`` as it keeps them (guarded, stored), so that each is written
      once and read by the next, as ``score_from_stats`` does for the
      score; from the rule's own unguarded values XLA recomputed each
      statistic inside the next one's fusion and copied the old ones first.
      ``update`` must equal the composition (unguarded).
  """

  name: str
  num_stats: int
  update: Callable
  defaults: dict
  signed: bool = False
  resurrect: bool = False
  update_every: Callable[[dict], int] = lambda hp: 1
  threshold: Callable[[dict], Optional[float]] = lambda hp: None
  summary: str = ""
  score_from_stats: Optional[Callable] = None
  next_stat: Optional[Callable] = None


DYNAMIC_RULES: dict[str, ScoreRule] = {}
"""Score rules usable during fine-tuning (and, iteratively, before it)."""


class PreMethod(NamedTuple):
  """A method that only prunes before fine-tuning (one-shot or iterative).

  Attributes:
    name: registry name.
    runner: which runner of :mod:`seven_jax.prepruning` computes it
      (``"rule"`` runs a dynamic score rule through the pruning engine).
    default_steps: scoring steps (batches or iterations) by default.
    batches: ``(steps, batches_per_step) -> int``, mini-batches it reads.
    resurrect: default of the ``resurrect`` option.
    summary: one line for the docs.
    rule: the dynamic score rule of the ``"rule"`` runner.
    dropout: how the method's loss is taken when the model has dropout:
      ``"train"`` (dropout on, a fresh key per scoring batch: the PyTorch
      reference loops score in ``model.train()``, where every forward pass
      draws new dropout masks), ``"eval"`` (dropout off, the deterministic
      model: SynFlow's data-free score), ``None`` (the method reads no loss).
      The library's ``loss_fn`` is the caller's; ``experiments.scoring``
      applies this policy.
  """

  name: str
  runner: str
  default_steps: int
  batches: Callable[[int, int], int]
  resurrect: bool = False
  summary: str = ""
  rule: Optional[str] = None
  dropout: Optional[str] = "train"


_SEVEN_PRE = (
  "SEVEN_pre: SEVEN statistics over steps batches, cubic schedule, no weight updates by default"
)
_PER_STEP = lambda s, b: s * b  # noqa: E731
_NONE = lambda s, b: 0  # noqa: E731
_ONE_PER_STEP = lambda s, b: s  # noqa: E731

PRE_METHODS: dict[str, PreMethod] = {
  m.name: m
  for m in [
    PreMethod("seven", "rule", 100, _PER_STEP, summary=_SEVEN_PRE, rule="seven"),
    # Names that only mean pre-pruning, for experiment configs that pick the
    # entry point from the name (method_kind).
    PreMethod("seven_pre", "rule", 100, _PER_STEP, summary=_SEVEN_PRE, rule="seven"),
    PreMethod("magnitude", "magnitude", 0, _NONE, summary="one-shot |W|", dropout=None),
    PreMethod(
      "magnitude_pre",
      "magnitude",
      0,
      _NONE,
      summary="one-shot |W| (as 'magnitude' before fine-tuning)",
      dropout=None,
    ),
    PreMethod("random", "random", 0, _NONE, summary="one-shot seeded random", dropout=None),
    PreMethod("snip", "snip", 1, _ONE_PER_STEP, summary="one-shot |W * g| (Lee et al. 2019)"),
    PreMethod(
      "grasp",
      "grasp",
      1,
      _ONE_PER_STEP,
      summary="one-shot -W * (H g), highest pruned (Wang et al. 2020)",
    ),
    PreMethod(
      "synflow",
      "synflow",
      100,
      _NONE,
      summary="data-free iterative synaptic flow (Tanaka et al. 2020)",
      dropout="eval",
    ),
    PreMethod(
      "force",
      "force",
      10,
      _PER_STEP,
      resurrect=True,
      summary="FORCE: exponential schedule, dense-weight saliency, can resurrect (de Jorge et al. 2021)",
    ),
    PreMethod(
      "iter_snip",
      "iter_snip",
      10,
      _PER_STEP,
      summary="Iterative SNIP: exponential schedule, masked weights, no resurrection "
      "(de Jorge et al. 2021)",
    ),
  ]
}
"""Methods of :func:`seven_jax.prune_before_finetuning` (every dynamic rule runs there too)."""


def pre_method(name: str) -> PreMethod:
  """The pre-pruning method ``name``: a registered one, or any dynamic rule
  run by the engine along the cubic schedule."""
  if name in PRE_METHODS:
    return PRE_METHODS[name]
  if name in DYNAMIC_RULES:
    rule = DYNAMIC_RULES[name]
    return PreMethod(name, "rule", 100, _PER_STEP, rule.resurrect, rule.summary, name)
  raise ValueError(
    f"unknown method {name!r} for pruning before fine-tuning; "
    f"valid names: {', '.join(methods('pre'))}."
  )


def register_rule(rule: ScoreRule) -> ScoreRule:
  """Adds a score rule to the registry (names must be new)."""
  if rule.name in DYNAMIC_RULES:
    raise ValueError(f"a score rule named {rule.name!r} is already registered.")
  DYNAMIC_RULES[rule.name] = rule
  return rule


def methods(kind: Optional[str] = None) -> list[str]:
  """Names of the registered pruning methods, sorted.

  Args:
    kind: ``None`` for every name, ``"dynamic"`` for those usable while
      fine-tuning (:func:`seven_jax.pruning_mask`), ``"pre"`` for those of
      :func:`seven_jax.prune_before_finetuning`.
  """
  if kind is None:
    return sorted(set(DYNAMIC_RULES) | set(PRE_METHODS))
  if kind == "dynamic":
    return sorted(DYNAMIC_RULES)
  if kind == "pre":  # every dynamic rule also runs before fine-tuning
    return sorted(set(PRE_METHODS) | set(DYNAMIC_RULES))
  raise ValueError(f"kind must be None, 'dynamic' or 'pre', got {kind!r}.")


def method_kind(name: str) -> str:
  """``"dynamic"`` if ``name`` prunes while fine-tuning (use
  :func:`seven_jax.pruning_mask`), ``"pre"`` if it only prunes before
  fine-tuning (use :func:`seven_jax.prune_before_finetuning` then
  :func:`seven_jax.fixed_mask`). Every dynamic name also runs before
  fine-tuning; ``seven_pre`` and ``magnitude_pre`` name those two uses
  unambiguously."""
  if name in DYNAMIC_RULES:
    return "dynamic"
  if name in PRE_METHODS:
    return "pre"
  raise ValueError(f"unknown method {name!r}; valid names: {', '.join(methods())}.")


def get_rule(name) -> ScoreRule:
  """The dynamic score rule called ``name`` (a :class:`ScoreRule` is returned
  as is, so unregistered rules work too); the error lists the valid names."""
  if isinstance(name, ScoreRule):
    return name
  try:
    return DYNAMIC_RULES[name]
  except (KeyError, TypeError):
    raise ValueError(
      f"unknown method {name!r} for pruning during fine-tuning; "
      f"valid names: {', '.join(methods('dynamic'))}."
    ) from None


def resolve_hparams(rule: ScoreRule, kwargs: dict) -> dict:
  """Defaults merged with ``kwargs``; unknown names raise a clear error."""
  unknown = sorted(set(kwargs) - set(rule.defaults))
  if unknown:
    allowed = ", ".join(sorted(rule.defaults)) or "none"
    raise ValueError(
      f"method {rule.name!r} got unknown argument(s) "
      f"{', '.join(unknown)}; its arguments: {allowed}."
    )
  hp = dict(rule.defaults)
  hp.update(kwargs)
  return hp


# ------------------------------------------------------------------- SEVEN


def _seven_stats(hp, x: ScoreInputs, stats):
  if not hp.get("correction", True):
    return tuple(stats)  # the ablation keeps no statistics that change
  st = update_seven_stats(
    SevenStats(*stats),
    x.grad,
    hp["b1"],
    hp["b2"],
    signed_first_moment=bool(hp["signed_first_moment"]),
  )
  return tuple(st)


def _seven_score(hp, x: ScoreInputs, new_stats, score):
  if not hp.get("correction", True):
    # Ablation: SEVEN without its noise correction, the accumulated |W_p g|.
    return score + jnp.abs(x.weight_after * finite_or_zero(x.grad))
  st = SevenStats(*new_stats)
  if bool(hp["signed_first_moment"]):
    st = SevenStats(jnp.abs(st.grad_ema), st.sq_grad_ema)
  inc = seven_score_increment(
    x.weight_after, x.grad, st, x.local_step, hp["b1"], hp["b2"], hp["eps"]
  )
  return score + inc


def _seven_update(hp, x: ScoreInputs, stats, score):
  new_stats = _seven_stats(hp, x, stats)
  return new_stats, _seven_score(hp, x, new_stats, score)


register_rule(
  ScoreRule(
    "seven",
    2,
    _seven_update,
    dict(b1=0.8, b2=0.9, eps=1e-9, signed_first_moment=False, correction=True),
    summary="SEVEN: accumulated |W |g| m_hat/(sqrt(v_hat)+eps)| (spec 2.1); "
    "correction=False: accumulated |W g|",
    score_from_stats=_seven_score,
  )
)


# ------------------------------------------------------------------ PLATON


def _platon_stat(hp, x: ScoreInputs, i, new, old):
  """Statistic ``i`` of PLATON (window mean, ``I_bar``, ``U_bar``) from the
  new ones before it (``ScoreRule.next_stat``)."""
  delta_t = int(hp.get("delta_t", 1))
  if i == 0:
    # Running mean of I over the current local window of delta_t steps.
    sensitivity = jnp.abs(x.weight_after * finite_or_zero(x.grad))
    q = (x.local_step % delta_t).astype(jnp.float32)
    return (old[0] * q + sensitivity) / (q + 1.0)
  # The EMAs absorb a window when it closes (and the partial last window, so
  # that the final mask never sees empty statistics).
  closes = ((x.local_step + 1) % delta_t == 0) | x.is_last
  if i == 1:
    b1 = hp["b1"]
    return jnp.where(closes, b1 * old[1] + (1.0 - b1) * new[0], old[1])
  # When the window closes new[1] is the new I_bar; otherwise U_bar keeps.
  b2 = hp["b2"]
  return jnp.where(closes, b2 * old[2] + (1.0 - b2) * jnp.abs(new[0] - new[1]), old[2])


def _platon_update(hp, x: ScoreInputs, stats, score):
  new = ()
  for i in range(3):
    new += (_platon_stat(hp, x, i, new, stats),)
  return new, _platon_score(hp, x, new, score)


def _platon_score(hp, x: ScoreInputs, new_stats, score):
  return new_stats[1] * new_stats[2]  # the upper confidence bound I_bar * U_bar


def _check_delta_t(hp):
  delta_t = hp.get("delta_t", 1)
  if not isinstance(delta_t, (int, np.integer)) or delta_t < 1:
    raise ValueError(f"delta_t must be an int >= 1, got {delta_t!r}.")
  return int(delta_t)


register_rule(
  ScoreRule(
    "platon",
    3,
    _platon_update,
    dict(b1=0.85, b2=0.95, delta_t=10),
    resurrect=True,
    update_every=_check_delta_t,
    summary="PLATON (canonical): UCB score I_bar * U_bar, window delta_t, mask every delta_t steps",
    score_from_stats=_platon_score,
    next_stat=_platon_stat,
  )
)

register_rule(
  ScoreRule(
    "platon_seven_repo",
    3,
    _platon_update,
    dict(b1=0.8, b2=0.9),
    summary="PLATON as simplified in the official SEVEN repo: per-step EMAs, "
    "no window, no resurrection",
    score_from_stats=_platon_score,
    next_stat=_platon_stat,
  )
)


# ---------------------------------------------------------------- movement


def _movement_update(hp, x: ScoreInputs, stats, score):
  return stats, score - x.param * finite_or_zero(x.grad)


register_rule(
  ScoreRule(
    "movement",
    0,
    _movement_update,
    {},
    signed=True,
    resurrect=True,
    summary="movement pruning (canonical): accumulated -W*g, signed top-k",
  )
)


def _taylor_instant_update(hp, x: ScoreInputs, stats, score):
  return stats, jnp.abs(x.weight_after * finite_or_zero(x.grad))


register_rule(
  ScoreRule(
    "taylor_instant",
    0,
    _taylor_instant_update,
    {},
    summary="instantaneous |W*g| (the official SEVEN repo's 'movement')",
  )
)


def _magnitude_update(hp, x: ScoreInputs, stats, score):
  return stats, jnp.abs(x.weight_after)


register_rule(
  ScoreRule(
    "magnitude",
    0,
    _magnitude_update,
    {},
    summary="gradual magnitude pruning |W| (Zhu & Gupta 2017)",
  )
)


# ----------------------------------------------------------- soft movement


def soft_movement_penalty(scores, penalty: float = 1.0, total: Optional[int] = None):
  r"""The L1 penalty of soft movement pruning, :math:`\lambda \frac1D \sum_i \sigma(S_i)`.

  Args:
    scores: the learned scores, a list or pytree of arrays, or an optimizer
      state holding a ``pruning_mask(..., method="soft_movement")`` state
      (then only the prunable leaves count).
    penalty: :math:`\lambda`.
    total: ``D``; defaults to the number of scores.

  The ``soft_movement`` rule applies the gradient of this term to its scores
  inside the transformation (the scores live in the optimizer state, not in
  the model), so the training step adds the *value* to the loss it reports
  and optimises: it is constant with respect to the model parameters.
  """
  try:
    state = find_state(scores)
  except ValueError:  # not an optimizer state: the scores themselves
    state = None
  if isinstance(state, PruningState):
    # Only prunable leaves hold scores (the others are MaskedNode holes).
    leaves = jax.tree.leaves(state.scores)
  else:
    leaves = jax.tree.leaves(scores)
  d = total if total is not None else sum(int(np.size(s)) for s in leaves)
  return penalty * sum(jnp.sum(jax.nn.sigmoid(s)) for s in leaves) / d


def _soft_movement_update(hp, x: ScoreInputs, stats, score):
  # d/dS of the penalty lambda/D * sum(sigmoid(S)), written out so the rule
  # stays a per-leaf function; it is jax.grad(soft_movement_penalty).
  sig = jax.nn.sigmoid(score)
  grad_penalty = hp["penalty"] * sig * (1.0 - sig) / x.total
  # Straight-through gradient of the loss with respect to the scores: W * g.
  straight_through = x.param * finite_or_zero(x.grad)
  return stats, score - hp["score_lr"] * (straight_through + grad_penalty)


def _soft_threshold(hp):
  tau = hp["threshold"]
  if tau is None:
    return None
  if not 0.0 < float(tau) < 1.0:
    raise ValueError(
      f"threshold of soft_movement must be in (0, 1) (it applies to sigmoid(S)), got {tau!r}."
    )
  return float(np.log(tau) - np.log1p(-tau))  # sigmoid(S) > tau <=> S > logit(tau)


register_rule(
  ScoreRule(
    "soft_movement",
    0,
    _soft_movement_update,
    dict(score_lr=1e-2, penalty=1.0, threshold=None),
    signed=True,
    resurrect=True,
    threshold=_soft_threshold,
    summary="soft movement: learned scores, L1 penalty on sigmoid(S), optional threshold",
  )
)
