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


def test_first_two_commands_set_up_run_and_test():
  blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
  setup, tests = blocks[0].strip(), blocks[1].strip()
  assert "pip install -r requirements.txt" in setup and "python -m experiments." in setup
  ci = (README.parent / ".ci" / "run").read_text()
  assert tests in ci, "CI must run the README's test command"
