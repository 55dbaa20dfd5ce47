"""The noise stream: Philox known answers, constants shared with the kernels,
and the statistics of the normals it makes."""

import math

import pytest
import torch

from ws_convert import Normal, _ext, szp, tensor_id
from ws_convert import noise

# Random123's published known-answer vectors for Philox4x32-10.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

needs_cpu_ext = pytest.mark.skipif(_ext.cpu is None, reason="CPU extension not built")


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_reference_philox_known_answers(counter, key, expected):
    out = noise.philox4x32_10([torch.tensor([c], dtype=torch.int64) for c in counter], key)
    assert tuple(int(x) for x in out) == expected


@needs_cpu_ext
@pytest.mark.parametrize("counter,key,expected", KAT)
def test_kernel_philox_known_answers(counter, key, expected):
    assert tuple(_ext.cpu.philox4x32_10(counter, key)) == expected


@needs_cpu_ext
def test_kernel_and_reference_share_constants():
    c = _ext.cpu.constants()
    assert c["log_p"] == [torch.tensor(v, dtype=torch.float32).item() for v in noise.LOG_P]
    assert c["sin_s"] == [torch.tensor(v, dtype=torch.float32).item() for v in noise.SIN_S]
    assert c["cos_c"] == [torch.tensor(v, dtype=torch.float32).item() for v in noise.COS_C]
    assert c["ln2"] == [torch.tensor(v, dtype=torch.float32).item() for v in noise.LN2]


def test_tensor_id_is_sha256_prefix():
    # sha256(b"model.embed_tokens.weight")[:8], little-endian
    import hashlib
    name = "model.embed_tokens.weight"
    assert tensor_id(name) == int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    assert tensor_id("a") != tensor_id("b")
    assert 0 <= tensor_id(name) < 2**64


def test_float32_routines_are_accurate():
    u = torch.rand(200_000, dtype=torch.float64).clamp(min=2**-33).to(torch.float32)
    log_err = (noise.log_f32(u).double() - u.double().log()).abs() / u.double().log().abs().clamp(min=1e-30)
    assert log_err.max() < 4e-7
    s, c = noise.sincos_2pi(u)
    angle = 2 * math.pi * u.double()
    assert (s.double() - angle.sin()).abs().max() < 3e-7
    assert (c.double() - angle.cos()).abs().max() < 3e-7


def test_stream_is_chunk_invariant():
    whole = noise.normal_stream(0, 1003, tid=5, seed=9)
    for cut in (1, 2, 3, 4, 5, 500, 1001):
        parts = torch.cat([noise.normal_stream(0, cut, 5, 9), noise.normal_stream(cut, 1003, 5, 9)])
        assert torch.equal(parts, whole)


def _draw(n: int, tid: int, seed: int = 0) -> torch.Tensor:
    """n standard normals through the fastest op there is (shrink=0, std=1)."""
    return szp(None, (n,), [[]], shrink=0.0, init=Normal(1.0), seed=seed, tid=tid,
               out_dtype=torch.float32).double()


N = 1 << 22


@pytest.fixture(scope="module")
def draw() -> torch.Tensor:
    return _draw(N, tensor_id("stats"))


def test_mean_and_std(draw):
    assert abs(draw.mean().item()) < 5 / math.sqrt(N)
    assert abs(draw.std().item() - 1) < 5 / math.sqrt(2 * N)
    for lane in range(4):  # each Box-Muller output on its own
        x = draw[lane::4]
        assert abs(x.mean().item()) < 5 / math.sqrt(len(x))
        assert abs(x.std().item() - 1) < 5 / math.sqrt(2 * len(x))


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return (a @ b / (a.norm() * b.norm())).item()


def test_no_correlation(draw):
    bound = 5 / math.sqrt(N // 4)
    for lag in (1, 2, 3, 4, 5, 8):  # neighbours, inside and across Philox blocks
        assert abs(_corr(draw[:-lag], draw[lag:])) < bound
    for i in range(4):  # lanes of one block (the pairs share a radius)
        for j in range(i + 1, 4):
            assert abs(_corr(draw[i::4], draw[j::4])) < bound
    # squared values: the two outputs of a Box-Muller pair are uncorrelated but
    # dependent; across pairs and blocks they must be independent
    sq = draw**2
    assert abs(_corr(sq[0::4], sq[2::4])) < bound
    assert abs(_corr(sq[3::4][:-1], sq[4::4])) < bound
    other_tensor = _draw(N, tensor_id("stats2"))
    other_seed = _draw(N, tensor_id("stats"), seed=1)
    assert abs(_corr(draw, other_tensor)) < 5 / math.sqrt(N)
    assert abs(_corr(draw, other_seed)) < 5 / math.sqrt(N)


def test_distribution_is_normal(draw):
    x, _ = draw.sort()
    cdf = torch.special.ndtr(x)
    i = torch.arange(1, N + 1, dtype=torch.float64)
    ks = torch.maximum(i / N - cdf, cdf - (i - 1) / N).max().item()
    assert ks * math.sqrt(N) < 1.95  # Kolmogorov-Smirnov at p = 0.001
    for t in (2.0, 3.0, 4.0):  # the tails, two-sided
        p = 2 * (1 - torch.special.ndtr(torch.tensor(t, dtype=torch.float64)).item())
        observed = (draw.abs() > t).double().mean().item()
        assert abs(observed - p) < 5 * math.sqrt(p / N) + 1 / N
    # uniforms are never 0, so the largest radius is sqrt(2 * 33 ln 2)
    assert draw.abs().max().item() <= math.sqrt(2 * 33 * math.log(2)) + 1e-6
