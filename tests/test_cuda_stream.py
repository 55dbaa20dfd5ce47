"""The GPU engine's bookkeeping, on any machine: where each chunk goes in a
slot's pinned and device buffers, which jobs the staging thread runs, and
that its errors reach the caller. The CUDA runtime is stood in for by host
buffers and the CPU kernel, which takes the same arguments; the bytes then
must equal the CPU engine's. On a GPU, tests/test_grow.py compares the real
thing."""

from __future__ import annotations

import contextlib

import pytest
import torch

from test_grow import GPU_RUNS, files_bytes, odd, small, source_of  # noqa: F401  (fixtures)
from ws_convert import _ext, engine, grow

pytestmark = pytest.mark.skipif(_ext.cpu is None, reason="needs the compiled CPU kernel")


class _Stream:
    cuda_stream = 0

    def __init__(self, *args, **kwargs) -> None:
        pass

    def synchronize(self) -> None:
        pass


class _Event:
    def record(self, stream=None) -> None:
        pass

    def synchronize(self) -> None:
        pass


class _Kernel:
    """The CUDA module's entry point, run by the CPU kernel on host memory;
    it checks the alignment the device's 16-byte accesses need."""

    calls = 0
    fail_at: int | None = None

    @classmethod
    def szp(cls, args: dict, stream: int) -> None:
        cls.calls += 1
        if cls.calls == cls.fail_at:
            raise RuntimeError("CUDA error in szp_kernel launch: stand-in failure")
        assert args["out_ptr"] % 16 == 0 and args["src_ptr"] % 16 == 0
        _ext.cpu.szp(args, 1)


@pytest.fixture
def host_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Stream", _Stream)
    monkeypatch.setattr(torch.cuda, "Event", _Event)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    poison = lambda value: lambda self, n: torch.full((max(n, 1),), value, dtype=torch.uint8)  # noqa: E731
    monkeypatch.setattr(engine._CudaStream, "_pinned", poison(0xAB))
    monkeypatch.setattr(engine._CudaStream, "_device", poison(0xCD))
    monkeypatch.setattr(_ext, "cuda", _Kernel)
    monkeypatch.setattr(engine, "pick_device", lambda device: device)
    _Kernel.calls, _Kernel.fail_at = 0, None
    return _Kernel


@pytest.mark.parametrize("which,width,kw", GPU_RUNS, ids=str)
def test_gpu_bookkeeping_gives_the_cpu_bytes(host_cuda, request, tmp_path, which, width, kw):
    src = source_of(request, which)
    cpu = grow(src, width, out=tmp_path / "cpu", device="cpu", **kw)
    gpu = grow(src, width, out=tmp_path / "gpu", device="cuda:0", **kw)
    assert gpu.device == "cuda:0" and host_cuda.calls > 0
    assert files_bytes(cpu.out) == files_bytes(gpu.out)


def test_a_failure_on_the_staging_thread_fails_the_grow(host_cuda, small, tmp_path):
    host_cuda.fail_at = 5
    with pytest.raises(RuntimeError, match="stand-in failure"):
        grow(small[0], 128, out=tmp_path / "out", device="cuda:0", chunk_bytes=5000)
    assert not (tmp_path / "out").exists()
