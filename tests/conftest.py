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
