#!/usr/bin/env bash
# Compile-check the CUDA kernels without a GPU or torch: every csrc/cuda/*.cu with plain nvcc
# for sm_80 and sm_90, failing on any error or warning, and print the registers, spills and
# shared memory ptxas reports for each kernel.  Then a static speed proxy for an H200: SASS
# instructions per element of each hot loop of adaptive_noise.cu for sm_90, and the roof each
# implies (csrc/sass_proxy.py says how they are counted).  It needs cuobjdump: from the PATH,
# next to nvcc, or the one Triton ships; without one the proxy is skipped with a notice.
#   usage: csrc/check_cuda.sh            (NVCC=/path/to/nvcc, CUOBJDUMP=/path/to/cuobjdump)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
nvcc="${NVCC:-nvcc}"
command -v "$nvcc" >/dev/null || { echo "check_cuda: $nvcc not found" >&2; exit 1; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
shopt -s nullglob
sources=("$here"/cuda/*.cu)
[ ${#sources[@]} -gt 0 ] || { echo "check_cuda: no .cu files in $here/cuda" >&2; exit 1; }
status=0
for arch in 80 90; do
  for src in "${sources[@]}"; do
    name="$(basename "$src" .cu)"
    log="$out/$name.sm_$arch.log"
    if ! "$nvcc" -std=c++17 -O3 -c "$src" -o "$out/$name.sm_$arch.o" \
        -gencode "arch=compute_$arch,code=sm_$arch" -Xptxas -v -Werror all-warnings \
        -I"$here/cuda" >"$log" 2>&1; then
      echo "FAIL $name.cu sm_$arch:" >&2
      cat "$log" >&2
      status=1
      continue
    fi
    echo "== $name.cu sm_$arch"
    [ "$arch" = 90 ] && [ "$name" = adaptive_noise ] && proxy_obj="$out/$name.sm_$arch.o"
    # ptxas -v: "Compiling entry function '<mangled>'" then "Used N registers, ..." lines.
    awk '
      /Compiling entry function/ { match($0, /'"'"'[^'"'"']+'"'"'/); fn = substr($0, RSTART + 1, RLENGTH - 2) }
      /bytes stack frame/ { match($0, /[0-9]+ bytes spill stores/); st = substr($0, RSTART, RLENGTH)
                            match($0, /[0-9]+ bytes spill loads/); ld = substr($0, RSTART, RLENGTH) }
      /Used [0-9]+ registers/ { match($0, /Used [0-9]+ registers/); regs = substr($0, RSTART + 5, RLENGTH - 5)
                                smem = ""; if (match($0, /[0-9]+ bytes smem/)) smem = ", " substr($0, RSTART, RLENGTH)
                                printf "  %-18s %s, %s%s  %s\n", regs, st, ld, smem, fn }
    ' "$log" | { if command -v c++filt >/dev/null; then c++filt; else cat; fi; } |
      sed -E 's/\(anonymous namespace\):://g; s/anoise_cuda:://g; s/\(Geometry.*|\(long.*|\(float\*.*//'

  done
done

# -- the static proxy --------------------------------------------------------------------------
find_cuobjdump() {
    if [ -n "${CUOBJDUMP:-}" ]; then echo "$CUOBJDUMP"; return; fi
    if command -v cuobjdump >/dev/null; then command -v cuobjdump; return; fi
    # nvcc may be a wrapper script: ask it where its toolkit is.
    local top
    top=$("$nvcc" --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)
    if [ -n "$top" ] && [ -x "$top/cuobjdump" ]; then echo "$top/cuobjdump"; return; fi
    local tri
    tri=$(python3 -c 'import os, triton; print(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))' 2>/dev/null) || true
    if [ -n "$tri" ] && [ -x "$tri" ]; then echo "$tri"; fi
}
if [ -n "${proxy_obj:-}" ]; then
    cuobjdump=$(find_cuobjdump)
    if [ -z "$cuobjdump" ]; then
        echo "== sm_90 proxy skipped: no cuobjdump (set CUOBJDUMP, or install triton)"
    else
        echo "== sm_90 proxy: SASS instructions per element of the hot loops (a static count, not a measurement)"
        "$cuobjdump" -sass "$proxy_obj" >"$out/adaptive_noise.sm_90.sass"
        python3 "$here/sass_proxy.py" "$out/adaptive_noise.sm_90.sass" || status=1
    fi
fi
exit $status
