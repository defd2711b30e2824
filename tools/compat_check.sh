#!/usr/bin/env bash
# Compatibility check of the Triton kernels on the oldest supported stack and the newest one,
# without a GPU (a maintainer script: run it after any change under kernels/ and record the
# result in benchmarks/RESULTS.md; CI does not run it, as it takes ~15 min on 2 cores).
#
#   bash tools/compat_check.sh [STACK...]      STACK: oldest, newest (default: both)
#
# oldest: triton 3.6 (what torch 2.11 pins), with the CPU build of torch 2.13 (the sm_90
#         compile needs only triton and the ptxas it ships; the interpreter runs on CPU
#         tensors) and numpy < 2.4 (triton < 3.8's interpreter fails on numpy >= 2.4).
# newest: the newest triton and numpy, with torch 2.13 (the CPU build this project tests on).
# Each stack gets a virtual environment under $ANOISE_COMPAT_DIR (default
# ~/.cache/anoise-compat), made once, with the package installed editable without its
# extensions.  In each: tests/test_triton_sm90.py (every kernel compiled for sm_90 through
# the real compiler: no spills, vectorised accesses, the SASS-per-element ceilings) and the
# Triton tests under the interpreter.  Exit status non-zero if any stack failed.

set -u -o pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=${ANOISE_COMPAT_DIR:-$HOME/.cache/anoise-compat}
STACKS=("$@")
[ ${#STACKS[@]} -eq 0 ] && STACKS=(oldest newest)

requirements() {
    case $1 in
        oldest) echo "torch==2.13.0 triton==3.6.0 numpy<2.4 pytest scipy" ;;
        newest) echo "torch==2.13.0 triton numpy pytest scipy" ;;
        *) echo "unknown stack $1 (expected oldest or newest)" >&2; return 2 ;;
    esac
}

FAILED=()
for stack in "${STACKS[@]}"; do
    reqs=$(requirements "$stack") || exit 2
    venv=$ROOT/$stack
    echo "=== $stack: $reqs"
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv" && "$venv/bin/pip" install -q -U pip "setuptools>=64" wheel &&
        # shellcheck disable=SC2086  # the requirements are words
        "$venv/bin/pip" install -q $reqs || { FAILED+=("$stack (environment)"); continue; }
    fi
    ANOISE_BUILD_CPU=0 ANOISE_BUILD_CUDA=0 "$venv/bin/pip" install -q --no-build-isolation \
        --no-deps -e . || { FAILED+=("$stack (install)"); continue; }
    "$venv/bin/python" -c "import torch, triton, numpy
print('torch', torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__)"
    t0=$SECONDS
    if env -u TRITON_INTERPRET "$venv/bin/python" -m pytest -q -p no:cacheprovider \
            tests/test_triton_sm90.py; then
        echo "=== $stack: sm_90 compile and proxy passed ($((SECONDS - t0)) s)"
    else
        FAILED+=("$stack (sm_90 compile)")
    fi
    t0=$SECONDS
    if TRITON_INTERPRET=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider -W ignore \
            tests/test_triton.py tests/test_triton_ops.py tests/test_triton_stream.py \
            tests/test_triton_stats_range.py; then
        echo "=== $stack: interpreter tests passed ($((SECONDS - t0)) s)"
    else
        FAILED+=("$stack (interpreter tests)")
    fi
done
if [ ${#FAILED[@]} -gt 0 ]; then
    printf '=== FAILED: %s\n' "${FAILED[@]}"
    exit 1
fi
echo "=== all stacks passed: ${STACKS[*]}"
