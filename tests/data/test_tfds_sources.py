"""The paper's datasets through tensorflow-datasets (no TensorFlow), tested on tfds mock data."""

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets", reason="pip install tensorflow-datasets==4.9.10")

from seven_jax import data  # noqa: E402
from seven_jax.data import tfds_sources  # noqa: E402
from seven_jax.metrics import decode_squad_predictions, squad_scores  # noqa: E402
from seven_jax.data.squad import assemble_logits, prepare_squad_features, squad_batches  # noqa: E402


def mock(num_examples=20):
  return tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE)


GLUE_SPLITS = [
  ("glue/cola", "validation"),
  ("glue/sst2", "train"),
  ("glue/mrpc", "validation"),
  ("glue/stsb", "validation"),
  ("glue/qqp", "train"),
  ("glue/mnli", "validation_matched"),
  ("glue/mnli", "validation_mismatched"),
  ("glue/qnli", "validation"),
  ("glue/rte", "train"),
]


@pytest.mark.parametrize("name, split", GLUE_SPLITS)
def test_glue_pipeline_on_mock_data(tokenizer, name, split):
  with mock(20):
    dataset = data.get_dataset(name, split)
    assert len(dataset) == 20
    example = dataset[3]
    spec = dataset.spec
    assert set(spec.features) <= set(example)
    assert all(isinstance(example[key], str) for key in spec.features)
    batches = list(
      data.text_batches(
        dataset, tokenizer, 8, max_len=64, shuffle=False, drop_remainder=False, pad_final_batch=True
      )
    )
  assert len(batches) == 3
  batch = batches[0]
  assert batch["input_ids"].shape[1] in (16, 32, 64)
  if spec.features == ("text", "text_pair"):
    assert (batch["token_type_ids"] == 1).any()  # the second segment is there
  else:
    assert not (batch["token_type_ids"] == 1).any()
  labels = np.concatenate([b["labels"] for b in batches])[
    np.concatenate([b["example_mask"] for b in batches])
  ]
  if spec.is_regression:
    assert labels.dtype == np.float32
    outputs = labels + np.random.default_rng(0).normal(0, 0.1, len(labels))
  else:
    assert labels.dtype == np.int32 and labels.max() < spec.num_labels
    outputs = np.eye(spec.num_labels)[labels]  # perfect logits
  scores = spec.compute_metrics(outputs, labels)
  assert list(scores) == list(spec.metrics)
  if spec.is_regression:
    assert scores["pearson"] > 0.9 and scores["spearman"] > 0.9
  else:
    for metric, value in scores.items():
      if metric == "accuracy" or len(set(labels.tolist())) > 1:
        assert value == pytest.approx(1.0), metric


def test_glue_alias_and_mnli_split_names():
  with mock(5):
    assert data.get_dataset("mnli", "validation_mismatched").spec.name == "glue/mnli"
  with pytest.raises(ValueError, match="validation_matched"):
    data.get_dataset("glue/mnli", "validation")


@pytest.mark.parametrize("name, num_labels", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_image_batches(name, num_labels):
  with mock(10):
    dataset = data.get_dataset(name, "train")
    batch = next(iter(data.image_batches(dataset, 4, seed=0)))
  assert batch["pixels"].shape == (4, 32, 32, 3) and batch["pixels"].dtype == np.float32
  assert 0.0 <= batch["pixels"].min() <= batch["pixels"].max() <= 1.0
  assert batch["labels"].dtype == np.int32 and batch["labels"].max() < num_labels


def test_imagenet_needs_and_uses_a_resize():
  with mock(6):
    dataset = data.get_dataset("imagenet2012", "validation")
    shapes = {dataset[i]["image"].shape for i in range(len(dataset))}
    if len(shapes) > 1:
      with pytest.raises(ValueError, match="image_size"):
        next(iter(data.image_batches(dataset, 6, shuffle=False)))
    batch = next(iter(data.image_batches(dataset, 6, image_size=(32, 32), shuffle=False)))
  assert batch["pixels"].shape == (6, 32, 32, 3)


def test_unprepared_dataset_says_how_to_prepare(tmp_path):
  with pytest.raises(data.DatasetUnavailableError) as error:
    data.get_dataset("glue/mrpc", "train", data_dir=str(tmp_path))
  message = str(error.value)
  assert "not prepared as array_record" in message
  assert "python -m seven_jax.data prepare glue/mrpc" in message
  available, detail = data.availability("glue/mrpc", data_dir=str(tmp_path))
  assert not available and "python -m seven_jax.data prepare glue/mrpc" in detail
  imagenet = data.get_spec("imagenet2012").how_to_get
  assert "prepare imagenet2012 --manual_dir" in imagenet


def test_file_format_spelling_is_tfds_own():
  from tensorflow_datasets.core import file_adapters

  assert file_adapters.FileFormat.ARRAY_RECORD.value == tfds_sources.FILE_FORMAT


def test_squad_pipeline_on_mock_data(tokenizer):
  with mock(12):
    dataset = data.get_dataset("squad/v1.1", "validation")
    examples = [dataset[i] for i in range(len(dataset))]
  assert {"id", "question", "context", "answers"} <= set(examples[0])
  features = prepare_squad_features(examples, tokenizer, max_len=64, doc_stride=16)
  assert len(features) >= len(examples)
  outputs = []
  rng = np.random.default_rng(0)
  for batch in squad_batches(
    features, 5, shuffle=False, drop_remainder=False, pad_final_batch=True
  ):
    shape = batch["input_ids"].shape
    outputs.append((batch["feature_index"], rng.normal(size=shape), rng.normal(size=shape)))
  start, end = assemble_logits(outputs, len(features), features.max_len)
  predictions = decode_squad_predictions(
    start, end, features, {e["id"]: e["context"] for e in examples}
  )
  assert set(predictions) == {e["id"] for e in examples}
  for example in examples:
    assert predictions[example["id"]] in example["context"]
  gold = {e["id"]: e["answers"]["text"] or [""] for e in examples}
  scores = squad_scores(predictions, gold)
  assert 0.0 <= scores["exact_match"] <= scores["f1"] <= 100.0
