"""The docs run as written: every fenced ``python`` block of every ``docs/*.md`` page, in page
order, in one namespace per page (a later block may use what an earlier one made), in a
scratch directory.  Blocks are meant to run on a CPU in seconds; a page whose blocks need a
fresh process is run by its own test, named in ``RUN_BY``."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
# Pages whose blocks another test runs as written (there, the load block in a fresh process).
RUN_BY = {"deployment.md": ROOT / "tests" / "test_export.py"}


def python_blocks(text: str) -> list[str]:
    return PYTHON_BLOCK.findall(text)


def test_python_blocks_are_found():
    text = "a\n```python\nx = 1\n```\n```\nnot python\n```\n```python\ny = x\n```\n"
    assert python_blocks(text) == ["x = 1\n", "y = x\n"]


@pytest.mark.parametrize("page", [p for p in PAGES if p.name not in RUN_BY],
                         ids=lambda p: p.name)
def test_page_python_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks may write files
    namespace = {"__name__": f"docs.{page.stem}"}
    for i, block in enumerate(python_blocks(page.read_text())):
        exec(compile(block, f"{page.relative_to(ROOT)} python block {i + 1}", "exec"), namespace)


@pytest.mark.parametrize("name", sorted(RUN_BY))
def test_pages_run_elsewhere_are_run_there(name):
    assert (DOCS / name).exists() and python_blocks((DOCS / name).read_text())
    assert f'"{name}"' in RUN_BY[name].read_text(), (name, RUN_BY[name])
