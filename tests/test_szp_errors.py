"""Bad arguments raise a clear exception on every path; nothing crashes."""

import pytest
import torch

from ws_convert import Segment, _ext, pad_maps, szp

BACKENDS = ["reference"] + (["cpu"] if _ext.cpu is not None else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call,message", [
    (lambda b: szp(torch.zeros(2, 2, dtype=torch.int64), (4, 4), pad_maps((2, 2)), tid=0, backend=b),
     "dtype torch.int64"),
    (lambda b: szp(torch.randn(4, 4).t()[:2], (4, 4), pad_maps((2, 4)), tid=0, backend=b),
     "contiguous"),
    (lambda b: szp(torch.randn(3, 3), (4, 4), [[Segment(0, 0, 3)], [Segment(2, 0, 3)]], tid=0, backend=b),
     "does not fit"),
    (lambda b: szp(torch.randn(3, 3), (8, 8), [[Segment(0, 0, 3)], [Segment(0, 0, 3), Segment(2, 0, 2)]],
                   tid=0, backend=b), "overlap"),
    (lambda b: szp(torch.randn(3, 3), (8, 8), [[Segment(0, 0, 3)]], tid=0, backend=b),
     "one segment list per output axis"),
    (lambda b: szp(torch.randn(3, 3, 1), (8, 8), [[], []], tid=0, backend=b), "axes"),
    (lambda b: szp(torch.randn(3, 3), (8, 8), pad_maps((3, 3)), rows=(2, 9), tid=0, backend=b),
     "row range"),
    (lambda b: szp(None, (8, 8), pad_maps((3, 3)), tid=0, backend=b), "no source"),
    (lambda b: szp(torch.randn(3, 3), (8, 8), pad_maps((3, 3)), out=torch.empty(8, 7), tid=0, backend=b),
     "shape"),
    (lambda b: szp(torch.randn(3, 3), (8, 8), pad_maps((3, 3)), out=torch.empty(8, 8, dtype=torch.float64),
                   tid=0, backend=b), "dtype torch.float64"),
    (lambda b: szp(torch.randn(2, 3), (8, 8), pad_maps((5, 3)), src_shape=(5, 3), tid=0, backend=b),
     "outside the source buffer"),
])
def test_bad_arguments(backend, call, message):
    with pytest.raises(ValueError, match=message):
        call(backend)


def test_unknown_backend_and_device_mismatch():
    with pytest.raises(ValueError, match="backend"):
        szp(None, (4,), [[]], tid=0, backend="tpu")
    with pytest.raises(ValueError, match="cannot run"):
        szp(None, (4,), [[]], tid=0, backend="cuda")


@pytest.mark.skipif(_ext.cpu is None, reason="CPU extension not built")
def test_raw_kernel_rejects_inconsistent_buffers():
    """The compiled entry point checks sizes itself; it never trusts Python."""
    out = torch.empty(4, 4)
    args = dict(out_ptr=out.data_ptr(), out_nbytes=out.numel() * 4, out_dtype="float32",
                out_shape=[4, 4], row_start=0, row_stop=4, src_ptr=0, src_nbytes=0,
                src_dtype="float32", src_shape=[], src_row_start=0, maps=[[], []], noise_maps=[[], []], shrink=0.4,
                noise_scale=0.02, constant=0.0, constant_src=0.0, noise=True, seed=0, tid=0)
    _ext.cpu.szp(args, 1)  # the valid call works
    for key, value, message in [("out_nbytes", 60, "bytes"), ("out_dtype", "int8", "unsupported dtype"),
                                ("row_stop", 5, "row range"), ("out_shape", [], "at least one axis"),
                                ("maps", [[(0, 0, 9)], []], "no source"),
                                ("noise_maps", [[(0, 1, 4, 1)], []], "noise segment"),
                                ("noise_maps", [[(0, 0, 2, 2)], []], "sign other than"),
                                ("noise_maps", [[(0, 0, 2, 1), (1, 0, 1, 1)], []], "noise segments overlap"),
                                ("noise_maps", [[]], "one noise segment list per output axis")]:
        with pytest.raises(ValueError, match=message):
            _ext.cpu.szp({**args, key: value}, 1)
    src = torch.randn(2, 2)
    with pytest.raises(ValueError, match="whole number of source rows"):
        _ext.cpu.szp({**args, "src_ptr": src.data_ptr(), "src_nbytes": 12, "src_shape": [2, 2],
                      "maps": [[(0, 0, 2)], [(0, 0, 2)]]}, 1)
    with pytest.raises(ValueError, match="unknown argument"):
        _ext.cpu.szp({**args, "strides": 1}, 1)
    # a template checks its maps once, and each chunk's call the rest
    with pytest.raises(ValueError, match="no source"):
        _ext.cpu.Template({**args, "maps": [[(0, 0, 9)], []]}, False)
    template, batch = _ext.cpu.Template(args, False), _ext.cpu.Batch()
    for chunk, message in [((out.data_ptr(), 32, 0, 2, src.data_ptr(), 8, 0, 0), "planned without one"),
                           ((out.data_ptr(), 32, 3, 5, 0, 0, 0, 0), "row range"),
                           ((out.data_ptr(), 16, 0, 2, 0, 0, 0, 0), "bytes"),
                           ((0, 32, 0, 2, 0, 0, 0, 0), "output buffer is null")]:
        with pytest.raises(ValueError, match=message):
            batch.add(template, *chunk)
    sourced = _ext.cpu.Template({**args, "src_shape": [2, 2], "maps": [[(0, 0, 2)], [(0, 0, 2)]]}, True)
    with pytest.raises(ValueError, match="source buffer is null"):
        batch.add(sourced, out.data_ptr(), 64, 0, 4, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="outside the source buffer"):
        batch.add(sourced, out.data_ptr(), 64, 0, 4, src.data_ptr(), 8, 0, 0)  # one row held, two read
    assert len(batch) == 0  # a refused call is not added
    with pytest.raises(ValueError, match="missing argument"):
        _ext.cpu.szp({k: v for k, v in args.items() if k != "seed"}, 1)
