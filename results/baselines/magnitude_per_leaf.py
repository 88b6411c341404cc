"""Gradual magnitude pruning as Zhu & Gupta 2017 do it: each prunable matrix to the
schedule's sparsity on its own (scope="per_leaf"), instead of the engine's default
global budget. Same recipe as `python -m experiments.text` otherwise (until the CLI has ``--scope``)::

    python results/baselines/magnitude_per_leaf.py /tmp/fc/runs_per_leaf
"""

import dataclasses
import functools
import sys

import seven_jax
from experiments import common, text


@dataclasses.dataclass
class Config(common.ExperimentConfig):
  scope: str = "per_leaf"  # recorded in config.json / results.json


seven_jax.pruning_mask = functools.partial(seven_jax.pruning_mask, scope="per_leaf")
cfg = Config(method="magnitude", seed=0, out=sys.argv[1])
print("config:", dataclasses.asdict(cfg))
res = common.run(cfg, text.build_task(cfg))
print("test accuracy", res["final"], "sparsity", res["sparsity"])
