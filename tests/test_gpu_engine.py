"""The GPU engine writes the CPU engine's bytes.

On a GPU the real thing is compared. On any machine its bookkeeping is: where
each chunk goes in a slot's pinned and device buffers, which jobs the staging
thread runs, and that their errors reach the caller, with the CUDA runtime
stood in for by host buffers and the CPU kernel (which takes the same
arguments)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch

from models import tiny
from ws_convert import _ext, engine, grow

pytestmark = pytest.mark.skipif(_ext.cpu is None, reason="needs the compiled CPU kernel")


def files_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """"small": a bf16 Llama of width 64 with grouped kv heads, in two shards.
    "odd": a float32 Llama of width 30, 3 heads of 10 and an ffn of 60: rows
    of 60 and 120 bytes, so chunks sharing a buffer sit at offsets that are
    no multiple of 16 unless the engine aligns them."""
    root = tmp_path_factory.mktemp("src")
    torch.manual_seed(0)
    cls, config = tiny("llama", width=64, heads=4, kv_heads=2, layers=2)
    cls(config).to(torch.bfloat16).save_pretrained(root / "small", max_shard_size="100KB")
    cls, config = tiny("llama", width=30, heads=3, kv_heads=3, layers=2)
    cls(config).save_pretrained(root / "odd")
    return {"small": root / "small", "odd": root / "odd"}


# (source, width, options): chunk sizes that split rows, share slots among many small
# tensors or hold a whole tensor; source dtypes other than the output's (a float32
# source staged for a bfloat16 output takes more bytes than the output); copies.
RUNS = [("small", 128, dict(chunk_bytes=5000)), ("small", 128, dict(chunk_bytes=1000)),
        ("small", 128, dict(chunk_bytes=77777)), ("small", 128, dict()),
        ("small", 128, dict(dtype="float32", chunk_bytes=3000)), ("small", 128, dict(to_depth=4, chunk_bytes=9000)),
        ("odd", 60, dict(dtype="bfloat16", chunk_bytes=3000)), ("odd", 60, dict(chunk_bytes=50000)),
        ("odd", 60, dict(dtype="float16", chunk_bytes=700)),
        ("small", 128, dict(method="hyperclone", chunk_bytes=3000)),
        ("odd", 60, dict(method="hyperclone", dtype="bfloat16", to_depth=3, depth_policy="identity", chunk_bytes=700)),
        ("small", 128, dict(method="net2net", chunk_bytes=2000)),
        ("odd", 60, dict(method="net2net", seed=7, chunk_bytes=50000))]


def same_bytes_on_both(src: Path, width: int, kw: dict, tmp_path: Path) -> None:
    cpu = grow(src, width, out=tmp_path / "cpu", device="cpu", **kw)
    gpu = grow(src, width, out=tmp_path / "gpu", device="cuda:0", **kw)
    assert gpu.device == "cuda:0"
    assert files_bytes(cpu.out) == files_bytes(gpu.out)


@pytest.mark.cuda
@pytest.mark.skipif(_ext.cuda is None or not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("which,width,kw", RUNS, ids=str)
def test_gpu_and_cpu_write_the_same_bytes(sources, tmp_path, which, width, kw):
    same_bytes_on_both(sources[which], width, kw, tmp_path)


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


@pytest.mark.parametrize("which,width,kw", RUNS, ids=str)
def test_gpu_bookkeeping_gives_the_cpu_bytes(host_cuda, sources, tmp_path, which, width, kw):
    same_bytes_on_both(sources[which], width, kw, tmp_path)
    assert host_cuda.calls > 0


def test_a_failure_on_the_staging_thread_fails_the_grow(host_cuda, sources, tmp_path):
    host_cuda.fail_at = 5
    with pytest.raises(RuntimeError, match="stand-in failure"):
        grow(sources["small"], 128, out=tmp_path / "out", device="cuda:0", chunk_bytes=5000)
    assert not (tmp_path / "out").exists()
