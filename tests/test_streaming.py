"""The per-tensor work done while data moves, batched over many tensors:
the source hasher reading blocks of many tensors, the writer taking a
slot's chunks in one call. Batching must change no byte and no check."""

from __future__ import annotations

import math
import os

import pytest
import torch
import xxhash
from safetensors.torch import load_file, save_file

from io_helpers import all_dtype_tensors, planned
from ws_convert import _ext, provenance
from ws_convert.errors import CheckpointError, OutputError
from ws_convert.provenance import SourceHasher
from ws_convert.reader import open_checkpoint, tensor_bytes
from ws_convert.writer import CheckpointWriter


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


def chunk_bytes(tensors, chunks):
    """The chunks' bytes back to back, as a stream's slot holds them."""
    return memoryview(b"".join(bytes(tensor_bytes(tensors[n].contiguous())[r * row:r * row + size])
                               for n, r, size in chunks for row in [row_size(tensors[n])]))


def row_size(t):
    return t.numel() * t.element_size() // (t.shape[0] if t.dim() else 1) if t.numel() else 0


def test_chunks_given_together_write_the_bytes_written_one_by_one(tmp_path):
    tensors = all_dtype_tensors()
    with CheckpointWriter(tmp_path / "one", planned(tensors), max_shard_size=200) as w:
        for name, t in tensors.items():
            w.write(name, t.contiguous())
    chunks = [(n, 0, t.numel() * t.element_size()) for n, t in tensors.items()]
    two_rows = next(n for n, t in tensors.items() if t.dim() and t.shape[0] > 2)
    whole = [c for c in chunks if c[0] != two_rows]
    row = row_size(tensors[two_rows])
    # in plan order (mostly back to back in the shards), reversed, and one tensor split over two calls
    slots = [whole[:6] + [(two_rows, 1, row * (tensors[two_rows].shape[0] - 1))],
             whole[6:][::-1] + [(two_rows, 0, row)]]
    with CheckpointWriter(tmp_path / "slots", planned(tensors), max_shard_size=200) as w:
        for slot in slots:
            w.write_chunks(chunk_bytes(tensors, slot), slot)
    assert len(list((tmp_path / "one").iterdir())) > 3  # several shards
    assert {p.name: p.read_bytes() for p in (tmp_path / "one").iterdir()} == \
           {p.name: p.read_bytes() for p in (tmp_path / "slots").iterdir()}


def test_a_refused_call_writes_and_records_nothing(tmp_path):
    tensors = {"a": torch.arange(8.0).reshape(4, 2), "b": torch.ones(3)}
    with CheckpointWriter(tmp_path / "out", planned(tensors)) as w:
        overlapping = [("a", 0, 16), ("b", 0, 12), ("a", 1, 8)]
        with pytest.raises(OutputError, match="'a': bytes \\[8, 16\\) written twice"):
            w.write_chunks(chunk_bytes(tensors, overlapping), overlapping)
        whole = [("a", 0, 32), ("b", 0, 12)]
        with pytest.raises(OutputError, match="40 bytes given for chunks of 44"):
            w.write_chunks(memoryview(bytes(40)), whole)
        assert sorted(w.missing()) == ["a", "b"]
        w.write_chunks(chunk_bytes(tensors, whole), whole)
    assert torch.equal(load_file(tmp_path / "out" / "model.safetensors")["a"], tensors["a"])


def test_cached_knobs_keep_the_sign_of_zero():
    from ws_convert.szp_spec import Buffer, Constant, kernel_args

    def knobs(shrink, value):
        args = kernel_args(Buffer(0, 4, "float32"), (1,), (0, 1), None, None, 0, [[]], shrink=shrink, perturb=1.0,
                           init=Constant(value), seed=0, tid=0)
        return math.copysign(1, args["shrink"]), math.copysign(1, args["constant"])

    assert knobs(0.0, 0.0) == (1, 1)
    assert knobs(-0.0, -0.0) == (-1, -1)  # not the cached +0.0 of the call before


def _many_small(tmp_path, count=300):
    """A generic checkpoint of `count` small tensors in 3 shards, every value random."""
    import json

    g = torch.Generator().manual_seed(1)
    tensors = {f"layers.{i}.weight": torch.randn((6, 6) if i % 3 else (6,), generator=g).to(torch.bfloat16)
               for i in range(count)}
    names = list(tensors)
    src = tmp_path / "src"
    src.mkdir()
    weight_map = {}
    for k in range(3):
        part = names[k::3]
        save_file({n: tensors[n] for n in part}, src / f"s{k}.safetensors")
        weight_map.update(dict.fromkeys(part, f"s{k}.safetensors"))
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (src / "config.json").write_text(json.dumps({"hidden_size": 6, "num_attention_heads": 1}))
    return src


@pytest.mark.skipif(_ext.cpu is None, reason="the compiled CPU kernel is not built")
def test_source_reads_in_the_kernel_batch_give_the_bytes_of_the_plain_path(tmp_path, monkeypatch):
    """The compiled path reads a slot's sources itself, adjacent ones as one
    read; the torch path reads each through the checkpoint. Same bytes, for
    slots of one tensor and slots of all, and for a limit of 2 files a batch."""
    from ws_convert import engine
    from ws_convert.engine import grow

    src = _many_small(tmp_path)
    outputs = {}
    for name, chunk, files, compiled in (("torch", 1 << 20, 16, False), ("one", 1, 16, True),
                                         ("all", 1 << 20, 16, True), ("two-files", 1 << 20, 2, True)):
        monkeypatch.setattr(engine, "BATCH_FILES", files)
        monkeypatch.setattr(engine._ext, "cpu", _ext.cpu if compiled else None)
        grow(src, 12, out=tmp_path / name, arch="generic", chunk_bytes=chunk, device="cpu")
        outputs[name] = (tmp_path / name / "model.safetensors").read_bytes()
    assert outputs["one"] == outputs["torch"] and outputs["all"] == outputs["torch"]
    assert outputs["two-files"] == outputs["torch"]


@pytest.mark.skipif(_ext.cpu is None, reason="the compiled CPU kernel is not built")
def test_a_source_cut_short_before_its_batch_reads_it_is_named(tmp_path):
    from ws_convert.engine import execute
    from ws_convert.plan import GrowthOptions, Source, make_plan

    src = _many_small(tmp_path)
    with open_checkpoint(src) as ckpt:
        plan = make_plan(Source.of(ckpt), GrowthOptions(to_width=12, arch="generic"))
        last = max((i for i in ckpt.tensors.values() if i.file.name == "s1.safetensors"), key=lambda i: i.start)
        os.truncate(last.file, last.start + 3)
        with pytest.raises(CheckpointError, match="truncated while it was read") as err:
            execute(plan, ckpt, lambda data, chunks: None)
    assert err.value.tensor == last.name and err.value.file == str(last.file)


def test_tensors_sharing_maps_but_not_dtypes_are_cut_by_their_own_rows(tmp_path):
    """The plan gives tensors of one shape the same maps whatever their dtype;
    a bfloat16 tensor's rows are half a float32 one's, so the chunks cut for
    one must not be reused for the other (a slot would overflow)."""
    import json

    from ws_convert.engine import execute, grow
    from ws_convert.plan import GrowthOptions, Source, make_plan

    g = torch.Generator().manual_seed(0)
    src = tmp_path / "src"
    src.mkdir()
    save_file({"layers.0.weight": torch.randn(64, 512, generator=g).to(torch.bfloat16)}, src / "a.safetensors")
    save_file({"layers.1.weight": torch.randn(64, 512, generator=g)}, src / "b.safetensors")
    (src / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"layers.0.weight": "a.safetensors", "layers.1.weight": "b.safetensors"}}))
    (src / "config.json").write_text(json.dumps({"hidden_size": 512, "num_attention_heads": 1}))
    chunk = 4096  # one float32 output row, two bfloat16 ones
    with open_checkpoint(src) as ckpt:
        plan = make_plan(Source.of(ckpt), GrowthOptions(to_width=1024, arch="generic"))
        first, second = sorted(plan.tensors, key=lambda t: t.name)
        assert first.maps is second.maps and first.row_bytes * 2 == second.row_bytes == chunk
        handed = []
        execute(plan, ckpt, lambda data, chunks: handed.append((data.nbytes, chunks)), chunk_bytes=chunk)
    assert handed and all(n <= chunk for n, _ in handed)
    assert sum(n for n, _ in handed) == sum(t.nbytes for t in plan.tensors)
    grow(src, 1024, out=tmp_path / "small", arch="generic", chunk_bytes=chunk)
    grow(src, 1024, out=tmp_path / "whole", arch="generic")
    small, whole = load_file(tmp_path / "small" / "model.safetensors"), load_file(tmp_path / "whole" / "model.safetensors")
    assert small.keys() == whole.keys() and all(torch.equal(small[n], whole[n]) for n in small)
