"""Shared fixtures for model tests. Everything runs offline."""

import os

# Set before transformers / huggingface_hub are imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import warnings  # noqa: E402

import pytest  # noqa: E402

warnings.filterwarnings("ignore", message=".*TensorFlow and JAX classes.*")


@pytest.fixture(scope="session")
def minilm_path():
  try:
    from seven_jax.models import bert

    return bert.default_model_path()
  except ImportError as e:
    pytest.skip(str(e))
