"""The README's promises: its runnable examples run, its first two commands are the right ones."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
EXAMPLES = re.findall(r"<!-- readme-example -->\s*```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_its_examples():
  assert len(EXAMPLES) == 3


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_readme_example_runs(index):
  exec(compile(EXAMPLES[index], f"README example {index}", "exec"), {"__name__": "readme"})


def _ci_commands():
  """The command lines of .ci/run (comments and blank lines dropped)."""
  lines = (README.parent / ".ci" / "run").read_text().splitlines()
  return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def test_first_two_commands_set_up_run_and_test():
  blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
  setup, tests = blocks[0].strip(), blocks[1].strip()
  assert "pip install -r requirements.txt" in setup and "python -m experiments." in setup
  # The first command creates .venv and activates it only in its own shell: the
  # second must activate it again to work as written in a new shell.
  assert setup.startswith("python3 -m venv .venv && . .venv/bin/activate && "), setup
  assert tests.startswith(". .venv/bin/activate && python -m pytest "), tests
  ci = _ci_commands()
  assert tests in ci, f"CI must run the README's test command as a line of its own: {tests!r}"


def test_the_readme_names_the_nightly_slow_command_and_ci_runs_the_default_one():
  ci = _ci_commands()
  default = next(c for c in ci if c.endswith("python -m pytest -q -rs"))
  assert "set -euo pipefail" in ci and ci.index("set -euo pipefail") < ci.index(default)
  nightly = ". .venv/bin/activate && python -m pytest -q -rs -m slow"
  assert nightly in README.read_text(), f"the README must name the slow command: {nightly!r}"
