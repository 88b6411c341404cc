"""``python -m seven_jax.data``: list the datasets and whether each is available here.

Commands::

    python -m seven_jax.data [list] [--data_dir DIR]   # table of datasets and availability
    python -m seven_jax.data prepare NAME [--data_dir DIR] [--manual_dir DIR]
                                                      # tfds datasets: download and prepare
                                                      # as array_record (needs internet)

The exit status of ``list`` is 0 even when some datasets are missing; the table says how to
get each missing one.
"""

from __future__ import annotations

import argparse
import sys

from seven_jax.data import registry, tfds_sources


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


def prepare(name: str, data_dir: str | None, manual_dir: str | None) -> None:
  """Download and prepare a tfds dataset as array_record files (needs internet)."""
  spec = registry.get_spec(name)
  if spec.loader is not tfds_sources.load_tfds:
    raise SystemExit(f"{spec.name} is not a tfds dataset; to get it: {spec.how_to_get}")
  tfds = tfds_sources.import_builder_module(spec.name)
  builder = tfds.builder(spec.name, data_dir=data_dir, file_format=tfds_sources.FILE_FORMAT)
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  builder.download_and_prepare(download_config=download_config)
  print(f"prepared {spec.name} in {builder.data_dir}")


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
    "--manual_dir", default=None, help="directory with manually downloaded files (ImageNet)"
  )
  args = parser.parse_args(argv)
  if args.command == "prepare":
    if not args.name:
      parser.error("prepare needs a dataset name")
    prepare(args.name, args.data_dir, args.manual_dir)
    return 0
  list_datasets(args.data_dir)
  return 0


if __name__ == "__main__":
  sys.exit(main())
