"""Settings for every test: offline Hugging Face, quiet TensorFlow.

Helpers shared between test files (parameters, gradient sequences, the tiny
MLP and the project's tiny NNX BERT, the parity measure) live in
``tests/_helpers.py``: ``from tests._helpers import random_params, ...``.
"""

import os

# Set before transformers / huggingface_hub / tensorflow are imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import warnings  # noqa: E402

warnings.filterwarnings("ignore", message=".*TensorFlow and JAX classes.*")

import pathlib  # noqa: E402

import pytest  # noqa: E402

# The default run stays under 10 minutes on a 2-core CPU: tests measured at
# >= 4 s there are listed (with their time) in tests/slow_tests.txt and run
# with `-m slow` (the README's nightly command), like those marked in place.
_SLOW_IDS = {
  line.split()[1]
  for line in (pathlib.Path(__file__).parent / "slow_tests.txt").read_text().splitlines()
  if line.strip() and not line.startswith("#")
}


def pytest_collection_modifyitems(config, items):
  for item in items:
    if item.nodeid in _SLOW_IDS:
      item.add_marker(pytest.mark.slow)
