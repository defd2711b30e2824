"""The CUDA backend's noise and indexing, checked on the CPU.

``csrc/cuda/stream.cuh`` holds the code the CUDA kernels run for the noise stream (Philox,
uniforms, Box-Muller with polynomial log / cos / sin) and for mapping elements to Philox groups;
it is ``__host__ __device__``, and ``tests/cuda/host_check.cu`` compiles it for the host with
nvcc.  Only the device's rsqrt differs from the host's, and the accuracy checks allow it its
documented 2 ulp.  Runs wherever nvcc is, no GPU needed.
"""

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import torch

from anoise.philox import philox_normal4

ROOT = Path(__file__).resolve().parent.parent
NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not on the PATH")


@pytest.fixture(scope="module")
def host_check(tmp_path_factory):
    exe = tmp_path_factory.mktemp("cuda_host") / "host_check"
    cmd = [NVCC, "-std=c++17", "-O2", "-x", "cu", f"-I{ROOT / 'csrc' / 'cuda'}",
           str(ROOT / "tests" / "cuda" / "host_check.cu"), "-o", str(exe),
           "-Xcompiler", "-ffp-contract=off"]  # host rounding as written, like the device's
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    return exe


def run(exe, *args, stdin=None, timeout=600):
    out = subprocess.run([str(exe), *args], input=stdin, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def draws(exe, pairs):
    """(words, uniform bits, normals) of the host build for (seed, group) pairs."""
    text = "".join(f"{s} {g}\n" for s, g in pairs)
    rows = [line.split() for line in run(exe, "vectors", stdin=text).splitlines()]
    words = [[int(v) for v in r[:4]] for r in rows]
    bits = [[int(v, 16) for v in r[4:8]] for r in rows]
    normals = torch.tensor([[float(v) for v in r[8:]] for r in rows], dtype=torch.float64)
    return words, bits, normals


def test_matches_triton_vectors(host_check, philox4_vectors):
    for case in philox4_vectors:
        words, bits, normals = draws(host_check, [(case["seed"], g) for g in case["groups"]])
        assert words == case["words"], case["seed"]
        assert bits == [[int(h, 16) for h in row] for row in case["rand4_f32_hex"]]
        expected = torch.tensor(case["randn4"], dtype=torch.float64)
        torch.testing.assert_close(normals, expected, atol=1e-5, rtol=1e-5)


def test_component_0_matches_the_earlier_vectors(host_check, philox_vectors):
    for case in philox_vectors:
        words, bits, normals = draws(host_check, [(case["seed"], g) for g in case["offsets"]])
        assert words == case["words"]
        assert [row[0] for row in bits] == [int(h, 16) for h in case["rand_f32_hex"]]
        expected = torch.tensor(case["randn"], dtype=torch.float64)
        torch.testing.assert_close(normals[:, 0], expected, atol=1e-5, rtol=1e-5)


def test_matches_the_reference_stream(host_check):
    seed = 2**64 - 12345
    groups = torch.cat([torch.arange(5000), 2**32 - 2500 + torch.arange(5000)])
    _, bits, normals = draws(host_check, [(seed, int(g)) for g in groups])
    expected = philox_normal4(seed, groups).double()
    torch.testing.assert_close(normals, expected, atol=1e-5, rtol=1e-5)
    # The four components of a group are distinct draws, not copies.
    assert (normals[:, 0] != normals[:, 2]).all()
    u = [struct.unpack("<f", struct.pack("<I", b))[0] for b in bits[0]]
    assert all(0 <= v < 1 for v in u)


def test_every_normal_within_1e_5_over_1e8_draws(host_check):
    out = run(host_check, "accuracy", "1e8")
    assert "ok accuracy" in out, out
    draws_done = float(re.search(r"draws (\d+)", out).group(1))
    assert draws_done >= 1e8
    ratio = float(re.search(r"rsqrt within 2 ulp: .* \|ref\|\) ([0-9.]+)", out).group(1))
    assert ratio < 0.5, out  # the measured worst case is a third of the tolerance


def test_error_bound_over_word_values(host_check):
    out = run(host_check, "scan", "4099")
    assert "ok scan" in out, out
    rel, absolute = map(float, re.search(r"\|n - n_ref\| <= (\S+) \|n\| \+ (\S+)", out).groups())
    assert rel < 2e-6 and absolute < 5e-6, out


def test_element_to_group_mapping(host_check):
    """Groups straddling rows, channels and the index base, 32- and 64-bit indices, bases past
    2**32: every element draws its own component, once, in its own channel."""
    out = run(host_check, "mapping")
    assert re.search(r"ok mapping: (\d+) cases", out), out


def test_division_and_dx_arithmetic(host_check):
    out = run(host_check, "arithmetic")
    assert "ok arithmetic" in out, out
