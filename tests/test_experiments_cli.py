"""Every experiment CLI checks every flag before it loads any data or model.

Each bad command line must exit with status 2 and an argparse-style message
that names the flag and the allowed values; the dataset loaders are replaced
by a function that fails the test, so a check that runs too late is caught.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import seven_jax
from experiments import common, glue, squad, text, vision
from seven_jax import data as sj_data

tfds = pytest.importorskip("tensorflow_datasets", reason="pip install tensorflow-datasets==4.9.10")

MAINS = {
  "vision": lambda argv: vision.main(argv),
  "text": lambda argv: text.main(argv),
  "glue": lambda argv: glue.main(["--task", "mrpc", *argv]),
  "squad": lambda argv: squad.main(argv),
}

# (flags, the words the message must contain)
CASES = [
  (["--update-every", "0"], ["--update-every", "integer >= 1", "got 0"]),
  (["--b1", "1.0"], ["--b1", "[0, 1)", "got 1.0"]),
  (["--b2", "-0.1"], ["--b2", "[0, 1)"]),
  (["--checkpoint-every", "-1"], ["--checkpoint-every", ">= 0", "got -1"]),
  (["--eval-split", "bogus"], ["--eval-split", "unknown eval split 'bogus'", "valid splits"]),
  (["--batch-size", "0"], ["--batch-size", ">= 1", "got 0"]),
  (["--lr", "nan"], ["--lr", "finite", "got nan"]),
  (["--lr", "inf"], ["--lr", "finite"]),
  (["--lr=-1e-3"], ["--lr", "got -0.001"]),
  (["--weight-decay", "-1"], ["--weight-decay", ">= 0"]),
  (["--sparsity", "1.5"], ["--sparsity", "[0, 1)", "got 1.5"]),
  (["--steps", "0"], ["--steps", ">= 1"]),
  (["--pruning-steps", "1"], ["--pruning-steps", ">= 2"]),
  (["--start-step", "-3"], ["--start-step", ">= 0"]),
  (["--seed", "-1"], ["--seed", ">= 0"]),
  (["--log-every", "0"], ["--log-every", ">= 1"]),
  (["--lr-schedule", "cosine"], ["--lr-schedule", "constant, linear"]),
  (["--weight-decay-mask", "none"], ["--weight-decay-mask", "all, no_bias_norm"]),
  (["--mesh", "data=3"], ["--mesh", "must equal the 1 devices"]),
  (["--mesh", "model=1"], ["--mesh", "data=2,fsdp=4"]),
  (["--methods", "dense,bogus"], ["--method", "unknown method 'bogus'", "valid methods: dense"]),
  # A hyper-parameter no method of the run reads is rejected, not ignored.
  (["--methods", "magnitude", "--b1", "0.5"], ["--b1", "not used by", "magnitude", "seven"]),
  (["--methods", "snip", "--update-every", "2"], ["--update-every", "not used by", "snip"]),
  (["--methods", "dense", "--sparsity", "0.5"], ["--sparsity", "not used by", "dense"]),
  (["--methods", "seven", "--prune-before-steps", "4"], ["--prune-before-steps", "not used"]),
  # A pruning window that cannot finish is an error, not a silent 0% / partial run.
  (
    ["--steps", "10", "--start-step", "5", "--pruning-steps", "8", "--methods", "seven"],
    ["--pruning-steps", "ends at step 12", "--steps 10"],
  ),
  (["--steps", "10", "--warmup-steps", "10"], ["--warmup-steps", "< --steps (10)"]),
  (["--scope", "per_layer"], ["--scope", "one of global, per_leaf", "got 'per_layer'"]),
  (["--methods", "dense", "--scope", "per_leaf"], ["--scope", "not used by", "dense"]),
  # The straight-through estimator is movement pruning's (Sanh et al. 2020) only.
  (
    ["--methods", "seven", "--no-straight-through"],
    ["--straight-through", "not used by", "seven", "movement, soft_movement"],
  ),
  (
    ["--methods", "taylor_instant", "--straight-through"],
    ["--straight-through", "not used by", "taylor_instant"],
  ),
  (["--resume", "--out", "/nonexistent/seven-jax-runs"], ["--resume", "no checkpoint"]),
]


@pytest.fixture
def nothing_loads(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError(f"data was loaded before the flags were checked: {args}")

  monkeypatch.setattr(sj_data, "get_dataset", fail)
  monkeypatch.setattr(squad, "train_features", fail)


@pytest.mark.parametrize("module", sorted(MAINS))
@pytest.mark.parametrize("argv,words", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_flag_exits_2_naming_it(module, argv, words, capsys, nothing_loads):
  if module == "glue" and "--steps" in argv and "--start-step" in argv:
    argv = [*argv, "--epochs", "0", "--eval-every", "0"]  # glue's preset counts epochs
  with pytest.raises(SystemExit) as info:
    MAINS[module](argv)
  err = capsys.readouterr().err
  assert info.value.code == 2, err
  assert err.splitlines()[0].startswith("usage:")
  message = err.strip().splitlines()[-1]
  assert "error: argument " in message, message
  for word in words:
    assert word in message, (word, message)


def test_valid_flags_pass_and_reach_the_config(nothing_loads):
  (cfg,) = vision.main.__globals__["common"].configs_from_cli(
    ["--methods", "seven", "--b1", "0.7", "--update-every", "3", "--lr-schedule", "linear"],
    "d",
    vision.PRESETS,
    vision.DEFAULT_METHODS,
  )
  assert (cfg.b1, cfg.update_every, cfg.lr_schedule, cfg.method) == (0.7, 3, "linear", "seven")
  # --b1 reaches seven_pre (its score rule takes it) and is accepted there.
  (cfg,) = common.configs_from_cli(
    ["--methods", "seven_pre", "--b1", "0.7"], "d", vision.PRESETS, vision.DEFAULT_METHODS
  )
  assert common.method_kwargs(cfg) == {"b1": 0.7, "b2": 0.9, "scope": "global"}
  assert common.method_kwargs(common.ExperimentConfig(method="snip")) == {"scope": "global"}
  assert common.method_kwargs(common.ExperimentConfig(method="dense")) == {}
  (cfg,) = common.configs_from_cli(
    ["--methods", "movement", "--no-straight-through", "--scope", "per_leaf"],
    "d",
    vision.PRESETS,
    vision.DEFAULT_METHODS,
  )
  assert (cfg.straight_through, cfg.scope) == (False, "per_leaf")
  assert not common.uses_straight_through(cfg)
  (cfg,) = common.configs_from_cli(["--methods", "movement"], "d", vision.PRESETS, ())
  assert cfg.straight_through and common.uses_straight_through(cfg)


def _one_shot_masks(method, scope):
  """The masks after the window of ``method`` built from the CLI with ``--scope``."""
  (cfg,) = common.configs_from_cli(
    ["--methods", method, "--scope", scope, "--sparsity", "0.5", "--start-step", "0"]
    + ["--pruning-steps", "3", "--steps", "4"],
    "d",
    vision.PRESETS,
    vision.DEFAULT_METHODS,
  )
  # Two leaves of different scales: one global |W| budget prunes the small
  # one whole, per-leaf budgets half of each.
  params = {
    "big": jnp.arange(1.0, 9.0).reshape(2, 4) * 10.0,
    "small": jnp.arange(1.0, 9.0).reshape(2, 4),
  }
  tx = common.make_optimizer(cfg, prunable=None)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  for _ in range(2):  # the window: N - 1 = 2 updates, the last keeps floor(r D)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return {k: np.asarray(m).ravel() for k, m in seven_jax.masks(state).items()}


@pytest.mark.parametrize("method", ["magnitude", "seven"])
def test_scope_flag_reaches_the_engine(method, nothing_loads):
  per_leaf = _one_shot_masks(method, "per_leaf")
  glob = _one_shot_masks(method, "global")
  if method == "magnitude":  # scores |W|: the numpy answer
    np.testing.assert_array_equal(per_leaf["small"], np.arange(8) >= 4)
    np.testing.assert_array_equal(per_leaf["big"], np.arange(8) >= 4)
    np.testing.assert_array_equal(glob["small"], np.zeros(8, bool))
    np.testing.assert_array_equal(glob["big"], np.ones(8, bool))
  for leaf in ("big", "small"):
    assert per_leaf[leaf].sum() == 4
  assert sum(m.sum() for m in glob.values()) == 8


def test_rules_reject_what_they_should():
  rule = common.FIELD_RULES["update_every"]
  assert rule.check(1) and rule.check(7)
  for bad in [0, -1, 1.5, float("nan"), True, "2", None]:
    assert not rule.check(bad), bad
  frac = common.FIELD_RULES["b1"]
  assert frac.check(0.0) and frac.check(0.999) and not frac.check(1.0)
