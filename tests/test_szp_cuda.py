"""The CUDA kernel against the CPU path, bit for bit (needs a GPU)."""

import random

import pytest
import torch

from helpers import DTYPES, random_case, random_operator_case, random_tensor, same_bits
from ws_convert import Constant, Normal, Segment, _ext, pad_maps, szp, tensor_id

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(_ext.cuda is None, reason="CUDA extension not built"),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
]


def on_gpu_and_cpu(src, out_shape, maps, **kw):
    gpu = szp(None if src is None else src.cuda(), out_shape, maps, backend="cuda",
              device="cuda", **kw)
    torch.cuda.synchronize()
    cpu_backend = "cpu" if _ext.cpu is not None else "reference"
    return gpu.cpu(), szp(src, out_shape, maps, backend=cpu_backend, **kw)


@pytest.mark.parametrize("case", range(40))
@pytest.mark.parametrize("src_dtype", DTYPES)
def test_operator_maps_match_cpu(case, src_dtype):
    """Source positions landing several times, per-segment scales, noise drawn
    elsewhere with signs, constant inits, row ranges: the CPU's bits."""
    rng = random.Random(case * 7 + DTYPES.index(src_dtype))
    src, out_shape, maps, noise_maps = random_operator_case(rng, src_dtype)
    init = Normal(rng.choice([0.02, 1.0])) if rng.random() < 0.8 else Constant(1.0, on_source=0.25)
    r0 = rng.randint(0, out_shape[0])
    kw = dict(shrink=rng.choice([0.4, 1.0]), perturb=rng.choice([1.0, 0.5]), init=init, seed=rng.randrange(2**64),
              tid=rng.randrange(2**64), out_dtype=rng.choice(DTYPES), rows=(r0, rng.randint(r0, out_shape[0])),
              noise_maps=noise_maps if rng.random() < 0.8 else None)
    gpu, cpu = on_gpu_and_cpu(src, out_shape, maps, **kw)
    assert same_bits(gpu, cpu), (src.shape, out_shape, maps, kw)


@pytest.mark.parametrize("case", range(40))
@pytest.mark.parametrize("src_dtype", DTYPES)
def test_random_cases_match_cpu(case, src_dtype):
    rng = random.Random(case * 104729 + DTYPES.index(src_dtype))
    src, out_shape, maps = random_case(rng, src_dtype, tiny=case % 3 == 0)
    init = (Normal(rng.choice([0.02, 1.0])) if rng.random() < 0.7
            else Constant(rng.choice([0.0, 1.0]), on_source=rng.choice([None, 0.0, 0.25])))
    r0 = rng.randint(0, out_shape[0])
    r1 = rng.randint(r0, out_shape[0])
    kw = dict(shrink=rng.choice([0.4, 1.0, 0.0]), perturb=rng.choice([1.0, 0.0]), init=init,
              seed=rng.randrange(2**64), tid=rng.randrange(2**64), out_dtype=rng.choice(DTYPES),
              rows=(r0, r1))
    gpu, cpu = on_gpu_and_cpu(src, out_shape, maps, **kw)
    assert same_bits(gpu, cpu), (src.shape, out_shape, maps, kw)


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_tensor_and_unaligned_ranges(dtype):
    src = random_tensor((1000, 777), dtype, 1)
    out_shape = (2001, 1555)
    maps = [[Segment(0, 0, 1000)], [Segment(0, 0, 400), Segment(800, 400, 377)]]
    gpu, cpu = on_gpu_and_cpu(src, out_shape, maps, tid=tensor_id("big"), seed=7)
    assert same_bits(gpu, cpu)
    for rows in [(1, 2), (3, 700), (999, 2001)]:  # starts not on a 16-byte boundary
        g, c = on_gpu_and_cpu(src, out_shape, maps, tid=tensor_id("big"), seed=7, rows=rows)
        assert same_bits(g, c)
        assert same_bits(g, cpu[rows[0]:rows[1]])


def test_runs_on_the_current_stream():
    src = random_tensor((64, 64), torch.bfloat16, 2).cuda()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        out = szp(src, (128, 128), pad_maps(src.shape), tid=9, backend="cuda")
    stream.synchronize()
    want = szp(src.cpu(), (128, 128), pad_maps(src.shape), tid=9, backend="reference")
    assert same_bits(out.cpu(), want)
