#!/usr/bin/env bash
# Build the CUDA module on a lent GPU machine and run only the GPU tests.
set -u
OUT=${OUT:-/tmp/ws-convert-gpu}
mkdir -p "$OUT"
WS_CONVERT_CUDA=on WS_CONVERT_CUDA_ARCHS=90 python3 -m pip install --no-deps --no-build-isolation -e . \
  > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
python3 -m pytest -q -m cuda tests --continue-on-collection-errors -p no:cacheprovider -x "$@" 2>&1 | tail -30
