#!/usr/bin/env bash
# Compile-check the CUDA kernels without a GPU or torch: every csrc/cuda/*.cu with plain nvcc
# for sm_80 and sm_90, failing on any error or warning, and print the registers, spills and
# shared memory ptxas reports for each kernel.
#   usage: csrc/check_cuda.sh            (NVCC=/path/to/nvcc to pick a compiler)
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
exit $status
