#!/usr/bin/env bash
# Runs Veil's CUDA kernels (kernels/cuda) on the CPU emulation in kernels/cuda/emu and compares
# them with plain reference implementations: a logic check for machines without a GPU (it says
# nothing about speed or the real compiler). Needs a C++20 compiler; about a minute on 2 cores.
#   scripts/cuda_emu_test.sh            # every test
#   scripts/cuda_emu_test.sh sample     # one group: bf16 embed norm silu rope decode prefill sample gcm
#   VEIL_EMU_TSAN=1 scripts/cuda_emu_test.sh prefill   # under ThreadSanitizer: reports shared-memory
#                                       # races between threads not ordered by a barrier (slow:
#                                       # ~10 minutes for `sample`)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${TMPDIR:-/tmp}/veil-cuda-emu-test"
flags=(-O2)
if [[ "${VEIL_EMU_TSAN:-0}" == 1 ]]; then
    flags=(-O1 -g -fsanitize=thread)
    bin="$bin-tsan"
fi
"${CXX:-g++}" -std=c++20 "${flags[@]}" -pthread -Wall -Wextra -Wno-unused-parameter \
    -Wno-unknown-pragmas -o "$bin" "$root/kernels/cuda/emu/emu_test.cpp"
# A deadlock (divergent __syncthreads or shuffle) shows up as a timeout.
exec timeout 1800 "$bin" "$@"
