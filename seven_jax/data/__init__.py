"""Datasets for the SEVEN experiments behind one interface.

Typical use::

    from transformers import BertTokenizerFast
    from seven_jax import data

    data.datasets()                                   # registered names
    train = data.get_dataset("rotten_tomatoes", "train")
    train.spec.num_labels, train.spec.metrics         # 2, ("accuracy",)
    batches = data.text_batches(train, tokenizer, batch_size=32, max_len=64, seed=0)
    for batch in batches: ...                         # input_ids, attention_mask, token_type_ids, labels
    state = batches.state()                           # store with the checkpoint; restore(state) resumes

``python -m seven_jax.data`` lists the datasets and whether each is available here.
See :mod:`seven_jax.data.local` (offline data, splits, licences),
:mod:`seven_jax.data.tfds_sources` (GLUE, SQuAD, CIFAR, ImageNet via tensorflow-datasets) and
:mod:`seven_jax.data.squad` (SQuAD features).
"""

from seven_jax.data.batching import (
  DEFAULT_BUCKETS,
  BatchIterator,
  bucket_for,
  bucket_lengths,
  image_batches,
  text_batches,
  tokenize,
)
from seven_jax.data.core import (
  TASKS,
  Dataset,
  DatasetSpec,
  DatasetUnavailableError,
  InMemoryDataset,
  MalformedDataError,
)
from seven_jax.data.registry import availability, datasets, get_dataset, get_spec, register
from seven_jax.data.squad import (
  SquadFeatures,
  assemble_logits,
  prepare_squad_features,
  squad_batches,
)

__all__ = [
  "DEFAULT_BUCKETS",
  "TASKS",
  "BatchIterator",
  "Dataset",
  "DatasetSpec",
  "DatasetUnavailableError",
  "InMemoryDataset",
  "MalformedDataError",
  "SquadFeatures",
  "assemble_logits",
  "availability",
  "bucket_for",
  "bucket_lengths",
  "datasets",
  "get_dataset",
  "get_spec",
  "image_batches",
  "prepare_squad_features",
  "register",
  "squad_batches",
  "text_batches",
  "tokenize",
]
