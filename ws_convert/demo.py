"""A small demonstration of the fused op: grow one weight matrix 2x and show
that the result is right (exact zero pad, μP-scaled noise) and fast."""

from __future__ import annotations

import time

import torch

from . import _ext
from .szp import Normal, pad_maps, szp
from .noise import tensor_id


def op_demo(width: int = 1024, std: float = 0.02, seed: int = 0) -> dict:
    """Grow a (width, width) bf16 matrix to (2 width, 2 width); returns the figures."""
    small = (torch.randn(width, width, generator=torch.Generator().manual_seed(seed)) * std).to(torch.bfloat16)
    big = (2 * width, 2 * width)
    maps, tid = pad_maps(small.shape), tensor_id("demo.weight")
    exact = szp(small, big, maps, shrink=1.0, perturb=0.0, tid=tid)
    padded = torch.zeros(big, dtype=torch.bfloat16)
    padded[:width, :width] = small

    t = time.perf_counter()
    grown = szp(small, big, maps, shrink=0.4, perturb=1.0, init=Normal(std), seed=seed, tid=tid)
    fused_s = time.perf_counter() - t
    t = time.perf_counter()
    plain = torch.zeros(big, dtype=torch.bfloat16)
    plain[:width, :width] = small * 0.4
    plain += std * torch.randn(big, dtype=torch.bfloat16)
    plain_s = time.perf_counter() - t

    g = grown.float()
    return {
        "backend": f"C++ ({_ext.cpu.isa()})" if _ext.cpu is not None else "PyTorch reference",
        "source": tuple(small.shape), "target": big,
        "zero_pad_exact": bool(torch.equal(exact.view(torch.int16), padded.view(torch.int16))),
        "new_block_std": g[width:, width:].std().item(),
        "copied_block_corr": torch.corrcoef(torch.stack([g[:width, :width].flatten(),
                                                         small.float().flatten()]))[0, 1].item(),
        "fused_ms": fused_s * 1e3, "plain_ms": plain_s * 1e3,
        "same_again": bool(torch.equal(grown, szp(small, big, maps, init=Normal(std), seed=seed, tid=tid))),
    }
