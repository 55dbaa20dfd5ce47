"""Throughput of the fused SZP op against the plain PyTorch way.

The plain way is what one writes without ws-convert: torch.zeros, a slice
assign of the shrunk source, torch.randn, add. Contenders alternate within
one run and the best of several repeats is kept, since these machines are
noisy. On a GPU it also measures the kernel against the device-to-device copy
bandwidth (bytes read plus bytes written) and checks CUDA == CPU bit for bit.

    python benchmarks/bench_op.py [--size 4096] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from ws_convert import Constant, _ext, pad_maps, szp, tensor_id

SHRINK, STD = 0.4, 0.02


def plain(src: torch.Tensor, out_shape: tuple[int, int]) -> torch.Tensor:
    out = torch.zeros(out_shape, dtype=src.dtype, device=src.device)
    out[: src.shape[0], : src.shape[1]] = src * SHRINK
    out += STD * torch.randn(out_shape, dtype=src.dtype, device=src.device)
    return out


def best_seconds(fns: dict, repeats: int, sync=lambda: None) -> dict:
    """Alternate the contenders `repeats` times; keep each one's best time."""
    best = {name: float("inf") for name in fns}
    for fn in fns.values():  # warm-up
        fn()
    sync()
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            sync()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def cpu_rows(size: int, repeats: int) -> list[dict]:
    rows = []
    out_shape = (size, size)
    for dtype in (torch.float32, torch.bfloat16):
        src = torch.randn(size // 2, size // 2).to(dtype)
        maps = pad_maps(src.shape)
        buf = torch.empty(out_shape, dtype=dtype)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            fns = {
                "plain": lambda: plain(src, out_shape),
                "szp": lambda: szp(src, out_shape, maps, tid=tensor_id("w"), threads=threads),
                "szp_reused_out": lambda: szp(src, out_shape, maps, tid=tensor_id("w"), threads=threads, out=buf),
            }
            best = best_seconds(fns, repeats)
            n = size * size
            rows.append({"device": "cpu", "dtype": str(dtype).removeprefix("torch."), "threads": threads,
                         **{f"{k}_Melem_s": round(n / v / 1e6, 1) for k, v in best.items()},
                         "speedup": round(best["plain"] / best["szp"], 2),
                         "speedup_reused_out": round(best["plain"] / best["szp_reused_out"], 2)})
    return rows


def gpu_time(fn, iters: int = 10, batch: int = 10) -> float:
    """Seconds per call: the median over `iters` CUDA-event-timed batches of
    `batch` back-to-back calls, so the host work of one call overlaps the
    kernel of the one before, as in a streaming run."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(batch):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / batch)
    return sorted(times)[len(times) // 2]


def gpu_rows(size: int) -> list[dict]:
    rows = []
    nbytes = 2 << 30
    a = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    copy_bw = 2 * nbytes / gpu_time(lambda: b.copy_(a))
    del a, b
    out_shape = (size, size)
    for dtype in (torch.float32, torch.bfloat16):
        src = torch.randn(size // 2, size // 2, device="cuda").to(dtype)
        maps = pad_maps(src.shape)
        out = torch.empty(out_shape, dtype=dtype, device="cuda")
        t_szp = gpu_time(lambda: szp(src, out_shape, maps, tid=tensor_id("w"), out=out))
        t_plain = gpu_time(lambda: plain(src, out_shape))
        # where the time goes: noise alone (no source), source alone (constant init)
        t_noise = gpu_time(lambda: szp(None, out_shape, [[], []], tid=1, out=out))
        t_const = gpu_time(lambda: szp(src, out_shape, maps, init=Constant(0.0), tid=1, out=out))
        moved = out.numel() * out.element_size() + src.numel() * src.element_size()
        rows.append({"device": torch.cuda.get_device_name(), "dtype": str(dtype).removeprefix("torch."),
                     "elements": out.numel(), "szp_ms": round(t_szp * 1e3, 3),
                     "plain_ms": round(t_plain * 1e3, 3),
                     "noise_only_ms": round(t_noise * 1e3, 3), "constant_init_ms": round(t_const * 1e3, 3), "szp_GB_s": round(moved / t_szp / 1e9, 1),
                     "copy_GB_s": round(copy_bw / 1e9, 1), "fraction_of_copy": round(moved / t_szp / copy_bw, 3),
                     "speedup_vs_plain": round(t_plain / t_szp, 2)})
        del src, out
    # bit-exact: the same tensor on the GPU and on the CPU
    cpu_src = torch.randn(3001, 2047).to(torch.bfloat16)
    kw = dict(shrink=SHRINK, tid=tensor_id("exact"), seed=123)
    on_cpu = szp(cpu_src, (6002, 4094), pad_maps(cpu_src.shape), **kw)
    on_gpu = szp(cpu_src.cuda(), (6002, 4094), pad_maps(cpu_src.shape), **kw).cpu()
    rows.append({"check": "cuda == cpu, bf16 (3001, 2047) -> (6002, 4094)",
                 "identical": bool(torch.equal(on_cpu.view(torch.int16), on_gpu.view(torch.int16)))})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=4096, help="output is size x size, source half of each axis")
    ap.add_argument("--gpu-size", type=int, default=16384)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    result = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
              "cpu_isa": _ext.cpu.isa() if _ext.cpu else None, "torch": torch.__version__,
              "cpu": cpu_rows(args.size, args.repeats)}
    if _ext.cuda is not None and torch.cuda.is_available():
        result["gpu"] = gpu_rows(args.gpu_size)
    for section in ("cpu", "gpu"):
        for row in result.get(section, []):
            print("  ".join(f"{k}={v}" for k, v in row.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
