#!/usr/bin/env bash
# Compile every csrc/*.cu with nvcc for sm_80, sm_86 and sm_90 (no GPU or torch needed: the .cu
# files include only CUDA headers). Skips, successfully, when nvcc is not installed.
# Usage: bash .ci/nvcc_check.sh        (from anywhere; NVCC=/path/to/nvcc to pick a compiler)
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC="${NVCC:-$(command -v nvcc || true)}"
if [[ -z "$NVCC" && -x /usr/local/cuda/bin/nvcc ]]; then NVCC=/usr/local/cuda/bin/nvcc; fi
if [[ -z "$NVCC" ]]; then
  echo "nvcc_check: nvcc not found, skipped"
  exit 0
fi
shopt -s nullglob
files=(csrc/*.cu)
if (( ${#files[@]} == 0 )); then echo "nvcc_check: no csrc/*.cu files"; exit 0; fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "nvcc_check: $("$NVCC" --version | tail -n 1)"
for f in "${files[@]}"; do
  for arch in 80 86 90; do
    "$NVCC" -std=c++17 -O3 -Xcompiler -Wall -Werror all-warnings \
      -arch=sm_${arch} -c "$f" -o "$tmp/$(basename "$f" .cu)_sm${arch}.o"
    echo "nvcc_check: ok  $f  sm_${arch}"
  done
done
