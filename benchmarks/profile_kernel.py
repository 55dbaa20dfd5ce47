"""One launch of the CUDA kernel on a large tensor, for a profiler to look at:

    ncu --clock-control none -k regex:szp_kernel python benchmarks/profile_kernel.py [--dtype bfloat16] [--noise-only]
"""

import argparse

import torch

from ws_convert import pad_maps, szp

ap = argparse.ArgumentParser()
ap.add_argument("--size", type=int, default=16384)
ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
ap.add_argument("--noise-only", action="store_true")
args = ap.parse_args()
dtype = getattr(torch, args.dtype)
out = torch.empty(args.size, args.size, dtype=dtype, device="cuda")
if args.noise_only:
    szp(None, out.shape, [[], []], tid=1, out=out)
else:
    src = torch.randn(args.size // 2, args.size // 2, device="cuda").to(dtype)
    szp(src, out.shape, pad_maps(src.shape), tid=1, out=out)
torch.cuda.synchronize()
