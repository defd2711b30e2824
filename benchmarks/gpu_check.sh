#!/usr/bin/env bash
# One-shot check of anoise on a CUDA machine: versions, the device's copy bandwidth (the
# roofline), the CUDA extension build, the test suite on CUDA tensors and a GPU subset of the
# benchmarks.  Everything lands in OUTDIR (at most 8 files); the last thing printed is a short
# table of the fused backends on the roofline shape.
#
#   bash benchmarks/gpu_check.sh OUTDIR
#
# Made for a fresh machine with a CUDA build of PyTorch, Triton, pytest, pytest-benchmark and
# matplotlib already installed and no network: nothing is downloaded.  Each step's failure is
# recorded and the rest still runs; the exit status is non-zero if any step failed.  The steps
# share a time budget (GPU_CHECK_BUDGET_S, default 450 s) so the whole run ends within 8 min.
#
# Knobs (for a dry run elsewhere): PYTHON, GPU_CHECK_BUDGET_S, GPU_CHECK_DEVICE (cuda),
# GPU_CHECK_SHAPES (the standard set), GPU_CHECK_ROOFLINE (256x64x56x56).

set -u -o pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
OUTDIR=$1
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
cd "$(dirname "$0")/.." || exit 2

PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-450}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
SHAPES=${GPU_CHECK_SHAPES:-}
ROOF=${GPU_CHECK_ROOFLINE:-256x64x56x56}
# Every Python command runs from the repository root, so the source tree is importable even
# when the editable install below fails (only the extensions are missing then).
export PYTHONUNBUFFERED=1
export PY OUTDIR DEVICE

exec > >(tee "$OUTDIR/gpu_check.log") 2>&1

FAILED=()
# Seconds a step may take: its own cap, but never past the budget less a reserve for the report.
limit() {
    local cap=$1 left=$((BUDGET - SECONDS - 20))
    if [ "$left" -lt "$cap" ]; then cap=$left; fi
    if [ "$cap" -lt 1 ]; then cap=1; fi
    echo "$cap"
}
step() {
    local name=$1 cap=$2 t0=$SECONDS rc=0
    shift 2
    if [ $((BUDGET - SECONDS - 20)) -lt 5 ]; then
        echo "=== $name: NOT RUN (time budget spent)"
        FAILED+=("$name (not run: time budget spent)")
        return
    fi
    local lim
    lim=$(limit "$cap")
    echo "=== $name (limit ${lim}s)"
    # timeout runs programs, not shell functions: the exported functions run in a child bash.
    timeout --kill-after=10 "$lim" bash -c '"$@"' _ "$@" || rc=$?
    if [ "$rc" -eq 0 ]; then
        echo "=== $name: ok ($((SECONDS - t0)) s)"
    else
        [ "$rc" -eq 124 ] && echo "=== $name: timed out after ${lim}s"
        echo "=== $name: FAILED (exit $rc, $((SECONDS - t0)) s)"
        FAILED+=("$name (exit $rc)")
    fi
}

# -- 1. machine and versions ------------------------------------------------------------------
info() {
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem \
        --format=csv || true
    command -v nvcc >/dev/null && nvcc --version | tail -n 2
    "$PY" - <<'PYEOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
try:
    import triton
    print("triton", triton.__version__)
except Exception as exc:
    print("triton: not importable:", exc)
assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
p = torch.cuda.get_device_properties(0)
print("gpu", p.name, f"cc {p.major}.{p.minor}", p.multi_processor_count, "SMs",
      f"{p.total_memory / 2**30:.1f} GiB")
PYEOF
}
export -f info
if [ "$DEVICE" = cuda ]; then
    step "versions" 60 info
fi

# -- 2. copy bandwidth: the roofline of a memory-bound op -------------------------------------
COPY_GBPS=""
copy_bw() {
    "$PY" - "$OUTDIR/copy_gbps.txt" <<'PYEOF'
import sys, torch
n = 1 << 29  # 2 GiB of float32 per buffer: far past any L2
src = torch.randn(n, device="cuda")
dst = torch.empty_like(src)
for _ in range(3):
    dst.copy_(src)
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
reps = 20
torch.cuda.synchronize()
start.record()
for _ in range(reps):
    dst.copy_(src)
end.record()
end.synchronize()
seconds = start.elapsed_time(end) / 1e3 / reps
gbps = 2 * src.numel() * src.element_size() / seconds / 1e9  # read + write
print(f"copy_: {2 * n * 4 / 2**30:.0f} GiB moved per copy, {seconds * 1e3:.3f} ms, "
      f"{gbps:.1f} GB/s")
open(sys.argv[1], "w").write(f"{gbps:.1f}\n")
PYEOF
}
export -f copy_bw
if [ "$DEVICE" = cuda ]; then
    step "copy bandwidth" 60 copy_bw
    [ -s "$OUTDIR/copy_gbps.txt" ] && COPY_GBPS=$(cat "$OUTDIR/copy_gbps.txt")
    rm -f "$OUTDIR/copy_gbps.txt"
fi

# -- 3. build the extensions, the CUDA one forced ----------------------------------------------
build() {
    ANOISE_BUILD_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} \
        "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . &&
    "$PY" -c "import anoise; [print(f'{n}: {b}') for n, b in anoise.backends().items()]"
}
export -f build
step "build (ANOISE_BUILD_CUDA=1)" 180 build

# -- 4. benchmarks and tests --------------------------------------------------------------------
# In order of importance, as later steps get what is left of the budget: the roofline shape,
# the test suite on CUDA tensors, the standard shapes and the ResNet-20 step, and last
# the PyTorch idiom under torch.compile (it recompiles for every row, so only on the roofline
# shape).
bench() {  # JSON CAP REQUIRED ARGS...: REQUIRED=1 fails the step when no row ran
    local json=$1 cap=$2 required=$3
    shift 3
    rm -f "$OUTDIR/$json"
    # Rows stop starting 30 s before the step's limit, so pytest still writes the JSON.
    "$PY" -m pytest benchmarks --benchmark-only -q -rs -p no:cacheprovider \
        --bench-device "$DEVICE" --benchmark-json "$OUTDIR/$json" \
        --bench-deadline-s $((cap > 60 ? cap - 30 : cap / 2)) "$@" || return
    if [ "$required" = 1 ] && [ ! -s "$OUTDIR/$json" ]; then
        echo "no benchmark row ran (all skipped): see the reasons above"
        return 3
    fi
}
export -f bench
bench_step() {  # NAME CAP JSON REQUIRED ARGS...: the cap goes to the step and the suite's deadline
    local name=$1 cap
    cap=$(limit "$2")
    shift 2
    step "$name" "$cap" bench "$1" "$cap" "${@:2}"
}
FUSED=$("$PY" -c 'import anoise; print(",".join(n for n in anoise.backends() if n != "reference"))' \
    2>/dev/null) || FUSED=triton,cuda,cpu
STANDARD=${SHAPES:-128x16x32x32,128x64x8x8,32x64x56x56,8x256x14x14,4096x1024}
bench_step "benchmarks: roofline shape" 70 bench_roofline.json 1 --bench-shapes "$ROOF" \
    --bench-dtypes float32,bfloat16 --bench-impls "torch-eager,$FUSED" -k "not resnet" \
    --bench-target-s 0.3
# The CUDA cases only (ids and file names carry "cuda"): CPU-only CI runs all the others,
# including the CPU emulation of the CUDA kernels and the host build of their noise code.
step "tests on CUDA tensors" 180 "$PY" -m pytest tests -q -p no:cacheprovider \
    -k "cuda and not emulated" --ignore=tests/test_cuda_host.py
bench_step "benchmarks: standard shapes" 130 bench_main.json 1 --bench-shapes "$STANDARD" \
    --bench-impls "torch-eager,$FUSED" --bench-target-s 0.2
# No torch-compile row is a finding (the reason is printed), not a failure of this check.
bench_step "benchmarks: the PyTorch idiom under torch.compile" 150 bench_compiled.json 0 \
    --bench-shapes "$ROOF" --bench-dtypes float32,bfloat16 --bench-impls torch-compile \
    -k "not resnet" --bench-compile-probe-s 60 --bench-target-s 0.2

# -- 5. report ----------------------------------------------------------------------------------
JSONS=()
for f in bench_main.json bench_roofline.json bench_compiled.json; do
    [ -s "$OUTDIR/$f" ] && JSONS+=("$OUTDIR/$f")
done
COPY_ARG=()
[ -n "$COPY_GBPS" ] && COPY_ARG=(--copy-gbps "$COPY_GBPS")
if [ ${#JSONS[@]} -gt 0 ]; then
    step "report" 60 "$PY" -m benchmarks.report "${JSONS[@]}" "${COPY_ARG[@]}" \
        --out "$OUTDIR/RESULTS.md" --png "$OUTDIR/speedup.png" \
        --note "GPU run of benchmarks/gpu_check.sh; copy bandwidth ${COPY_GBPS:-not measured} GB/s"
    "$PY" -m benchmarks.report "${JSONS[@]}" "${COPY_ARG[@]}" --summary --shape "$ROOF" \
        > "$OUTDIR/summary.txt" 2>&1 || FAILED+=("summary (exit $?)")
    if [ ! -s "$OUTDIR/bench_compiled.json" ]; then
        { echo "no torch.compile row ran:"
          grep -h "SKIPPED.*compile" "$OUTDIR/gpu_check.log" | tail -n 1; } >> "$OUTDIR/summary.txt"
    fi
else
    FAILED+=("report (no benchmark JSON was written)")
fi

echo
echo "=== gpu_check finished in $SECONDS s"
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "=== FAILED steps:"
    printf '  %s\n' "${FAILED[@]}"
else
    echo "=== all steps passed"
fi
echo "=== copy bandwidth: ${COPY_GBPS:-not measured} GB/s; fused backends on $ROOF" \
    "(forward GB/s as % of copy; speed-ups vs the PyTorch idiom, eager and torch.compile):"
cat "$OUTDIR/summary.txt" 2>/dev/null || echo "(no summary)"
[ ${#FAILED[@]} -eq 0 ]
