#!/usr/bin/env bash
# Maintainers: re-measure the committed CPU results and regenerate benchmarks/RESULTS.md.
#
#   bash benchmarks/update_results.sh [extra pytest options, e.g. --bench-shapes 32x64x56x56]
#
# Runs the whole benchmark suite on the CPU (2 threads) into benchmarks/results_cpu.json, then
# rewrites the generated block of benchmarks/RESULTS.md (between its BEGIN / END generated
# markers) and benchmarks/speedup.png.  Every hand-written section of RESULTS.md is kept as it
# is: update its prose by hand if the new numbers change what it says.  Needs the test extra
# (the README's test command installs it).  Took 4-8 min on an idle 2-core machine (the
# torch.compile rows recompile for every shape, dtype and mode; the reference rows take seconds
# per call).  Run it on an otherwise idle machine: the load average is recorded beside the
# numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
start=$SECONDS
"$PY" -m pytest benchmarks --benchmark-only -q -rs -p no:cacheprovider --bench-device cpu \
    --benchmark-json=benchmarks/results_cpu.json "$@"
"$PY" -m benchmarks.report benchmarks/results_cpu.json --update benchmarks/RESULTS.md \
    --png benchmarks/speedup.png \
    --note "CPU run on a 2-core machine (torch.set_num_threads(2)). No GPU figures: benchmarks/gpu_check.sh measures them in one run on a CUDA machine."
echo "benchmarks/RESULTS.md regenerated in $((SECONDS - start)) s"
