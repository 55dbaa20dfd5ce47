"""The compiled CPU path against the PyTorch reference, bit for bit."""

import random

import pytest
import torch

from helpers import DTYPES, random_case, random_operator_case, random_tensor, same_bits
from ws_convert import Constant, Normal, Segment, _ext, pad_maps, szp, tensor_id
from ws_convert.op import NoiseSegment

pytestmark = pytest.mark.skipif(_ext.cpu is None, reason="CPU extension not built")


def both(src, out_shape, maps, **kw):
    got = szp(src, out_shape, maps, backend="cpu", **kw)
    want = szp(src, out_shape, maps, backend="reference", **kw)
    return got, want


@pytest.mark.parametrize("case", range(60))
@pytest.mark.parametrize("src_dtype", DTYPES)
def test_random_cases_match_reference(case, src_dtype):
    rng = random.Random(case * 7919 + DTYPES.index(src_dtype))
    src, out_shape, maps = random_case(rng, src_dtype, tiny=case % 3 == 0)
    out_dtype = rng.choice(DTYPES)
    init = (Normal(rng.choice([0.02, 1.0, 0.37])) if rng.random() < 0.7
            else Constant(rng.choice([0.0, 1.0]), on_source=rng.choice([None, 0.0, 0.25])))
    kw = dict(shrink=rng.choice([0.4, 1.0, 0.0, 0.73]), perturb=rng.choice([1.0, 0.5, 0.0]),
              init=init, seed=rng.randrange(2**64), tid=rng.randrange(2**64), out_dtype=out_dtype,
              threads=rng.choice([1, 2]))
    got, want = both(src, out_shape, maps, **kw)
    assert same_bits(got, want), (src.shape, out_shape, maps, kw)


@pytest.mark.parametrize("case", range(40))
@pytest.mark.parametrize("src_dtype", DTYPES)
def test_operator_maps_match_reference(case, src_dtype):
    """Source positions landing several times, per-segment scales, noise drawn
    elsewhere with signs: the kernel computes the reference's bits."""
    rng = random.Random(case * 104729 + DTYPES.index(src_dtype))
    src, out_shape, maps, noise_maps = random_operator_case(rng, src_dtype)
    kw = dict(shrink=rng.choice([0.4, 1.0, 0.73]), perturb=rng.choice([1.0, 0.5]),
              init=Normal(rng.choice([0.02, 1.0])), seed=rng.randrange(2**64), tid=rng.randrange(2**64),
              out_dtype=rng.choice(DTYPES), threads=rng.choice([1, 2]), noise_maps=noise_maps)
    got, want = both(src, out_shape, maps, **kw)
    assert same_bits(got, want), (src.shape, out_shape, maps, noise_maps, kw)


def test_noise_drawn_elsewhere_is_that_position_s_noise():
    """Noise segments move the stream, they do not make a new one: a paired
    block carries exactly the negated noise of its partner."""
    n = 8
    kw = dict(shrink=0.0, perturb=1.0, init=Normal(1.0), seed=5, tid=9, backend="cpu")
    own = szp(None, (3, 2 * n), [[], []], **kw)
    paired = szp(None, (3, 2 * n), [[], []], noise_maps=[[], [NoiseSegment(n, 0, n, -1)]], **kw)
    assert torch.equal(paired[:, :n], own[:, :n]) and torch.equal(paired[:, n:], -own[:, :n])
    assert torch.equal((paired[:, :n] + paired[:, n:]), torch.zeros(3, n))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", [1, 2])
def test_every_row_range_matches(dtype, threads):
    rng = random.Random(11)
    src, out_shape, maps = random_case(rng, dtype, ndim=2)
    out_shape = (9, *out_shape[1:])
    src = src[: min(len(src), 6)].contiguous()
    maps = [[Segment(0, 0, len(src))], maps[1]]
    whole = szp(src, out_shape, maps, tid=3, backend="reference")
    for r0 in range(out_shape[0] + 1):
        for r1 in range(r0, out_shape[0] + 1):
            part = szp(src, out_shape, maps, tid=3, rows=(r0, r1), threads=threads, backend="cpu")
            assert same_bits(part, whole[r0:r1]), (r0, r1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_chunk_edges_and_thread_counts(dtype):
    """Tensors spanning many 4096-element kernel chunks, cut at odd rows."""
    src = random_tensor((29, 257), dtype, 5)
    out_shape = (61, 509)
    maps = [[Segment(3, 0, 29)], [Segment(0, 0, 100), Segment(300, 100, 157)]]
    want = szp(src, out_shape, maps, tid=tensor_id("w"), seed=42, backend="reference")
    for threads in (1, 2, 3):
        got = szp(src, out_shape, maps, tid=tensor_id("w"), seed=42, threads=threads, backend="cpu")
        assert same_bits(got, want)
    pieces = [(0, 1), (1, 9), (9, 17), (17, 40), (40, 61)]
    out = torch.empty(out_shape, dtype=dtype)
    for r0, r1 in pieces:
        szp(src, out_shape, maps, tid=tensor_id("w"), seed=42, rows=(r0, r1), out=out[r0:r1], backend="cpu")
    assert same_bits(out, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_streamed_source_rows(dtype):
    """Output rows computed from only the source rows they need."""
    src = random_tensor((40, 33), dtype, 6)
    out_shape = (80, 50)
    maps = pad_maps(src.shape)
    want = szp(src, out_shape, maps, tid=1, backend="reference")
    for r0, r1 in [(0, 13), (13, 40), (40, 80), (5, 6)]:
        s0, s1 = min(r0, 40), min(r1, 40)
        got = szp(src[s0:s1], out_shape, maps, tid=1, rows=(r0, r1), src_shape=src.shape,
                  src_row_start=s0, backend="cpu")
        ref = szp(src[s0:s1], out_shape, maps, tid=1, rows=(r0, r1), src_shape=src.shape,
                  src_row_start=s0, backend="reference")
        assert same_bits(got, want[r0:r1])
        assert same_bits(ref, want[r0:r1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_shrink_one_perturb_zero_is_exact_zero_pad(dtype, backend):
    src = random_tensor((7, 5, 3), dtype, 8)
    out = szp(src, (9, 11, 4), pad_maps(src.shape), shrink=1.0, perturb=0.0, tid=2, backend=backend)
    want = torch.zeros((9, 11, 4), dtype=dtype)
    want[:7, :5, :3] = src
    assert same_bits(out, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_shrink_zero_is_pure_init(dtype):
    src = random_tensor((6, 10), dtype, 9)
    grown = szp(src, (12, 20), pad_maps(src.shape), shrink=0.0, tid=4, seed=3, backend="cpu")
    fresh = szp(None, (12, 20), [[], []], tid=4, seed=3, out_dtype=dtype, backend="cpu")
    assert same_bits(grown, fresh)
    assert fresh.float().std().item() == pytest.approx(0.02, rel=0.2)
    ones = szp(src, (12, 20), pad_maps(src.shape), shrink=0.0, init=Constant(1.0), tid=4, backend="cpu")
    assert torch.equal(ones.float(), torch.ones(12, 20))


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_constant_on_source_copies_old_units(backend, dtype):
    """Norm gains copied: shrink 1 and nothing added over the source, the
    constant init only on new units; chunked rows give the same bytes."""
    src = (1.0 + 0.1 * random_tensor((5, 7), torch.float32, 12)).to(dtype)
    maps = [[Segment(0, 0, 3), Segment(6, 3, 2)], [Segment(0, 0, 7)]]
    kw = dict(shrink=1.0, init=Constant(1.0, on_source=0.0), tid=tensor_id("g"), backend=backend)
    out = szp(src, (9, 11), maps, **kw)
    landed = torch.zeros(9, 11, dtype=torch.bool)
    landed[[0, 1, 2, 6, 7], :7] = True
    assert torch.equal(out[landed], src.reshape(-1))
    assert torch.equal(out[~landed].float(), torch.ones(int((~landed).sum())))
    parts = [szp(src, (9, 11), maps, rows=(a, b), **kw) for a, b in ((0, 2), (2, 7), (7, 9))]
    assert same_bits(torch.cat(parts), out)
    shrunk = szp(src, (9, 11), maps, **{**kw, "shrink": 0.4, "init": Constant(1.0)})
    assert torch.equal(shrunk[landed].float(), (0.4 * src.float() + 1).to(dtype).float().reshape(-1))


def test_noise_is_added_over_the_copied_block():
    src = random_tensor((4, 4), torch.float32, 10)
    out = szp(src, (8, 8), pad_maps(src.shape), shrink=0.4, tid=5, backend="cpu")
    noise_only = szp(None, (8, 8), [[], []], tid=5, out_dtype=torch.float32, backend="cpu")
    assert torch.equal(out[4:, :], noise_only[4:, :])
    assert not torch.equal(out[:4, :4], (0.4 * src).float())
    assert torch.allclose(out[:4, :4], 0.4 * src + noise_only[:4, :4], atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_special_values(dtype):
    """Inf, NaN, subnormals and rounding ties come out the same on both paths."""
    values = torch.tensor([float("inf"), float("-inf"), float("nan"), 1e-40, -1e-42, 65519.0,
                           65520.0, 1e5, 6e-8, 2.0**-24 * 1.5, 0.0, -0.0, 3.0e38, -1.0])
    src = values.to(dtype)
    for out_dtype in DTYPES:
        for shrink, perturb in ((1.0, 0.0), (0.4, 1.0), (1.0, 1e-3)):
            got, want = both(src, (len(values) + 3,), pad_maps(src.shape), shrink=shrink, perturb=perturb,
                             init=Normal(1.0), tid=6, out_dtype=out_dtype)
            assert same_bits(got, want), (out_dtype, shrink, perturb)


def test_rounding_matches_torch_on_random_bits():
    """float32 -> bf16/fp16 in the kernel is round-to-nearest-even like torch."""
    bits = torch.randint(-2**31, 2**31, (200_000,), dtype=torch.int64).to(torch.int32)
    x = bits.view(torch.float32)
    x = torch.where(torch.isnan(x), torch.zeros_like(x), x)  # NaN payloads: canonical, tested above
    for dtype in (torch.bfloat16, torch.float16):
        got = szp(x, x.shape, pad_maps(x.shape), shrink=1.0, perturb=0.0, tid=0, out_dtype=dtype, backend="cpu")
        assert same_bits(got, x.to(dtype))


def test_zero_dim_and_empty_tensors():
    for backend in ("cpu", "reference"):
        scalar = torch.tensor(1.5)
        out = szp(scalar, (), [], shrink=1.0, perturb=0.0, tid=1, backend=backend)
        assert out.shape == () and out.item() == 1.5
        empty = szp(torch.empty(0, 4), (0, 8), [[], [Segment(0, 0, 4)]], tid=1, backend=backend)
        assert empty.shape == (0, 8)
        grown = szp(torch.empty(0, 4), (3, 8), [[], [Segment(0, 0, 4)]], tid=1, backend=backend)
        assert same_bits(grown, szp(None, (3, 8), [[], []], tid=1, backend="reference"))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_a_batch_of_calls_matches_each_alone(threads):
    """`run` shares the chunks of a Batch of many calls (tiny, odd and
    multi-chunk ones, pure inits among them) over threads, each call made
    from a Template shared by the chunks of its tensor: the bytes of each
    tensor are those of the reference."""
    from ws_convert.op import _buffer
    from ws_convert.szp_spec import kernel_args

    rng = random.Random(threads)
    cases, batch = [], _ext.cpu.Batch()
    for i in range(12):
        src, out_shape, maps = random_case(rng, rng.choice(DTYPES), tiny=i % 2 == 0)
        if i % 5 == 4:
            src, maps = None, [[] for _ in out_shape]
        init = Normal(0.02) if i % 3 else Constant(1.0, on_source=0.0)
        out = torch.empty(out_shape, dtype=rng.choice(DTYPES))
        kw = dict(shrink=0.5, perturb=1.0, init=init, seed=7, tid=tensor_id(f"t{i}"))
        rows = out_shape[0] if out_shape else 1
        args = kernel_args(_buffer(out), out_shape or (1,), (0, rows), None if src is None else _buffer(src),
                           None if src is None else (src.shape or (1,)), 0,
                           maps if out_shape else [[Segment(0, 0, 1)] if src is not None else []], **kw)
        template = _ext.cpu.Template(args, args["src_ptr"] != 0)
        row_bytes = out.element_size() * out.numel() // rows if rows else 0
        for r0, r1 in ((0, rows // 2), (rows // 2, rows)):  # two chunks of one template
            batch.add(template, args["out_ptr"] + r0 * row_bytes, (r1 - r0) * row_bytes, r0, r1, args["src_ptr"],
                      args["src_nbytes"], 0, kw["tid"])
        cases.append((src, out_shape, maps, out, kw))
    assert len(batch) == 24
    _ext.cpu.run(batch, threads)
    for src, out_shape, maps, out, kw in cases:
        want = szp(src, out_shape, maps, out_dtype=out.dtype, backend="reference", **kw)
        assert same_bits(out, want), (out_shape, maps)
