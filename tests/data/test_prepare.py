"""``prepare`` through the REAL tfds builders, offline, without TensorFlow.

Each test serves small fake source files (``tests/data/fixtures``, :mod:`tfds_fakes`) in
place of the network step of tfds' download manager, runs the real builder's
``download_and_prepare`` through :func:`seven_jax.data.prepare.prepare` (array_record),
and reads the result back with :func:`seven_jax.data.get_dataset`, comparing every example
with the source files read independently (csv / json / the generated pixels). TensorFlow
is made unimportable for every test, so the claims hold even where it is installed.
"""

import hashlib
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets", reason="pip install tensorflow-datasets==4.9.10")

from seven_jax import data  # noqa: E402
from seven_jax.data import prepare as prepare_lib  # noqa: E402

from tests.data import tfds_fakes  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")


def _is_tensorflow(name: str) -> bool:
  return name == "tensorflow" or name.startswith("tensorflow.")


class _NoTensorFlow:
  """A meta-path finder for which ``tensorflow`` does not exist, installed or not."""

  def find_spec(self, name, path=None, target=None):
    if _is_tensorflow(name):
      raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
    return None


@pytest.fixture(autouse=True)
def no_tensorflow(monkeypatch):
  """Make TensorFlow absent, as on the pinned stack, even where it is installed:
  ``import tensorflow`` fails and ``importlib.util.find_spec`` says there is none."""
  import importlib.util

  if "tensorflow" in sys.modules:
    pytest.skip("TensorFlow is already imported in this process; run these tests alone")
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(
    importlib.util,
    "find_spec",
    lambda name, package=None: None if _is_tensorflow(name) else real_find_spec(name, package),
  )
  monkeypatch.setattr(sys, "meta_path", [_NoTensorFlow(), *sys.meta_path])
  assert not prepare_lib.tensorflow_installed()


def array_record_files(directory) -> dict[str, list[str]]:
  """``{split: [file names]}`` of the array_record shards in a prepared directory."""
  found: dict[str, list[str]] = {}
  for name in sorted(os.listdir(directory)):
    if ".array_record-" in name:
      split = name.split(".array_record-")[0].split("-", 1)[1]
      found.setdefault(split, []).append(name)
  return found


def registered_urls(name: str) -> set[str]:
  builder = tfds.builder(name, data_dir="/nonexistent")
  return set(builder.url_infos)


def prepare_from(sources, name, data_dir, **options):
  with tfds_fakes.serve_downloads(sources) as requested:
    directory = prepare_lib.prepare(name, data_dir=data_dir, **options)
  return directory, requested


# --------------------------------------------------------------------------- GLUE


@pytest.mark.parametrize("task", GLUE_TASKS)
def test_glue_prepare_writes_array_record_that_loads_back(tmp_path, task):
  name = f"glue/{task}"
  sources = tfds_fakes.glue_sources(task, tmp_path)
  directory, requested = prepare_from(sources, name, tmp_path / "tfds")
  # The builder asked for exactly the real URLs we serve (registered in tfds' checksums).
  assert sorted(requested) == sorted(sources)
  assert set(requested) <= registered_urls(name)
  spec = data.get_spec(name)
  assert sorted(array_record_files(directory)) == sorted(spec.splits)
  assert not [f for f in os.listdir(directory) if "tfrecord" in f]
  expected = tfds_fakes.glue_expected(task)
  for split in spec.splits:
    dataset = data.get_dataset(name, split, data_dir=str(tmp_path / "tfds"))
    got = {example["idx"]: example for example in dataset}
    assert got == expected[split], split
    if spec.is_regression:
      assert all(isinstance(e["label"], float) for e in got.values())
  # A second prepare finds the dataset in place and downloads nothing.
  again, requested_again = prepare_from({}, name, tmp_path / "tfds")
  assert again == directory and requested_again == []


def test_mnli_has_matched_and_mismatched_splits(tmp_path):
  directory, _ = prepare_from(tfds_fakes.glue_sources("mnli", tmp_path), "mnli", tmp_path)
  sizes = {
    split: len(data.get_dataset("mnli", split, data_dir=str(tmp_path)))
    for split in data.get_spec("mnli").splits
  }
  assert sizes == {
    "train": 9,
    "validation_matched": 3,
    "validation_mismatched": 4,
    "test_matched": 1,
    "test_mismatched": 2,
  }
  assert directory.endswith(os.path.join("glue", "mnli", "2.0.0"))


def test_glue_needs_the_tensorflow_stand_in(tmp_path, monkeypatch):
  """Without the stand-in, extracting the GLUE zip fails on tfds' lazy TensorFlow import:
  the stand-in is what makes the TensorFlow-free prepare work, not a lucky code path."""
  import contextlib

  monkeypatch.setattr(prepare_lib, "tensorflow_stand_in", lambda: contextlib.nullcontext())
  with pytest.raises(Exception) as error:
    prepare_from(tfds_fakes.glue_sources("rte", tmp_path), "glue/rte", tmp_path / "tfds")
  chain, cause = [], error.value
  while cause is not None:
    chain.append(f"{type(cause).__name__}: {cause}")
    cause = cause.__cause__ or cause.__context__
  assert "Error while extracting" in chain[0] and "RTE.zip" in chain[0], chain
  assert any("tensorflow" in text for text in chain), chain


# --------------------------------------------------------------------------- SQuAD


def test_squad_prepare_loads_every_question(tmp_path, tokenizer):
  from seven_jax.data.squad import prepare_squad_features

  sources = tfds_fakes.squad_sources()
  directory, requested = prepare_from(sources, "squad", tmp_path)
  assert sorted(requested) == sorted(sources) and set(requested) <= registered_urls("squad/v1.1")
  assert sorted(array_record_files(directory)) == ["train", "validation"]
  expected = tfds_fakes.squad_expected()
  for split in ("train", "validation"):
    dataset = data.get_dataset("squad/v1.1", split, data_dir=str(tmp_path))
    assert {example["id"]: example for example in dataset} == expected[split]
  # The answers' character offsets survive: every gold span maps to tokens of the context.
  examples = list(data.get_dataset("squad/v1.1", "train", data_dir=str(tmp_path)))
  features = prepare_squad_features(examples, tokenizer, max_len=64, doc_stride=16)
  assert (features.start_positions > 0).any()


# --------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_prepare_keeps_pixels_and_labels_exactly(tmp_path, name):
  sources, expected = tfds_fakes.cifar_sources(name, tmp_path)
  directory, requested = prepare_from(sources, name, tmp_path / "tfds")
  assert requested == list(sources) and set(requested) <= registered_urls(name)
  assert sorted(array_record_files(directory)) == ["test", "train"]
  for split, (images, labels) in expected.items():
    dataset = data.get_dataset(name, split, data_dir=str(tmp_path / "tfds"))
    got = sorted((e["image"].tobytes(), e["label"]) for e in dataset)
    want = sorted((image.tobytes(), int(label)) for image, label in zip(images, labels))
    assert got == want, split  # PNG is lossless: every pixel, every (fine) label
    batch = next(iter(data.image_batches(dataset, 2, seed=0)))
    assert batch["pixels"].shape == (2, 32, 32, 3) and batch["pixels"].dtype == np.float32


# --------------------------------------------------------------------------- experiments


@pytest.fixture
def prepared_dir(tmp_path_factory, monkeypatch):
  """A tfds data dir made the default one (as ``$TFDS_DATA_DIR`` does), prepared on demand."""
  from tensorflow_datasets.core import constants

  root = tmp_path_factory.mktemp("tfds")
  monkeypatch.setattr(constants, "DATA_DIR", str(root))

  def prepare(name: str):
    if name.startswith("squad"):
      sources = tfds_fakes.squad_sources()
    else:
      sources = tfds_fakes.glue_sources(name.split("/")[1], root)
    prepare_from(sources, name, None)  # data_dir=None: the default, as a user would
    return root

  return prepare


# max_len 16: a single bucket, so one compiled shape for training and one for evaluation.
TINY = ["--batch-size", "4", "--max-len", "16"]
WINDOW = ["--start-step", "1", "--pruning-steps", "3"]


@pytest.mark.slow  # MiniLM, compiled: about a minute alone, several under load
@pytest.mark.parametrize("task", ["mrpc", "stsb", "mnli"])
def test_experiments_glue_trains_on_what_was_prepared(prepared_dir, tmp_path, task):
  from experiments import glue

  prepared_dir(f"glue/{task}")
  method = ["--methods", "dense"] if task == "mnli" else WINDOW
  (row,) = glue.main(["--task", task, *TINY, "--epochs", "2", *method, "--out", str(tmp_path)])
  per_epoch = -(-len(tfds_fakes.glue_expected(task)["train"]) // 4)  # the prepared train split
  assert row["steps"] == 2 * per_epoch
  assert [e["step"] for e in row["evaluations"]] == [per_epoch, 2 * per_epoch]
  spec = data.get_spec(f"glue/{task}")
  assert set(spec.metrics) <= set(row["final"]) and row["primary_metric"] == spec.metrics[0]
  if task == "mnli":  # both dev splits were read from the prepared files
    assert "validation_mismatched/accuracy" in row["final"]
    assert row["sparsity"] == 0.0
  else:  # the pruning window (steps 1, 2) has passed: SEVEN pruned
    assert row["sparsity"] == pytest.approx(1 - (0.5 + 0.5 * (1 / 3) ** 3), abs=1e-3)
  for value in row["final"].values():
    assert np.isfinite(value)


@pytest.mark.slow  # MiniLM, compiled
def test_experiments_squad_trains_on_what_was_prepared(prepared_dir, tmp_path):
  from experiments import squad

  prepared_dir("squad/v1.1")
  (row,) = squad.main(
    [
      "--max-len",
      "64",
      "--doc-stride",
      "16",
      "--batch-size",
      "4",
      "--steps",
      "3",
      "--eval-every",
      "3",
      "--start-step",
      "1",
      "--pruning-steps",
      "3",
      "--out",
      str(tmp_path),
    ]
  )
  assert row["steps"] == 3 and row["primary_metric"] == "f1"
  (evaluation,) = row["evaluations"]
  assert 0.0 <= evaluation["exact_match"] <= evaluation["f1"] <= 100.0
  assert row["sparsity"] == pytest.approx(1 - (0.5 + 0.5 * (1 / 3) ** 3), abs=1e-3)


# --------------------------------------------------------------------------- manual files


def _url_info(path: pathlib.Path, filename: str):
  from tensorflow_datasets.core.download import checksums

  content = path.read_bytes()
  return checksums.UrlInfo(
    size=len(content), checksum=hashlib.sha256(content).hexdigest(), filename=filename
  )


def _block_network(monkeypatch):
  import socket

  def unreachable(*args, **kwargs):
    raise socket.gaierror(-2, "Name or service not known (network blocked by the test)")

  monkeypatch.setattr(socket, "create_connection", unreachable)
  monkeypatch.setattr(socket, "getaddrinfo", unreachable)
  for variable in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
    monkeypatch.delenv(variable, raising=False)


def test_offline_message_lists_the_files_and_manual_dir_then_works(tmp_path, monkeypatch):
  """Offline: a fast error naming each file; those files put in the default manual dir
  make the same call succeed without any network."""
  _block_network(monkeypatch)
  data_dir = tmp_path / "tfds"
  start = time.perf_counter()
  with pytest.raises(prepare_lib.NetworkUnavailableError) as error:
    prepare_lib.prepare("glue/mrpc", data_dir=data_dir)
  assert time.perf_counter() - start < 30  # tfds' own 10 retries take ~3.5 minutes
  message = str(error.value)
  manual = data_dir / "downloads" / "manual"
  assert "needs the network" in message and str(manual) in message and "--manual_dir" in message
  assert "firebasestorage.googleapis.com" in message and "dl.fbaipublicfiles.com" in message
  for url, filename in tfds_fakes.MRPC_URLS.items():
    assert f"{filename}    <- {url}" in message
  # Put the (fake) files there under the listed names. tfds checks them against its
  # registered checksums, so register the fakes' checksums for this test.
  from tensorflow_datasets.text import glue

  manual.mkdir(parents=True)
  infos = dict(glue.Glue.url_infos)
  for url, filename in tfds_fakes.MRPC_URLS.items():
    source = tfds_fakes.FIXTURES / "glue" / "mrpc" / filename
    (manual / filename).write_bytes(source.read_bytes())
    infos[url] = _url_info(source, filename)
  monkeypatch.setattr(glue.Glue, "url_infos", infos)
  directory = prepare_lib.prepare("glue/mrpc", data_dir=data_dir)
  expected = tfds_fakes.glue_expected("mrpc")
  got = {e["idx"]: e for e in data.get_dataset("mrpc", "validation", data_dir=str(data_dir))}
  assert got == expected["validation"] and directory.startswith(str(data_dir))


def test_network_guard_lets_reachable_hosts_and_proxies_through(monkeypatch):
  import socket

  for variable in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
    monkeypatch.delenv(variable, raising=False)
  guard = prepare_lib._NetworkGuard(timeout=5)
  with socket.create_server(("127.0.0.1", 0)) as server:  # a host that answers
    guard.check(f"http://127.0.0.1:{server.getsockname()[1]}/file.zip")
  guard.check("/local/path/file.zip")  # copied, not downloaded
  assert guard.unreachable == {} and guard.urls == []
  with socket.create_server(("127.0.0.1", 0)) as server:
    closed_port = server.getsockname()[1]
  with pytest.raises(prepare_lib.NetworkUnavailableError, match="cannot reach 127.0.0.1"):
    guard.check(f"http://127.0.0.1:{closed_port}/a.zip")
  assert list(guard.unreachable) == ["127.0.0.1"]
  # Behind a proxy a direct connection proves nothing: requests goes through the proxy.
  monkeypatch.setenv("https_proxy", "http://proxy.invalid:3128")
  proxied = prepare_lib._NetworkGuard(timeout=5)
  proxied.check("https://unreachable.invalid/file.zip")
  assert proxied.unreachable == {}
  monkeypatch.setenv("no_proxy", "127.0.0.1")  # ... unless the host bypasses the proxy
  with pytest.raises(prepare_lib.NetworkUnavailableError):
    proxied.check(f"https://127.0.0.1:{closed_port}/a.zip")


def test_manual_file_with_a_wrong_checksum_is_named(tmp_path, monkeypatch):
  _block_network(monkeypatch)
  manual = tmp_path / "manual"
  manual.mkdir()
  for filename in tfds_fakes.MRPC_URLS.values():
    (manual / filename).write_bytes((tfds_fakes.FIXTURES / "glue" / "mrpc" / filename).read_bytes())
  with pytest.raises(prepare_lib.PrepareError, match="registered checksum") as error:
    prepare_lib.prepare("glue/mrpc", data_dir=tmp_path / "tfds", manual_dir=manual)
  assert not isinstance(error.value, prepare_lib.NetworkUnavailableError)  # no download tried
  assert "msr_paraphrase" in str(error.value) or "mrpc_dev_ids" in str(error.value)


def test_imagenet_prepares_from_manual_dir(tmp_path, monkeypatch):
  """The real ImageNet builder on fake tars in --manual_dir, with the network blocked: JPEGs
  stored as they are, the CMYK and PNG special cases re-encoded by the stand-in."""
  _block_network(monkeypatch)
  manual, expected = tfds_fakes.imagenet_manual_dir(tmp_path)
  directory = prepare_lib.prepare("imagenet2012", data_dir=tmp_path / "tfds", manual_dir=manual)
  assert sorted(array_record_files(directory)) == ["train", "validation"]
  label_names = data.get_spec("imagenet2012")  # labels are indices into tfds' synset list
  from tensorflow_datasets.core import utils

  synsets = utils.tfds_path("datasets/imagenet2012/labels.txt").read_text().split()
  assert label_names.num_labels == len(synsets) == 1000
  for split, images in expected.items():
    dataset = data.get_dataset("imagenet2012", split, data_dir=str(tmp_path / "tfds"))
    got = {example["image"].shape[:2]: example for example in dataset}
    assert sorted(got) == sorted(images), split
    for size, (source, synset, exact) in images.items():
      example = got[size]
      assert example["image"].shape == (*size, 3) and example["image"].dtype == np.uint8
      assert example["label"] == synsets.index(synset)
      error = np.abs(example["image"].astype(int) - source.astype(int)).mean()
      # Stored JPEG (q95) decoded: a few levels off at most; re-encoded ones once more.
      assert error < (4.0 if exact else 6.0), (split, size, error)


def test_imagenet_without_manual_files_says_where_to_put_them(tmp_path):
  with pytest.raises(prepare_lib.PrepareError) as error:
    prepare_lib.prepare("imagenet2012", data_dir=tmp_path)
  message = str(error.value)
  assert "ILSVRC2012_img_train.tar" in message and "ILSVRC2012_img_val.tar" in message
  assert str(tmp_path / "downloads" / "manual") in message and "--manual_dir" in message


def test_bad_arguments_are_named(tmp_path):
  with pytest.raises(ValueError, match="unknown dataset 'imdb'.*glue/mrpc.*squad/v1.1"):
    prepare_lib.prepare("imdb")
  with pytest.raises(ValueError, match="rotten_tomatoes is not a tfds dataset.*cifar10"):
    prepare_lib.prepare("rotten_tomatoes")
  with pytest.raises(prepare_lib.PrepareError, match="manual_dir .* is not a directory"):
    prepare_lib.prepare("glue/mrpc", data_dir=tmp_path, manual_dir=tmp_path / "missing")
  with pytest.raises(ValueError, match="network_timeout must be > 0"):
    prepare_lib.prepare("glue/mrpc", network_timeout=0)
  with pytest.raises(TypeError, match="network_timeout must be a number"):
    prepare_lib.prepare("glue/mrpc", network_timeout="5")


# --------------------------------------------------------------------------- the command line

_OFFLINE_CLI = (
  "import socket, sys\n"
  "def unreachable(*args, **kwargs):\n"
  "    raise socket.gaierror(-2, 'Name or service not known (network blocked by the test)')\n"
  "socket.create_connection = socket.getaddrinfo = unreachable\n"
  "from seven_jax.data.__main__ import main\n"
  "sys.exit(main(sys.argv[1:]))\n"
)


def _cli(args, code=None, timeout=180):
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  for variable in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
    env.pop(variable, None)
  command = (
    [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "seven_jax.data", *args]
  )
  start = time.perf_counter()
  result = subprocess.run(
    command, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
  )
  return result, time.perf_counter() - start


def test_cli_offline_fails_fast_without_traceback(tmp_path):
  result, seconds = _cli(["prepare", "glue/mrpc", "--data_dir", str(tmp_path)], code=_OFFLINE_CLI)
  assert result.returncode == 1, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert "cannot prepare glue/mrpc: it needs the network" in result.stderr
  assert "--manual_dir" in result.stderr and "msr_paraphrase_train.txt" in result.stderr
  # Imports included; tfds' own retry schedule alone would take about 200 s.
  assert seconds < 120, seconds


def test_cli_unknown_name_lists_valid_names_without_traceback():
  result, _ = _cli(["prepare", "imdb"])
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  assert "unknown dataset 'imdb'" in result.stderr
  for name in ("glue/mrpc", "glue/mnli", "squad/v1.1", "cifar10", "cifar100", "imagenet2012"):
    assert name in result.stderr
