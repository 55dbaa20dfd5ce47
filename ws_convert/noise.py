"""The noise stream of docs/DESIGN.md section 5, in plain PyTorch.

Noise is a pure function of (seed, tensor name, element index): Philox4x32-10
keyed by the seed, counting Philox blocks of four elements, then Box-Muller
with the project's own float32 log/sin/cos. This module is the reference the
compiled kernels (csrc/szp_math.h) must match bit for bit; every float32 step
below is one IEEE operation, in the same order as there.
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)

# Same constants as csrc/szp_math.h (tests compare them).
LOG_P = (0.3333335518836975, -0.2500087022781372, 0.19999879598617554, -0.16620740294456482,
         0.142251655459404, -0.13206417858600616, 0.12638045847415924, -0.07374843955039978)
LN2 = (0.693145751953125, 1.4286068203094172e-06)
SIN_S = (6.2831854820251465, -41.34165954589844, 81.5921401977539, -75.38105773925781)
COS_C = (-19.739208221435547, 64.93939208984375, -85.45680236816406, 60.24126052856445,
         -26.140756607055664)


def philox4x32_10(counter: list[torch.Tensor], key: tuple[int, int]) -> list[torch.Tensor]:
    """Philox4x32-10 on int64 tensors holding uint32 values (products wrap in int64)."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        p0 = c0 * PHILOX_M[0]
        p1 = c2 * PHILOX_M[1]
        c0, c1, c2, c3 = (((p1 >> 32) & MASK32) ^ c1 ^ k0, p1 & MASK32,
                          ((p0 >> 32) & MASK32) ^ c3 ^ k1, p0 & MASK32)
        k0 = (k0 + PHILOX_W[0]) & MASK32
        k1 = (k1 + PHILOX_W[1]) & MASK32
    return [c0, c1, c2, c3]


def _f32(v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float32)


def _horner(coefs: tuple[float, ...], x: torch.Tensor) -> torch.Tensor:
    acc = torch.full_like(x, coefs[-1])
    for c in reversed(coefs[:-1]):
        acc = acc * x + _f32(c)
    return acc


def uniform01(x: torch.Tensor) -> torch.Tensor:
    """uint32 words (in int64) to float32 uniforms in (0, 1]."""
    return x.to(torch.float32) * _f32(2.0**-32) + _f32(2.0**-33)


def log_f32(u: torch.Tensor) -> torch.Tensor:
    """Natural log of float32 u in [2^-33, 1], as csrc/szp_math.h computes it."""
    bits = u.view(torch.int32)
    mant = bits & 0x007FFFFF
    high = mant > 0x003504F3
    e = (bits >> 23) - 127 + high.to(torch.int32)
    m = (mant | torch.where(high, 0x3F000000, 0x3F800000).to(torch.int32)).view(torch.float32)
    f = m - _f32(1.0)
    p = _horner(LOG_P, f)
    f2 = f * f
    r = (f2 * f * p - _f32(0.5) * f2) + f
    ef = e.to(torch.float32)
    return ef * _f32(LN2[0]) + (r + ef * _f32(LN2[1]))


def sincos_2pi(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sin(2 pi u), cos(2 pi u) for float32 u in [0, 1]."""
    q = (_f32(4.0) * u + _f32(0.5)).to(torch.int32)
    t = u - q.to(torch.float32) * _f32(0.25)
    z = t * t
    s = t * _horner(SIN_S, z)
    c = z * _horner(COS_C, z) + _f32(1.0)
    swap = (q & 1) != 0
    sv, cv = torch.where(swap, c, s), torch.where(swap, s, c)
    return torch.where((q & 2) != 0, -sv, sv), torch.where(((q + 1) & 2) != 0, -cv, cv)


def sqrt_f32(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded float32 sqrt (torch's CPU sqrt is not): via float64,
    where rounding twice is provably harmless for sqrt."""
    return x.double().sqrt().to(torch.float32)


def box_muller(x0: torch.Tensor, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r = sqrt_f32(_f32(-2.0) * log_f32(uniform01(x0)))
    s, c = sincos_2pi(uniform01(x1))
    return r * c, r * s


def _blocks(block: torch.Tensor, tid: int, seed: int) -> torch.Tensor:
    """The four standard normals of each Philox block, as rows."""
    counter = [block & MASK32, (block >> 32) & MASK32,
               torch.full_like(block, tid & MASK32), torch.full_like(block, tid >> 32)]
    x = philox4x32_10(counter, (seed & MASK32, (seed >> 32) & MASK32))
    n0, n1 = box_muller(x[0], x[1])
    n2, n3 = box_muller(x[2], x[3])
    return torch.stack([n0, n1, n2, n3], dim=1)


def normal_stream(start: int, stop: int, tid: int, seed: int,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard normals (float32) of flat elements [start, stop) of tensor `tid`."""
    if stop <= start:
        return torch.empty(0, dtype=torch.float32, device=device)
    b0, b1 = start >> 2, ((stop - 1) >> 2) + 1
    block = torch.arange(b0, b1, dtype=torch.int64, device=device)
    return _blocks(block, tid, seed).reshape(-1)[start - 4 * b0: stop - 4 * b0]


def normal_at(index: torch.Tensor, tid: int, seed: int) -> torch.Tensor:
    """Standard normals (float32) of the flat elements `index` (int64) of tensor `tid`."""
    if index.numel() == 0:
        return torch.empty(0, dtype=torch.float32, device=index.device)
    blocks, where = torch.unique(index >> 2, return_inverse=True)
    return _blocks(blocks, tid, seed)[where, index & 3]
