"""The README runs as written: its example, and the two install-and-run commands CI runs."""

import importlib.util
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

_spec = importlib.util.spec_from_file_location("readme_commands",
                                               ROOT / ".ci" / "readme_commands.py")
readme_commands = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readme_commands)


def test_readme_example_runs():
    text = README.read_text()
    block = re.search(r"## Example\n\n```python\n(.*?)```", text, re.S)
    assert block, "README has no '## Example' python block"
    namespace = {}
    exec(compile(block.group(1), "README.md example", "exec"), namespace)
    probs = namespace["probs"]
    torch.testing.assert_close(probs.sum(-1), torch.ones(64))
    assert all(layer.alpha == 0.2 for layer in namespace["anoise"].noise_layers(
        namespace["student"]))


def _steps(command):
    return [step.strip() for step in command.split("&&")]


def test_readme_has_the_two_commands_that_ci_runs():
    commands = readme_commands.commands(README.read_text())
    assert list(commands) == ["main", "tests"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    build = re.findall(r'"([^"]+)"', re.search(r"^requires = \[(.*?)\]", pyproject, re.M)[1])
    assert build == ["setuptools>=64", "wheel"]
    for name, command in commands.items():
        steps = _steps(command)
        # Works in a fresh venv: the build requirements first (pip does not install them for
        # --no-build-isolation), then the pinned torch the build compiles against.
        assert steps[0].startswith("pip install -U pip "), name
        for requirement in build:
            assert f'"{requirement}"' in steps[0] or f" {requirement}" in steps[0], requirement
        assert steps[1] == "pip install torch==2.13.0", name
        assert steps[2].startswith("pip install --no-build-isolation -e "), name
    assert _steps(commands["main"])[2:] == [
        'pip install --no-build-isolation -e ".[demo]"', "python -m anoise.demo"]
    assert _steps(commands["tests"])[2:] == [
        'pip install --no-build-isolation -e ".[test]"',
        "pip install --no-deps torchattacks==3.5.1", "python -m pytest -q tests"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "for name in main tests; do" in ci and ".ci/readme_commands.py" in ci


def test_readme_commands_reject_a_marker_without_a_command():
    with pytest.raises(ValueError, match="not followed by an indented command"):
        readme_commands.commands("<!-- command: main -->\n\nplain text\n")
    with pytest.raises(ValueError, match="two commands named"):
        readme_commands.commands("<!-- command: a -->\n    x\n<!-- command: a -->\n    y\n")


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(path.read_text()) if "://" not in t]


def test_readme_is_a_short_front_page_linking_every_docs_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 150, "the README is the front page: reference goes to docs/"
    for heading in ("## Try it", "## Example", "## Headline numbers",
                    "## What is verified, and what is not", "## Documentation"):
        assert heading in text, heading
    links = set(_relative_links(README))
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in links, f"README does not link docs/{page.name}"
    # The noise of element i is stream 2's, not the earlier one-normal-per-call stream.
    for path in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        assert "tl.randn(seed, i)`" not in path.read_text(), path


def test_readme_and_docs_links_resolve():
    for path in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for target in _relative_links(path):
            resolved = (path.parent / target).resolve()
            assert resolved.exists(), f"{path.name} links {target}, which does not exist"
