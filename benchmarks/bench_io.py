"""Memory and speed of writing a checkpoint: ws-convert's streaming writer
against safetensors' save_file (the whole state dict in memory), and against
the raw write speed of the disk (dd with conv=fsync, same byte count).

The data is one random 4 MiB block repeated, so the figures are about writing,
not about generating numbers. Each contender runs in a fresh Python process; memory is that process's peak
resident set (VmHWM) minus its resident set just before writing started, so
the interpreter and torch themselves are not counted against either.

    python benchmarks/bench_io.py [--gb 2] [--dir /tmp] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, os, sys, time, torch
from pathlib import Path

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

mode, out, n_tensors, rows, cols, chunk = sys.argv[1], Path(sys.argv[2]), *map(int, sys.argv[3:7])
names = [f"layers.{i}.weight" for i in range(n_tensors)]
block = torch.randn(chunk, cols)  # the data: one random block, reused, so neither side pays for randn
before = rss("VmRSS:")
t = time.perf_counter()
if mode == "stream":
    from ws_convert.writer import CheckpointWriter, OutputTensor
    plan = [OutputTensor(n, "F32", (rows, cols)) for n in names]
    with CheckpointWriter(out, plan, max_shard_size="1GB") as w:
        for n in names:
            for r in range(0, rows, chunk):
                w.write(n, block[: min(chunk, rows - r)], row_start=r)
else:
    from safetensors.torch import save_file
    out.mkdir()
    state = {n: block.repeat(rows // chunk, 1) for n in names}
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    fd = os.open(out / "model.safetensors", os.O_RDONLY); os.fsync(fd); os.close(fd)
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "peak_growth": rss("VmHWM:") - before, "rss_before": before}))
"""


def run_child(mode: str, out: Path, n_tensors: int, rows: int, cols: int, chunk: int) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, mode, str(out), str(n_tensors), str(rows), str(cols), str(chunk)],
                         check=True, capture_output=True, text=True)
    return json.loads(res.stdout)


def dd_seconds(path: Path, nbytes: int) -> float:
    t = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=8M", f"count={nbytes // (8 << 20)}", "conv=fsync"],
                   check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gb", type=float, default=2.0, help="checkpoint size in GB (10^9 bytes)")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where to write (the disk under test)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    cols, rows = 4096, 8192  # 128 MiB per float32 tensor
    n_tensors = max(1, round(args.gb * 1e9 / (rows * cols * 4)))
    nbytes = n_tensors * rows * cols * 4
    chunk = 256  # rows per write: 4 MiB
    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for i in range(args.repeats):  # alternate the contenders
            for mode in ("stream", "save_file", "dd"):
                out = Path(tmp) / f"{mode}-{i}"
                if mode == "dd":
                    r = {"seconds": dd_seconds(out, nbytes), "peak_growth": None}
                    out.unlink()
                else:
                    r = run_child(mode, out, n_tensors, rows, cols, chunk)
                    subprocess.run(["rm", "-rf", str(out)], check=True)
                if mode not in best or r["seconds"] < best[mode]["seconds"]:
                    best[mode] = r
    result = {"date": time.strftime("%Y-%m-%d"), "bytes": nbytes, "dir": args.dir, "chunk_bytes": chunk * cols * 4}
    for mode, r in best.items():
        result[mode] = {"seconds": round(r["seconds"], 2), "GB_s": round(nbytes / r["seconds"] / 1e9, 3),
                        "peak_growth_MB": None if r["peak_growth"] is None else round(r["peak_growth"] / 1e6, 1),
                        "peak_growth_fraction": None if r["peak_growth"] is None else round(r["peak_growth"] / nbytes, 4)}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
