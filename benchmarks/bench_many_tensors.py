"""Does grow stay as fast per byte when a checkpoint has many small tensors?

Two synthetic bf16 sources of exactly the same bytes: "many" holds 20,000
square tensors of width W, "few" holds 200 of width 10 W (100 times the
elements each); both are grown 2x on both axes (--arch generic, every tensor
a hidden matrix). Each contender is a fresh process timing its
`ws_convert.grow(...)` call (with a progress callback, as the command line
passes one); they alternate, best of --repeats. Printed:
output bytes per second of each and the ratio many / few (the requirement:
at least 0.5). MoE checkpoints have tens of thousands of tensors; before the
per-chunk progress stopped summing over every tensor, the time grew with
the square of the tensor count.

    python benchmarks/bench_many_tensors.py [--width 64] [--tensors 20000] [--repeats 3] [--out-dir /dev/shm]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GROW = r"""
import json, sys, time
from ws_convert import grow
t = time.perf_counter()
report = grow(sys.argv[1], int(sys.argv[2]), out=sys.argv[3], arch=sys.argv[4] or None, device="cpu",
              progress=lambda *a: None)  # as the command line passes one
print(json.dumps({"seconds": time.perf_counter() - t, "bytes": report.bytes_written}))
"""


def make_source(directory: Path, count: int, width: int) -> int:
    """`count` random bf16 tensors of shape (width, width) and a config
    naming the width and one head (the generic layout needs a head count);
    returns the source bytes."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    data = (torch.randn(count, width, width, generator=g) * 0.02).to(torch.bfloat16)
    directory.mkdir(parents=True)
    save_file({f"layers.{i}.weight": data[i] for i in range(count)}, directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps({"hidden_size": width, "num_attention_heads": 1}))
    return data.numel() * 2


def run(src: Path, to_width: int, out: Path, arch: str = "generic") -> dict:
    """One grow of `src` to `to_width` in a fresh process ("" for `arch`: detected); its seconds and bytes."""
    shutil.rmtree(out, ignore_errors=True)
    done = subprocess.run([sys.executable, "-c", GROW, str(src), str(to_width), str(out), arch], check=True,
                          capture_output=True, text=True)
    shutil.rmtree(out)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=64, help="width of the many small tensors")
    ap.add_argument("--tensors", type=int, default=20000, help="tensors of the many-tensor source (a multiple of 100)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out-dir", default="/dev/shm", help="where the outputs go (and are removed)")
    args = ap.parse_args()
    contenders = {"many": (args.tensors, args.width), "few": (args.tensors // 100, 10 * args.width)}
    work = Path(tempfile.mkdtemp())
    best: dict[str, dict] = {}
    try:
        sources = {name: work / name for name in contenders}
        source_bytes = {name: make_source(sources[name], *shape) for name, shape in contenders.items()}
        assert source_bytes["many"] == source_bytes["few"]
        for _ in range(args.repeats):
            for name, (_, width) in contenders.items():
                r = run(sources[name], 2 * width, Path(args.out_dir) / f"bench-many-tensors-{name}")
                if name not in best or r["seconds"] < best[name]["seconds"]:
                    best[name] = r
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rate = {name: r["bytes"] / r["seconds"] for name, r in best.items()}
    result = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "source_bytes": source_bytes["many"],
              "output_bytes": best["many"]["bytes"],
              "runs": {name: {"tensors": contenders[name][0], "seconds": round(best[name]["seconds"], 3),
                              "GB_s": round(rate[name] / 1e9, 3)} for name in contenders},
              "ratio_many_to_few": round(rate["many"] / rate["few"], 3)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
