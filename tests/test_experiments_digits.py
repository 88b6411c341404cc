"""The quick example runs end to end on real data and prunes to the requested sparsity."""

from experiments import digits


def test_digits_example_prunes_and_learns():
  rows = digits.main(["--steps", "200", "--sparsity", "0.8"])
  dense, seven = rows
  assert dense["method"] == "dense" and seven["method"] == "seven"
  assert abs(seven["sparsity"] - 0.8) < 1e-3
  # Real digits: both models are far above chance (10%) even after 200 steps.
  assert dense["accuracy"] > 0.85 and seven["accuracy"] > 0.85
