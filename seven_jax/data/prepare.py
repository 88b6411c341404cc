"""Prepare the paper's tfds datasets as array_record files, without TensorFlow.

:func:`prepare` runs the real tensorflow-datasets builder (``download_and_prepare``) of
``glue/*``, ``squad/v1.1``, ``cifar10``, ``cifar100`` or ``imagenet2012`` with
``file_format="array_record"``, which :mod:`seven_jax.data.tfds_sources` reads back without
TensorFlow. Two things around the builder make that work on the pinned stack:

**No TensorFlow.** tfds 4.9.10 writes array_record files without TensorFlow, but a few
steps on the way still call ``tf.*`` through its lazy ``tensorflow`` import, which fails when
TensorFlow is not installed:

* archive extraction (``core/download/extractor.py``: ``tf.io.gfile.GFile``,
  ``tf.compat.as_text``), used by every GLUE task except MRPC and by CIFAR;
* reading the CIFAR binaries (``image_classification/cifar.py``: ``tf.io.gfile.GFile``);
* encoding numpy images as PNG (``core/features/image_feature.py`` through
  ``utils.TFGraphRunner``: ``tf.image.encode_png``), used by CIFAR;
* ImageNet's file checks and its few CMYK/PNG images (``datasets/imagenet2012``,
  ``core/utils/image_utils.py``: ``tf.io.gfile.exists``, ``tf.image.decode_jpeg`` ...).

When TensorFlow is missing, :func:`tensorflow_stand_in` replaces the ``tf`` name in exactly
those modules, for the duration of the call, by a small object that does the same with the
standard library and Pillow (files: ``open``/``os``; images: lossless PNG, JPEG at the
requested quality). Any other ``tf.*`` attribute raises an ``AttributeError`` that names it
and says to ``pip install tensorflow-cpu``. With TensorFlow installed nothing is replaced.

**Offline, fail fast.** tfds retries an unreachable URL 10 times with exponential backoff
(about 3.5 minutes for MRPC here). Before a URL is fetched from the network,
:func:`prepare` opens one TCP connection to its host (``network_timeout`` seconds, once per
host and port; skipped for a host reached through a configured proxy, since a direct
connection says nothing then) and stops at once with :class:`NetworkUnavailableError` when
that fails. The message lists
every file the builder asked for and its tfds file name: downloaded elsewhere and put in
``<data_dir>/downloads/manual/`` (tfds' default manual directory) or in a directory passed
as ``manual_dir`` (``--manual_dir``), tfds uses them instead of the network (it checks them
against its registered checksums).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
import shutil
import socket
import threading
import types
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np

from seven_jax.data import registry, tfds_sources
from seven_jax.data.core import DatasetUnavailableError


class PrepareError(RuntimeError):
  """Preparing a dataset failed for a reason the user can fix; the message says how."""


class NetworkUnavailableError(PrepareError):
  """The builder needs to download files and their host cannot be reached."""


def tfds_names() -> list[str]:
  """The registered datasets that :func:`prepare` can prepare (the tfds-backed ones)."""
  return [
    name for name in registry.datasets() if registry.get_spec(name).loader is tfds_sources.load_tfds
  ]


def tfds_spec(name: str):
  """The spec of a preparable dataset; ``ValueError`` listing the valid names otherwise."""
  try:
    spec = registry.get_spec(name)
  except ValueError:
    raise ValueError(
      f"unknown dataset {name!r}; datasets that can be prepared: {', '.join(tfds_names())} "
      f"(aliases: {', '.join(sorted(registry.ALIASES))})"
    ) from None
  if spec.loader is not tfds_sources.load_tfds:
    raise ValueError(
      f"{spec.name} is not a tfds dataset and needs no preparing; to get it: "
      f"{spec.how_to_get}. Datasets that can be prepared: {', '.join(tfds_names())}"
    )
  return spec


def prepare(
  name: str,
  data_dir: str | os.PathLike | None = None,
  manual_dir: str | os.PathLike | None = None,
  *,
  network_timeout: float = 5.0,
) -> str:
  """Download (or take from ``manual_dir``) and prepare ``name`` as array_record files.

  Args:
      name: a tfds dataset of the registry (``glue/mrpc``, ``mrpc``, ``squad/v1.1``,
          ``cifar10``, ``cifar100``, ``imagenet2012``, ...).
      data_dir: the tfds data directory (default ``$TFDS_DATA_DIR`` or
          ``~/tensorflow_datasets``); the dataset lands in ``<data_dir>/<name>/<version>``.
      manual_dir: a directory of pre-downloaded files, named as tfds names them (the
          message of :class:`NetworkUnavailableError` lists them); required for ImageNet
          (``ILSVRC2012_img_train.tar``, ``ILSVRC2012_img_val.tar``).
      network_timeout: seconds to wait for a host's TCP connection before calling it
          unreachable.
  Returns:
      The directory holding the prepared dataset.
  Raises:
      ValueError: unknown or non-tfds dataset name (the message lists the valid ones), or
          a bad ``network_timeout``.
      NetworkUnavailableError: files must be downloaded and their host is unreachable.
      PrepareError: a missing or wrong manual download (the message says which).
      DatasetUnavailableError: tensorflow-datasets is not installed.
  """
  if isinstance(network_timeout, bool) or not isinstance(network_timeout, (int, float)):
    raise TypeError(f"network_timeout must be a number of seconds, got {network_timeout!r}")
  if not network_timeout > 0:
    raise ValueError(f"network_timeout must be > 0 seconds, got {network_timeout!r}")
  spec = tfds_spec(name)
  if manual_dir is not None and not os.path.isdir(manual_dir):
    raise PrepareError(f"manual_dir {os.fspath(manual_dir)!r} is not a directory")
  tfds = tfds_sources.import_builder_module(spec.name)
  if spec.name == "imagenet2012":
    # A lazy alias in tensorflow_datasets.image_classification.imagenet; importing the real
    # module now lets tensorflow_stand_in patch it.
    importlib.import_module(_IMAGENET_BUILDER)
  from tensorflow_datasets.core.download import download_manager

  with tensorflow_stand_in():
    builder = tfds.builder(spec.name, data_dir=data_dir, file_format=tfds_sources.FILE_FORMAT)
    expected = {url: info.filename for url, info in (builder.url_infos or {}).items()}
    download_config = tfds.download.DownloadConfig(
      manual_dir=os.fspath(manual_dir) if manual_dir is not None else None,
      try_download_gcs=False,  # GCS holds tfrecord copies, which cannot be read without TF
    )
    guard = _NetworkGuard(network_timeout)
    try:
      with guard.installed():
        builder.download_and_prepare(download_config=download_config)
    except Exception as error:
      if guard.unreachable:
        raise NetworkUnavailableError(
          _offline_message(spec.name, builder, manual_dir, guard, expected)
        ) from error
      if isinstance(error, download_manager.NonMatchingChecksumError):
        raise PrepareError(
          f"cannot prepare {spec.name}: a downloaded or manual file does not match tfds' "
          f"registered checksum (a wrong, truncated or fake file?):\n{error}"
        ) from error
      message = str(error)
      if spec.name == "imagenet2012" and ("manual" in message.lower() or "ILSVRC2012" in message):
        raise PrepareError(
          f"cannot prepare {spec.name}: it is not downloadable; put ILSVRC2012_img_train.tar "
          "and ILSVRC2012_img_val.tar (from https://image-net.org, after accepting its terms) "
          f"in {default_manual_dir(builder)} or in a directory passed as manual_dir "
          f"(--manual_dir DIR).\n{message}"
        ) from error
      raise
  return os.fspath(builder.data_dir)


def _offline_message(
  name: str, builder: Any, manual_dir: Any, guard: _NetworkGuard, expected: dict
) -> str:
  hosts = ", ".join(f"{host} ({reason})" for host, reason in sorted(guard.unreachable.items()))
  lines = [
    f"cannot prepare {name}: it needs the network to download its source files, and this "
    f"machine cannot reach {hosts}.",
    "Either run the same command on a machine with internet and copy the prepared directory",
    f"    {builder.data_dir}",
    "to the same place under this machine's data dir (--data_dir or $TFDS_DATA_DIR), or",
    "download these files elsewhere and put them, under these names, in",
    f"    {os.fspath(manual_dir) if manual_dir is not None else default_manual_dir(builder)}",
    "(or in any directory passed as --manual_dir DIR):",
  ]
  for url in sorted(guard.urls):
    lines.append(f"    {expected.get(url) or _basename(url)}    <- {url}")
  lines.append(
    f"then run the command again (python -m seven_jax.data prepare {name}); tfds checks "
    "the files against its registered checksums."
  )
  return "\n".join(lines)


def default_manual_dir(builder: Any) -> str:
  """Where tfds looks for pre-downloaded files when no ``manual_dir`` is given."""
  return os.path.join(os.fspath(builder.data_dir_root), "downloads", "manual")


def _basename(url: str) -> str:
  return os.path.basename(urllib.parse.urlparse(url).path) or url


class _NetworkGuard:
  """Checks each host once before tfds' downloader fetches from it (see the module doc)."""

  def __init__(self, timeout: float):
    self.timeout = timeout
    self.unreachable: dict[str, str] = {}  # host -> reason
    self.urls: list[str] = []  # every URL that could not be fetched
    self._reachable: set[tuple[str, int]] = set()  # (host, port) that answered
    self._tried: set[tuple[str, int]] = set()
    self._lock = threading.Lock()

  def check(self, url: str) -> None:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https", "ftp") or not parsed.hostname:
      return  # local paths are copied, not downloaded
    host = parsed.hostname
    proxies = urllib.request.getproxies()
    if (proxies.get(parsed.scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(host):
      return  # requests goes through the proxy; a direct connection says nothing
    port = parsed.port or {"http": 80, "https": 443, "ftp": 21}[parsed.scheme]
    with self._lock:
      known = (host, port) in self._reachable
      reason = self.unreachable.get(host) if (host, port) in self._tried else None
    if not known and reason is None:
      try:
        socket.create_connection((host, port), timeout=self.timeout).close()
      except OSError as error:  # gaierror (no DNS), timeout, refused, unreachable network
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
      with self._lock:
        self._tried.add((host, port))
        if reason is None:
          self._reachable.add((host, port))
        else:
          self.unreachable[host] = reason
    if reason is not None:
      with self._lock:
        self.urls.append(url)
      raise NetworkUnavailableError(f"cannot reach {host} to download {url} ({reason})")

  @contextlib.contextmanager
  def installed(self) -> Iterator[None]:
    # The one place where tfds 4.9.10 opens a URL (after its cache and manual_dir lookups).
    from tensorflow_datasets.core.download import downloader

    original = downloader._Downloader._sync_download
    guard = self

    def guarded_sync_download(self, url, destination_path, verify=True):
      guard.check(url)
      return original(self, url, destination_path, verify)

    downloader._Downloader._sync_download = guarded_sync_download
    try:
      yield
    finally:
      downloader._Downloader._sync_download = original


# --------------------------------------------------------------------------- no TensorFlow

_IMAGENET_BUILDER = "tensorflow_datasets.datasets.imagenet2012.imagenet2012_dataset_builder"
# The modules on the prepare path of our datasets that call ``tf.*`` (tfds 4.9.10).
STAND_IN_MODULES = (
  "tensorflow_datasets.core.download.extractor",
  "tensorflow_datasets.core.download.downloader",
  "tensorflow_datasets.core.utils.tf_utils",
  "tensorflow_datasets.core.utils.image_utils",
  "tensorflow_datasets.core.features.image_feature",
  "tensorflow_datasets.image_classification.cifar",
  _IMAGENET_BUILDER,
  "tensorflow_datasets.datasets.imagenet2012.imagenet_common",
)


def tensorflow_installed() -> bool:
  """Whether ``import tensorflow`` can work (without importing it)."""
  try:
    return importlib.util.find_spec("tensorflow") is not None
  except (ImportError, ValueError):
    return False


class _Namespace(types.SimpleNamespace):
  """A ``tf.<path>`` namespace whose missing attributes say what to install."""

  def __init__(self, path: str, **members):
    super().__init__(**members)
    object.__setattr__(self, "_path", path)

  def __getattr__(self, attribute: str):
    if attribute.startswith("__"):
      raise AttributeError(attribute)
    raise AttributeError(
      f"{self._path}.{attribute} is not provided by seven_jax's TensorFlow-free prepare "
      "(seven_jax.data.prepare.tensorflow_stand_in); install TensorFlow for this dataset: "
      "pip install tensorflow-cpu"
    )


class _Eager:
  """What the stand-in's ``tf.image`` ops return: ``.numpy()`` as TFGraphRunner expects."""

  def __init__(self, value):
    self._value = value

  def numpy(self):
    return self._value


class _Unimplemented(Exception):
  """Stand-in for ``tf.errors.UnimplementedError`` (only ever caught, never raised)."""


def _gfile_open(path, mode: str = "r"):
  path = os.fspath(path)
  if "b" in mode:
    return open(path, mode)
  return open(path, mode, encoding="utf-8")


def _gfile_copy(source, destination, overwrite: bool = False):
  if not overwrite and os.path.exists(destination):
    raise FileExistsError(f"{destination} exists")
  shutil.copyfile(os.fspath(source), os.fspath(destination))


def _gfile_rename(source, destination, overwrite: bool = False):
  if not overwrite and os.path.exists(destination):
    raise FileExistsError(f"{destination} exists")
  os.replace(os.fspath(source), os.fspath(destination))


def _as_text(value, encoding: str = "utf-8") -> str:
  return value.decode(encoding) if isinstance(value, (bytes, bytearray)) else str(value)


def _as_bytes(value, encoding: str = "utf-8") -> bytes:
  return bytes(value) if isinstance(value, (bytes, bytearray)) else str(value).encode(encoding)


def _pil_image(array: np.ndarray):
  from PIL import Image

  array = np.asarray(array)
  if array.dtype != np.uint8:
    raise TypeError(f"the TensorFlow-free image encoder takes uint8 images, got {array.dtype}")
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  return Image.fromarray(array)


def _encode(array: np.ndarray, image_format: str, **options) -> _Eager:
  buffer = io.BytesIO()
  _pil_image(array).save(buffer, format=image_format, **options)
  return _Eager(buffer.getvalue())


def _encode_png(image, compression: int = -1, name=None) -> _Eager:
  del name
  level = 6 if compression is None or compression < 0 else int(compression)
  return _encode(image, "PNG", compress_level=level)


def _encode_jpeg(image, format: str = "", quality: int = 95, **unused) -> _Eager:
  del format, unused  # the channels of the array decide (grey or RGB)
  return _encode(image, "JPEG", quality=int(quality))


def _decode(contents, channels: int = 0, **unused) -> _Eager:
  from PIL import Image

  del unused
  contents = contents.numpy() if isinstance(contents, _Eager) else contents
  with Image.open(io.BytesIO(bytes(contents))) as image:
    if channels == 1:
      image = image.convert("L")
    elif channels == 3 or image.mode not in ("L", "RGB"):
      image = image.convert("RGB")  # e.g. CMYK JPEGs, palette or RGBA PNGs
    array = np.asarray(image)
  return _Eager(array[..., None] if array.ndim == 2 else array)


def _stand_in() -> _Namespace:
  gfile = _Namespace(
    "tf.io.gfile",
    GFile=_gfile_open,
    exists=os.path.exists,
    isdir=os.path.isdir,
    listdir=os.listdir,
    makedirs=lambda path: os.makedirs(path, exist_ok=True),
    remove=os.remove,
    rmtree=shutil.rmtree,
    copy=_gfile_copy,
    rename=_gfile_rename,
  )
  return _Namespace(
    "tf",
    io=_Namespace("tf.io", gfile=gfile),
    compat=_Namespace("tf.compat", as_text=_as_text, as_str=_as_text, as_bytes=_as_bytes),
    image=_Namespace(
      "tf.image",
      encode_png=_encode_png,
      encode_jpeg=_encode_jpeg,
      decode_jpeg=_decode,
      decode_png=_decode,
      decode_image=_decode,
    ),
    errors=_Namespace("tf.errors", UnimplementedError=_Unimplemented),
    executing_eagerly=lambda: True,
  )


_stand_in_lock = threading.RLock()


@contextlib.contextmanager
def tensorflow_stand_in(force: bool = False) -> Iterator[Any]:
  """Replace ``tf`` in :data:`STAND_IN_MODULES` while preparing, if TensorFlow is missing.

  Args:
      force: replace it even when TensorFlow is installed (tests).
  Yields:
      The stand-in, or ``None`` when TensorFlow is used.
  """
  if tensorflow_installed() and not force:
    yield None
    return
  stand_in = _stand_in()
  with _stand_in_lock:
    saved = {}
    try:
      for module_name in STAND_IN_MODULES:
        try:
          module = importlib.import_module(module_name)
        except ImportError:
          continue
        if hasattr(module, "tf"):
          saved[module] = module.tf
          module.tf = stand_in
      yield stand_in
    finally:
      for module, original in saved.items():
        module.tf = original


__all__ = [
  "STAND_IN_MODULES",
  "DatasetUnavailableError",
  "NetworkUnavailableError",
  "PrepareError",
  "prepare",
  "tensorflow_installed",
  "tensorflow_stand_in",
  "tfds_names",
  "tfds_spec",
]
