"""Small checkpoints for the I/O tests."""

from __future__ import annotations

import torch

from ws_convert.torch_dtypes import DTYPES, NAMES
from ws_convert.writer import OutputTensor


def all_dtype_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """One tensor per dtype safetensors and torch share, plus empty and 0-d ones."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, dtype in enumerate(DTYPES.values()):
        shape = (3 + i % 4, 5) if i % 3 else (7,)
        if dtype.is_floating_point or dtype.is_complex:
            t = torch.randn(shape, generator=g).to(dtype)
        elif dtype == torch.bool:
            t = torch.randint(0, 2, shape, generator=g).bool()
        else:
            t = torch.randint(0, 100, shape, generator=g).to(dtype)
        out[f"t.{str(dtype).removeprefix('torch.')}"] = t
    out["empty"] = torch.zeros(0, 4)
    out["empty_inner"] = torch.zeros(3, 0, dtype=torch.bfloat16)
    out["scalar"] = torch.tensor(1.5, dtype=torch.float16)
    return out


def planned(tensors: dict[str, torch.Tensor]) -> list[OutputTensor]:
    return [OutputTensor(k, NAMES[v.dtype], tuple(v.shape)) for k, v in tensors.items()]


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))
