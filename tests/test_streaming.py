"""The per-tensor work done while data moves, batched over many tensors:
the source hasher reading blocks of many tensors, the writer taking a
slot's chunks in one call. Batching must change no byte and no check."""

from __future__ import annotations

import pytest
import torch
import xxhash
from safetensors.torch import save_file

from ws_convert import provenance
from ws_convert.errors import CheckpointError
from ws_convert.provenance import SourceHasher
from ws_convert.reader import open_checkpoint


@pytest.fixture
def mixed(tmp_path):
    """Tensors of several sizes, dtypes and ranks, 0-d and empty ones included."""
    g = torch.Generator().manual_seed(0)
    tensors = {f"t{i}": torch.randn(shape, generator=g).to(dtype) for i, (shape, dtype) in enumerate([
        ((3, 5), torch.bfloat16), ((40,), torch.float32), ((), torch.float16), ((0, 4), torch.float32),
        ((7, 3, 2), torch.bfloat16), ((1,), torch.float32), ((33, 9), torch.float16), ((2, 2), torch.float32)])}
    save_file(tensors, tmp_path / "model.safetensors")
    return tmp_path / "model.safetensors"


def reference_hashes(path) -> dict[str, str]:
    """The definition: xxh3-128 of "DTYPE [shape]\\n" followed by the tensor's bytes."""
    with open_checkpoint(path) as ckpt, open(path, "rb") as f:
        data = f.read()
        return {n: xxhash.xxh3_128(f"{i.dtype} {list(i.shape)}\n".encode() + data[i.start:i.start + i.nbytes])
                .hexdigest() for n, i in ckpt.tensors.items()}


@pytest.mark.parametrize("block", [1, 7, 64, 100, 1 << 20])
def test_hashes_do_not_depend_on_how_the_file_is_read(mixed, monkeypatch, block):
    monkeypatch.setattr(provenance, "HASH_BLOCK", block)
    with open_checkpoint(mixed) as ckpt, SourceHasher(ckpt) as hasher:
        assert hasher.result()["tensors"] == reference_hashes(mixed)


@pytest.mark.parametrize("block", [7, 1 << 20])
def test_a_file_cut_inside_any_tensor_is_refused(mixed, monkeypatch, block):
    monkeypatch.setattr(provenance, "HASH_BLOCK", block)
    with open_checkpoint(mixed) as ckpt:
        infos = sorted((i for i in ckpt.tensors.values() if i.nbytes), key=lambda i: i.start)
        for info in infos:
            with open(mixed, "r+b") as f:
                f.truncate(info.start + info.nbytes - 1)
            with SourceHasher(ckpt) as hasher, pytest.raises(CheckpointError, match=info.name):
                hasher.result()
