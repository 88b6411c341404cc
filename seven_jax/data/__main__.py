"""``python -m seven_jax.data``: list the datasets and whether each is available here.

Commands::

    python -m seven_jax.data [list] [--data_dir DIR]   # table of datasets and availability
    python -m seven_jax.data prepare NAME [--data_dir DIR] [--manual_dir DIR]
                                                      # tfds datasets: download and prepare
                                                      # as array_record (needs internet, or
                                                      # the source files in --manual_dir)

The exit status of ``list`` is 0 even when some datasets are missing; the table says how to
get each missing one. ``prepare`` exits with 2 for an unknown name (the message lists the
valid ones) and with 1, without a traceback, when it cannot prepare: offline (the message
lists the files to put in ``--manual_dir``), a missing ImageNet manual download, a file
that fails tfds' checksum.
"""

from __future__ import annotations

import argparse
import sys

from seven_jax.data import prepare as prepare_lib
from seven_jax.data import registry, tfds_sources
from seven_jax.data.core import DatasetUnavailableError


def list_datasets(data_dir: str | None = None, out=None) -> int:
  """Print one block per dataset: name, task, splits, metrics, availability, how to get it.

  Returns:
      The number of available datasets.
  """
  out = out if out is not None else sys.stdout  # looked up per call, so redirection works
  available_count = 0
  for name in registry.datasets():
    spec = registry.get_spec(name)
    options = {"data_dir": data_dir} if spec.loader is tfds_sources.load_tfds else {}
    available, detail = spec.availability(spec, **options)
    available_count += available
    labels = (
      "regression"
      if spec.is_regression
      else (f"{spec.num_labels} classes" if spec.num_labels else "spans")
    )
    print(f"{name:16s} {'available' if available else 'MISSING':9s}  {spec.description}", file=out)
    print(
      f"{'':16s} task {spec.task} ({labels}); splits {', '.join(spec.splits)}; "
      f"metrics {', '.join(spec.metrics)}",
      file=out,
    )
    if available:
      print(f"{'':16s} source: {detail}", file=out)
    else:
      print(f"{'':16s} to get it: {spec.how_to_get}", file=out)
  total = len(registry.datasets())
  print(f"\n{available_count} of {total} datasets available on this machine.", file=out)
  return available_count


def prepare(name: str, data_dir: str | None, manual_dir: str | None) -> str:
  """Download (or take from ``manual_dir``) and prepare a tfds dataset as array_record files.

  See :func:`seven_jax.data.prepare.prepare` (the errors it raises are printed by
  :func:`main` without a traceback).
  """
  directory = prepare_lib.prepare(name, data_dir=data_dir, manual_dir=manual_dir)
  print(f"prepared {registry.get_spec(name).name} in {directory}")
  return directory


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m seven_jax.data", description=__doc__.split("\n")[0]
  )
  parser.add_argument("command", nargs="?", default="list", choices=("list", "prepare"))
  parser.add_argument("name", nargs="?", help="dataset to prepare")
  parser.add_argument(
    "--data_dir", default=None, help="tfds data directory (default $TFDS_DATA_DIR)"
  )
  parser.add_argument(
    "--manual_dir",
    default=None,
    help="directory of pre-downloaded source files, named as tfds names them (required for "
    "imagenet2012; for the others the offline error lists the names)",
  )
  args = parser.parse_args(argv)
  if args.command == "prepare":
    if not args.name:
      parser.error(
        f"prepare needs a dataset name; datasets that can be prepared: "
        f"{', '.join(prepare_lib.tfds_names())}"
      )
    try:
      prepare_lib.tfds_spec(args.name)  # before importing tensorflow-datasets
    except ValueError as error:
      parser.error(str(error))  # exit status 2, usage on stderr
    try:
      prepare(args.name, args.data_dir, args.manual_dir)
    except (prepare_lib.PrepareError, DatasetUnavailableError) as error:
      print(f"{parser.prog} prepare: error: {error}", file=sys.stderr)
      return 1
    return 0
  list_datasets(args.data_dir)
  return 0


if __name__ == "__main__":
  sys.exit(main())
