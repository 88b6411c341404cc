"""Fixtures of the model tests. Everything runs offline (see tests/conftest.py)."""

import pytest


@pytest.fixture(scope="session")
def minilm_path():
  try:
    from seven_jax.models import bert

    return bert.default_model_path()
  except ImportError as e:
    pytest.skip(str(e))
