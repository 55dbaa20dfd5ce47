"""Training throughput of the bundled μP GPT: tokens per second, and on a
GPU the model FLOPs utilisation (MFU) with bf16 autocast and torch.compile.

FLOPs per token: 6 x parameters (forward and backward of every matrix) plus
the attention scores, 12 x depth x width x context. MFU is reported against
both the datasheet's dense bf16 peak (H100 SXM: 989 TFLOP/s) and a bf16
matrix product measured in the same run.

    python benchmarks/bench_train.py                       # small CPU config
    python benchmarks/bench_train.py --device cuda --width 768 --depth 12 --heads 12 --context 1024 --batch-size 32 --compile
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from ws_convert.data import batch, load
from ws_convert.model import GPTConfig, build, flops_per_token


def matmul_peak() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        a @ b
    torch.cuda.synchronize()
    return 20 * 2 * 8192**3 / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="datasheet dense bf16 peak")
    ap.add_argument("--json")
    args = ap.parse_args()
    from mup import MuAdamW

    device = torch.device(args.device)
    ds = load(None, max_bytes=16 << 20)
    torch.manual_seed(0)
    model = build(GPTConfig(vocab_size=256, context=args.context, width=args.width, depth=args.depth,
                            heads=args.heads)).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    net = torch.compile(model) if args.compile else model
    opt = MuAdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    gpu = device.type == "cuda"

    def step(i: int) -> None:
        x, y = batch(ds.train, args.batch_size, args.context, 0, i)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu):
            loss = F.cross_entropy(net(x).float().flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(args.warmup):
        step(i)
    if gpu:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(args.steps):
        step(args.warmup + i)
    if gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    tokens = args.steps * args.batch_size * args.context
    result = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name() if gpu else "cpu",
              "threads": torch.get_num_threads(), "params": n_params, "compile": args.compile,
              "config": {k: getattr(args, k) for k in ("width", "depth", "heads", "context", "batch_size")},
              "tokens_per_s": round(tokens / seconds, 1),
              "model_tflops": round(tokens * flops_per_token(model.config) / seconds / 1e12, 2)}
    if gpu:
        peak = matmul_peak()
        result["matmul_peak_tflops"] = round(peak / 1e12, 1)
        result["mfu_vs_datasheet"] = round(result["model_tflops"] / args.peak_tflops, 3)
        result["mfu_vs_measured_matmul"] = round(result["model_tflops"] * 1e12 / peak, 3)
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
