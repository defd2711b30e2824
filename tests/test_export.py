"""docs/deployment.md runs as written: ``torch.export`` of an eval-mode student,
saved, then loaded and run in a fresh process that imports only torch and anoise, and the
AOTInductor package of the same program."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import anoise

DEPLOYMENT = Path(__file__).resolve().parent.parent / "docs" / "deployment.md"

# In the fresh process, after the page's second block: the loaded program and the compiled
# package draw the noise the eager student drew under the same torch.manual_seed.
CHECK = textwrap.dedent("""
    check = torch.load("check.pt")
    assert probs.shape == (4, 10)
    torch.manual_seed(5)
    a = model(check["x"])
    torch.manual_seed(5)
    b = runner(check["x"])
    torch.testing.assert_close(a, check["y"], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(b, check["y"], atol=1e-5, rtol=1e-5)
    assert not torch.equal(model(check["x"]), a)  # stochastic
""")


def _blocks():
    blocks = re.findall(r"```python\n(.*?)```", DEPLOYMENT.read_text(), re.S)
    assert len(blocks) == 2, "docs/deployment.md has an export and a load block"
    return blocks


@pytest.mark.skipif(not anoise.backends()["cpu"], reason="export needs a fused CPU backend")
def test_deployment_page_runs_in_a_fresh_process(tmp_path, monkeypatch):
    export_block, load_block = _blocks()
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(export_block, "docs/deployment.md", "exec"), namespace)
    student = namespace["student"]
    x = torch.randn(3, 3, 32, 32)  # a batch size that export did not see
    torch.manual_seed(5)
    with torch.no_grad():
        torch.save({"x": x, "y": student(x)}, "check.pt")

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", load_block + CHECK], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
