"""Tokenization, bucketed padding, resumable shuffling and image batches."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seven_jax import data


@pytest.fixture(scope="module")
def rotten_train():
  return data.get_dataset("rotten_tomatoes", "train")


def test_bucket_lengths():
  assert data.bucket_lengths(64) == (16, 32, 64)
  assert data.bucket_lengths(100) == (16, 32, 64, 100)
  assert data.bucket_lengths(8) == (8,)
  assert data.bucket_for(17, (16, 32, 64)) == 32
  with pytest.raises(ValueError):
    data.bucket_for(65, (16, 32, 64))


def test_tokenize_pairs_pads_to_bucket(tokenizer):
  batch = data.tokenize(tokenizer, ["the cat sat", "a dog"], ["on the mat", "barked"], max_len=64)
  assert batch["input_ids"].shape == (2, 16) and batch["input_ids"].dtype == np.int32
  first = batch["input_ids"][0][batch["attention_mask"][0] == 1]
  assert tokenizer.decode(first) == "[CLS] the cat sat [SEP] on the mat [SEP]"
  # segment ids: 0 for [CLS] the cat sat [SEP], 1 for on the mat [SEP], 0 on padding
  assert batch["token_type_ids"][0].tolist() == [0] * 5 + [1] * 4 + [0] * 7
  assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()


def test_truncation_to_max_len(tokenizer):
  batch = data.tokenize(tokenizer, ["word " * 200], max_len=40, buckets=(16, 32))
  assert batch["input_ids"].shape == (1, 40) and batch["attention_mask"].sum() == 40
  assert batch["input_ids"][0, -1] == tokenizer.sep_token_id


def test_rotten_tomatoes_max_len_64_compiles_a_handful_of_shapes(tokenizer, rotten_train):
  traces = collections.Counter()

  @jax.jit
  def step(batch):
    traces[batch["input_ids"].shape] += 1  # runs only while tracing
    return jnp.sum(batch["input_ids"] * batch["attention_mask"]) + jnp.sum(batch["labels"])

  seen = collections.Counter()
  for grouped in (False, True):
    for batch in data.text_batches(
      rotten_train, tokenizer, 32, max_len=64, seed=0, group_by_length=grouped
    ):
      seen[batch["input_ids"].shape] += 1
      assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
      step({k: batch[k] for k in ("input_ids", "attention_mask", "labels")})
  assert set(seen) <= {(32, 16), (32, 32), (32, 64)}
  assert sum(traces.values()) == len(seen) <= 3  # one compilation per bucket, not per batch
  assert sum(seen.values()) == 2 * (len(rotten_train) // 32)


def test_group_by_length_reduces_padding(tokenizer, rotten_train):
  def padding_fraction(grouped):
    padded = real = 0
    for batch in data.text_batches(
      rotten_train, tokenizer, 32, max_len=64, seed=0, group_by_length=grouped
    ):
      padded += batch["attention_mask"].size
      real += batch["attention_mask"].sum()
    return 1 - real / padded

  assert padding_fraction(True) < 0.75 * padding_fraction(False)


def test_evaluation_order_covers_every_example_once(tokenizer):
  dev = data.get_dataset("rotten_tomatoes", "validation")
  batches = list(
    data.text_batches(
      dev, tokenizer, 100, max_len=64, shuffle=False, drop_remainder=False, pad_final_batch=True
    )
  )
  assert len(batches) == 13 and all(b["input_ids"].shape[0] == 100 for b in batches)
  masks = np.concatenate([b["example_mask"] for b in batches])
  labels = np.concatenate([b["labels"] for b in batches])[masks]
  assert masks.sum() == len(dev) == 1281
  np.testing.assert_array_equal(labels, dev.columns["label"])


def _order(iterator, num_batches):
  return [tuple(next(iterator)["labels"].tolist()) for _ in range(num_batches)]


def _index_batches(num_examples=10, batch_size=3, **kwargs):
  def make_batch(indices, pad_rows):
    return {"labels": np.concatenate([indices, -np.ones(pad_rows, int)])}

  return data.BatchIterator(num_examples, batch_size, make_batch, **kwargs)


def test_shuffle_is_seeded_and_differs_per_epoch():
  first = _order(_index_batches(seed=1, num_epochs=None), 6)
  assert first == _order(_index_batches(seed=1, num_epochs=None), 6)
  assert first != _order(_index_batches(seed=2, num_epochs=None), 6)
  epoch0, epoch1 = first[:3], first[3:]
  assert epoch0 != epoch1
  assert sorted(sum(epoch0, ())) == sorted(set(sum(epoch0, ())))  # no repeats within an epoch


@pytest.mark.parametrize("stop_after", [0, 2, 3, 4, 7])
def test_resume_continues_exactly(stop_after):
  reference = _order(_index_batches(seed=3, num_epochs=4), 12)
  interrupted = _index_batches(seed=3, num_epochs=4)
  _order(interrupted, stop_after)
  state = interrupted.state()
  assert state["epoch"] * 3 + state["index"] == stop_after
  resumed = _index_batches(seed=3, num_epochs=4)
  resumed.restore(state)
  assert _order(resumed, 12 - stop_after) == reference[stop_after:]
  assert len(resumed) == 0 and list(resumed) == []


def test_resume_with_length_grouping(tokenizer, rotten_train):
  def iterator():
    return data.text_batches(
      rotten_train, tokenizer, 64, max_len=64, seed=7, group_by_length=True, num_epochs=2
    )

  reference = iterator()
  for _ in range(170):  # into the second epoch (160 batches per epoch)
    next(reference)
  state = reference.state()
  expected = next(reference)
  resumed = iterator()
  resumed.restore(state)
  assert state == {"epoch": 1, "index": 10}
  actual = next(resumed)
  for key in expected:
    np.testing.assert_array_equal(actual[key], expected[key])


def test_invalid_arguments():
  with pytest.raises(ValueError, match="cannot both"):
    _index_batches(pad_final_batch=True)
  with pytest.raises(ValueError, match="no full batch"):
    _index_batches(num_examples=2)
  with pytest.raises(ValueError, match="invalid iterator state"):
    _index_batches().restore({"epoch": 0, "index": 99})


def test_image_batches_mnist5k():
  test = data.get_dataset("mnist5k", "test")
  batches = list(
    data.image_batches(test, 64, shuffle=False, drop_remainder=False, pad_final_batch=True)
  )
  assert len(batches) == 8
  pixels = batches[0]["pixels"]
  assert pixels.shape == (64, 28, 28, 1) and pixels.dtype == np.float32
  assert 0.0 <= pixels.min() and pixels.max() <= 1.0 and pixels.max() > 0.9
  assert batches[-1]["example_mask"].sum() == 500 - 7 * 64
  np.testing.assert_allclose(batches[0]["pixels"][0], test.columns["image"][0] / 255.0)
  assert batches[0]["labels"].dtype == np.int32


def test_image_batches_resize():
  digits = data.get_dataset("digits", "train")
  batch = next(iter(data.image_batches(digits, 4, image_size=(16, 16), seed=0)))
  assert batch["pixels"].shape == (4, 16, 16, 1)


def test_grain_can_consume_a_dataset():
  grain = pytest.importorskip("grain", reason="pip install grain==0.2.18")
  test = data.get_dataset("mnist5k", "test")
  pipeline = (
    grain.MapDataset.source(test)
    .shuffle(seed=0)
    .map(
      lambda e: {"pixels": e["image"].astype(np.float32) / 255.0, "labels": np.int32(e["label"])}
    )
    .batch(16)
  )
  assert len(pipeline) == 32 and pipeline[0]["pixels"].shape == (16, 28, 28, 1)


# --------------------------------------------------------------------------- misuse

BAD_ITERATOR_ARGUMENTS = [
  # (keyword, value, error type, text the message must contain)
  ("batch_size", 0, ValueError, "batch_size must be an integer >= 1, got 0"),
  ("batch_size", -4, ValueError, "batch_size must be an integer >= 1"),
  ("batch_size", 2.5, TypeError, "batch_size must be an integer >= 1, got 2.5"),
  ("batch_size", "8", TypeError, "batch_size must be an integer >= 1, got '8'"),
  ("batch_size", True, TypeError, "batch_size must be an integer"),
  ("batch_size", None, TypeError, "batch_size must be an integer"),
  ("num_epochs", 0, ValueError, "num_epochs (or None for no end) must be an integer >= 1"),
  ("num_epochs", 1.5, TypeError, "num_epochs"),
  ("seed", -1, ValueError, "seed must be an integer >= 0"),
  ("seed", "0", TypeError, "seed must be an integer"),
  ("shuffle", "no", TypeError, "shuffle must be True or False, got 'no'"),
  ("drop_remainder", 0, TypeError, "drop_remainder must be True or False"),
  ("pad_final_batch", None, TypeError, "pad_final_batch must be True or False"),
]


@pytest.mark.parametrize("keyword, value, error, needle", BAD_ITERATOR_ARGUMENTS)
def test_bad_batching_arguments_are_named(rotten_train, keyword, value, error, needle):
  options = {"batch_size": 8, keyword: value}
  batch_size = options.pop("batch_size")
  for build in (
    lambda: data.image_batches(data.get_dataset("digits", "train"), batch_size, **options),
    lambda: data.BatchIterator(100, batch_size, lambda i, p: {}, **options),
  ):
    with pytest.raises(error) as raised:
      build()
    assert needle in str(raised.value)


def test_bad_text_and_image_arguments_are_named(rotten_train, tokenizer):
  digits = data.get_dataset("digits", "train")
  with pytest.raises(
    ValueError, match="text_batches batches text.*'digits' is image_classification"
  ):
    data.text_batches(digits, tokenizer, 8)
  with pytest.raises(ValueError, match="image_batches batches image_classification.*rotten"):
    data.image_batches(rotten_train, 8)
  with pytest.raises(ValueError, match="max_len must be an integer >= 1, got 0"):
    data.text_batches(rotten_train, tokenizer, 8, max_len=0)
  with pytest.raises(TypeError, match="max_len must be an integer >= 1, got 64.0"):
    data.text_batches(rotten_train, tokenizer, 8, max_len=64.0)
  with pytest.raises(ValueError, match="each of buckets must be an integer >= 1, got -16"):
    data.text_batches(rotten_train, tokenizer, 8, buckets=(-16, 32))
  with pytest.raises(TypeError, match="group_by_length must be True or False"):
    data.text_batches(rotten_train, tokenizer, 8, group_by_length="yes")
  with pytest.raises(ValueError, match=r"image_size must be \(height, width\)"):
    data.image_batches(digits, 8, image_size=(32,))
  with pytest.raises(TypeError, match=r"image_size must be \(height, width\)"):
    data.image_batches(digits, 8, image_size=32)
  with pytest.raises(ValueError, match=r"image_size\[1\] \(width\) must be an integer >= 1"):
    data.image_batches(digits, 8, image_size=(32, 0))


def test_empty_dataset_is_refused_instead_of_looping_forever():
  with pytest.raises(ValueError, match="the dataset is empty"):
    data.BatchIterator(0, 4, lambda i, p: {}, drop_remainder=False, num_epochs=None)


def test_bad_squad_arguments_are_named(tokenizer):
  example = {
    "id": "q",
    "question": "Who?",
    "context": "Ada wrote it.",
    "answers": {"text": ["Ada"], "answer_start": [0]},
  }
  with pytest.raises(ValueError, match=r"doc_stride must be in \[0, max_len=32\), got 32"):
    data.prepare_squad_features([example], tokenizer, max_len=32, doc_stride=32)
  with pytest.raises(TypeError, match="max_len must be an integer"):
    data.prepare_squad_features([example], tokenizer, max_len="32", doc_stride=8)
  with pytest.raises(TypeError, match="features must be the SquadFeatures"):
    data.squad_batches([example], 4)
  features = data.prepare_squad_features([example], tokenizer, max_len=32, doc_stride=8)
  with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
    data.squad_batches(features, 0)


def test_bad_split_and_name_are_named():
  with pytest.raises(
    ValueError, match=r"no split 'valid'; valid splits: \['train', 'validation', 'test'\]"
  ):
    data.get_dataset("rotten_tomatoes", "valid")
  with pytest.raises(ValueError, match="unknown dataset 'imdb'. Valid names: bbc_news"):
    data.get_dataset("imdb", "train")
