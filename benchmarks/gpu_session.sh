#!/usr/bin/env bash
# Everything a lent GPU machine is needed for, in one call: build the CUDA
# module, run the GPU tests, then time grow end to end on the GPU (two chunk
# sizes) and on all CPU cores, against dd on the same disk. Results land in
# $OUT (default /tmp/ws-convert-gpu); the last lines printed are the summary.
set -u
OUT=${OUT:-/tmp/ws-convert-gpu}
mkdir -p "$OUT"
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__)"
  echo "cpus $(nproc)"; df -h /tmp /dev/shm | tail -2
} > "$OUT/machine.txt" 2>&1
WS_CONVERT_CUDA=on WS_CONVERT_CUDA_ARCHS=90 python3 -m pip install --no-deps --no-build-isolation -e . \
  > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
python3 -m pytest -q -m cuda tests --continue-on-collection-errors -p no:cacheprovider > "$OUT/tests.txt" 2>&1
bench() {  # name, then bench_grow's arguments
  local name=$1; shift
  python3 benchmarks/bench_grow.py --skip-plain "$@" --json "$OUT/$name.json" > "$OUT/$name.log" 2>&1 \
    || tail -20 "$OUT/$name.log"
}
bench cuda36 --device cuda --layers 36 --repeats 2
bench cpu36 --device cpu --layers 36 --repeats 2
bench cuda36-128mb --device cuda --layers 36 --chunk-mb 128 --repeats 2
bench cuda9 --device cuda --layers 9 --repeats 2
cat "$OUT/machine.txt"; tail -3 "$OUT/tests.txt"
python3 - "$OUT" <<'PY'
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    r = json.loads(f.read_text())
    runs = r["runs"]
    print(f.stem, "out GB", round(r["output_bytes"] / 1e9, 2), "pcie", r.get("pcie_GB_s"),
          "disk/dd: grow call", r["fraction_of_disk_grow_call"], "whole", r["fraction_of_disk_whole_process"])
    for k, v in runs.items():
        print("   ", k, {x: v[x] for x in ("seconds", "grow_call_seconds", "startup_seconds", "grow_call_GB_s",
                                          "peak_rss_anon_MB") if x in v})
PY
