"""Build csrc/cuda/adaptive_noise.cu for the CPU (see emulate.h) as a shared library with a C
interface, for tests/test_cuda_emulated.py.  Needs g++ and the CUDA headers (found next to
nvcc); no GPU and no CUDA runtime library."""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
CSRC = HERE.parent.parent / "csrc" / "cuda"

API = r"""
namespace {
anoise_cuda::Shape shape(int64_t N, int64_t C, int64_t S) { return {N, C, S}; }
anoise_cuda::View view(void* p, int64_t a, int64_t b, int64_t c) { return {p, a, b, c}; }
anoise_cuda::DType dtype(int d) { return static_cast<anoise_cuda::DType>(d); }
}  // namespace

extern "C" {
int64_t emu_stats_partials(int64_t N, int64_t C, int64_t S, void* x, int64_t a, int64_t b,
                           int64_t c) {
  return anoise_cuda::stats_partials(shape(N, C, S), view(x, a, b, c));
}
int64_t emu_dot_partials(int64_t N, int64_t C, int64_t S, void* x, int64_t a, int64_t b,
                         int64_t c, uint64_t base) {
  return anoise_cuda::dot_partials(shape(N, C, S), view(x, a, b, c), base);
}
int emu_forward_stats(int dt, int64_t N, int64_t C, int64_t S, void* x, int64_t a, int64_t b,
                      int64_t c, void* pmean, void* pm2, const void* alpha, double eps,
                      void* mean, void* var, void* scale) {
  return anoise_cuda::forward_stats(dtype(dt), shape(N, C, S), view(x, a, b, c), pmean, pm2,
                                    alpha, eps, mean, var, scale, nullptr).err;
}
int emu_apply_noise(int dt, int64_t N, int64_t C, int64_t S, void* x, int64_t a, int64_t b,
                    int64_t c, void* y, int64_t ya, int64_t yb, int64_t yc, const void* scale,
                    const int64_t* seed, uint64_t base) {
  return anoise_cuda::apply_noise(dtype(dt), shape(N, C, S), view(x, a, b, c),
                                  view(y, ya, yb, yc), scale, seed, base, nullptr).err;
}
int emu_noise_dot(int dt, int64_t N, int64_t C, int64_t S, void* dy, int64_t a, int64_t b,
                  int64_t c, const int64_t* seed, uint64_t base, void* part, void* gsum,
                  const void* alpha, const void* sigma, void* coef) {
  return anoise_cuda::noise_dot(dtype(dt), shape(N, C, S), view(dy, a, b, c), seed, base, part,
                                gsum, alpha, sigma, coef, nullptr).err;
}
int emu_input_grad(int dt, int64_t N, int64_t C, int64_t S, void* dy, int64_t a, int64_t b,
                   int64_t c, void* x, int64_t xa, int64_t xb, int64_t xc, void* dx, int64_t da,
                   int64_t db, int64_t dc, const void* coef, const void* mean) {
  return anoise_cuda::input_grad(dtype(dt), shape(N, C, S), view(dy, a, b, c),
                                 view(x, xa, xb, xc), view(dx, da, db, dc), coef, mean,
                                 nullptr).err;
}
int emu_randn(float* out, int64_t n, int64_t start, int64_t step, const int64_t* seed) {
  return anoise_cuda::randn(out, n, start, step, seed, nullptr).err;
}
int emu_draw_at(const int64_t* groups, int64_t n, const int64_t* seed, int64_t* words,
                float* rand4, float* randn4) {
  return anoise_cuda::draw_at(groups, n, seed, words, rand4, randn4, nullptr).err;
}
}
"""


def _balanced(text: str, start: int, open_: str, close: str, step: int) -> int:
    """Index just past the bracket group starting at `start` (scanning by `step`)."""
    depth, i = 0, start
    while True:
        ch = text[i]
        if ch == open_:
            depth += 1
        elif ch == close:
            depth -= 1
            if depth == 0:
                return i + step
        i += step


def host_source(cu: str) -> tuple[str, int]:
    """The .cu with every kernel launch turned into emu::launch; and the number of launches."""
    out, pos, count = [], 0, 0
    for m in re.finditer(r"<<<", cu):
        if m.start() < pos:
            continue
        # Kernel name: identifier, possibly with <template args>, right before <<<.
        end_name = m.start()
        i = end_name - 1
        if cu[i] == ">":
            i = _balanced(cu, i, ">", "<", -1)
        while i >= 0 and (cu[i].isalnum() or cu[i] in "_:"):
            i -= 1
        name = cu[i + 1:end_name]
        cfg_end = cu.index(">>>", m.end())
        cfg = cu[m.end():cfg_end]
        args_end = _balanced(cu, cfg_end + 3, "(", ")", 1)
        args = cu[cfg_end + 4:args_end - 1]
        depth, parts, cur = 0, [], ""
        for ch in cfg:
            if ch in "([{<":
                depth += 1
            elif ch in ")]}>":
                depth -= 1
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        parts.append(cur)
        out.append(cu[pos:i + 1])
        out.append(f"emu::launch(dim3({parts[0].strip()}), dim3({parts[1].strip()}), [&] {{ "
                   f"{name}({args}); }})")
        pos = args_end
        count += 1
    out.append(cu[pos:])
    return "".join(out), count


def cuda_include() -> Path | None:
    """The CUDA headers nvcc compiles with (nvcc may be a wrapper script), or None."""
    nvcc = shutil.which("nvcc")
    if nvcc is None or shutil.which("g++") is None:
        return None
    dry = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", "/dev/null", "-o", "/dev/null"],
                         capture_output=True, text=True)
    for m in re.finditer(r'INCLUDES="-I([^"]+)"', dry.stdout + dry.stderr):
        inc = Path(m.group(1).strip())
        if (inc / "cuda_fp16.h").exists():
            return inc
    return None


def build(outdir: Path) -> ctypes.CDLL:
    cu = (CSRC / "adaptive_noise.cu").read_text()
    src, launches = host_source(cu)
    assert launches == cu.count("<<<"), "a kernel launch was not rewritten"
    assert "<<<" not in src
    gen = outdir / "adaptive_noise_host.cpp"
    gen.write_text(src + API)
    lib = outdir / "libanoise_emu.so"
    cmd = ["g++", "-std=c++17", "-O2", "-shared", "-fPIC", "-w", f"-I{cuda_include()}",
           f"-I{CSRC}", "-include", str(HERE / "emulate.h"), str(gen), "-o", str(lib)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"building the emulated kernels failed:\n{res.stderr[-4000:]}")
    return ctypes.CDLL(str(lib))
