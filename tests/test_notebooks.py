"""Every notebook executes top to bottom (with its small default settings)."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# Notebooks that load a real Transformer and take over ~60 s on an idle 2-core
# machine: run with `pytest -m slow tests/test_notebooks.py`.
SLOW = {"sentinels.ipynb"}


def test_there_are_notebooks():
  assert NOTEBOOKS
  assert {"quickstart.ipynb", "sentinels.ipynb"} <= {p.name for p in NOTEBOOKS}


@pytest.mark.parametrize(
  "path",
  [pytest.param(p, marks=pytest.mark.slow) if p.name in SLOW else p for p in NOTEBOOKS],
  ids=lambda p: p.name,
)
def test_notebook_executes(path):
  nb = nbformat.read(path, as_version=4)
  NotebookClient(
    nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
  ).execute()
  errors = [
    o
    for c in nb.cells
    if c.cell_type == "code"
    for o in c.get("outputs", [])
    if o.get("output_type") == "error"
  ]
  assert not errors
