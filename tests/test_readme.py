"""The README's example runs as written."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parent.parent / "README.md"


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
