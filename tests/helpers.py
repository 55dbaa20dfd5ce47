"""Shared test helpers: random SZP cases for the op tests, a run stopped and resumed for the trainer
tests, and two processes under torchrun."""

from __future__ import annotations

import random

import torch

from ws_convert import Segment
from ws_convert.op import NoiseSegment

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def random_axis_map(rng: random.Random, n_src: int, n_out: int) -> list[Segment]:
    """Cut the source axis into pieces, shuffle them and drop them into the
    output axis with random gaps: heads, fused q|k|v and rotary halves are all
    special cases of this."""
    if n_src == 0:
        return []
    cuts = sorted(rng.sample(range(1, n_src), min(rng.randint(0, 4), n_src - 1)))
    bounds = [0, *cuts, n_src]
    pieces = [(bounds[i], bounds[i + 1] - bounds[i]) for i in range(len(bounds) - 1)]
    if rng.random() < 0.5:
        rng.shuffle(pieces)
    slack = n_out - n_src
    gaps = sorted(rng.randint(0, slack) for _ in pieces)
    segs, pos, used = [], 0, 0
    for (src, length), gap in zip(pieces, gaps):
        pos += gap - used
        used = gap
        segs.append(Segment(pos, src, length))
        pos += length
    return segs


def random_copy_map(rng: random.Random, n_src: int, n_out: int) -> list[Segment]:
    """Output runs that copy random source runs (a source position may land
    several times), each with its own scale, with gaps: what operators that
    copy units (HyperCloning's tiling, Net2Net's random picks) describe."""
    segs, pos = [], 0
    while n_src and pos < n_out:
        length = rng.randint(1, min(n_src, n_out - pos))
        if rng.random() < 0.8:
            segs.append(Segment(pos, rng.randint(0, n_src - length), length, rng.choice([1.0, 0.5, 1 / 3, -2.0, 0.1])))
        pos += length + rng.randint(0, 2)
    return segs


def random_noise_map(rng: random.Random, n_out: int) -> list[NoiseSegment]:
    """Output runs whose noise is drawn elsewhere on the axis, times -1, 0 or 1."""
    segs, pos = [], 0
    while pos < n_out:
        length = rng.randint(1, n_out - pos)
        if rng.random() < 0.7:
            segs.append(NoiseSegment(pos, rng.randint(0, n_out - length), length, rng.choice([1, -1, 0])))
        pos += length + rng.randint(0, 2)
    return segs


def random_operator_case(rng: random.Random, dtype: torch.dtype, ndim: int | None = None):
    """(src, out_shape, maps, noise_maps) of an operator that copies units."""
    src, out_shape, _ = random_case(rng, dtype, ndim)
    maps = [random_copy_map(rng, s, o) for s, o in zip(src.shape, out_shape)]
    return src, out_shape, maps, [random_noise_map(rng, o) for o in out_shape]


def random_shape(rng: random.Random, ndim: int, tiny: bool = False) -> tuple[int, ...]:
    hi = 4 if tiny else 40
    return tuple(rng.randint(1, hi) for _ in range(ndim))


def random_case(rng: random.Random, dtype: torch.dtype, ndim: int | None = None,
                tiny: bool = False):
    """(src, out_shape, maps) with every output axis at least the source's."""
    ndim = ndim or rng.randint(1, 3)
    src_shape = random_shape(rng, ndim, tiny)
    out_shape = tuple(d + rng.randint(0, d + 3) for d in src_shape)
    maps = [random_axis_map(rng, s, o) for s, o in zip(src_shape, out_shape)]
    src = random_tensor(src_shape, dtype, rng.randrange(2**31))
    return src, out_shape, maps


def random_tensor(shape, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Normal values with a few exact zeros, negative zeros and large values."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g) * 2.0
    flat = t.view(-1)
    if flat.numel() >= 8:
        flat[0] = 0.0
        flat[1] = -0.0
        flat[2] = 300.0
    return t.to(dtype)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def stopped_then_resumed(train, cfg, at: int) -> list[dict]:
    """Train `cfg`, stopped by an exception after step `at`, then run again
    into the same --out; the log of the resumed run."""
    import pytest

    class Stop(Exception):
        pass

    def interrupt(step, total, record):
        if step == at:
            raise Stop

    with pytest.raises(Stop):
        train(cfg, progress=interrupt)
    return train(cfg)["log"]


def torchrun(*args: str):
    """`args` (a module's `-m NAME ...` or a script) in two CPU processes (gloo) under torchrun,
    importing this checkout whatever is installed; the completed process."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           *args], env={**os.environ, "OMP_NUM_THREADS": "1",
                                        "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                          capture_output=True, text=True, timeout=300)
