"""The lazy reader: what it accepts, and one clear error for what it must not."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from io_helpers import all_dtype_tensors, same_bits
from ws_convert.errors import CheckpointError
from ws_convert.reader import open_checkpoint


def test_reads_every_dtype_zero_copy(tmp_path):
    tensors = all_dtype_tensors()
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt", "k": "v"})
    with open_checkpoint(tmp_path) as ckpt:
        assert set(ckpt.tensors) == set(tensors)
        assert ckpt.metadata == {"format": "pt", "k": "v"}
        assert ckpt.config is None
        for name, t in tensors.items():
            got = ckpt.tensor(name)
            assert same_bits(got, t), name
            assert ckpt.info(name).shape == tuple(t.shape)
        big = next(n for n, t in tensors.items() if t.dim() == 2 and t.numel())
        a, b = ckpt.tensor(big), ckpt.tensor(big)
        assert a.data_ptr() == b.data_ptr()  # both views of the same mapped bytes
        assert ckpt.rows(big, 1, 3).data_ptr() == a.data_ptr() + 1 * a[0].numel() * a.element_size()
        assert same_bits(ckpt.rows(big, 1, 3), tensors[big][1:3])


def test_reads_transformers_sharded_checkpoint(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=64))
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ckpt = open_checkpoint(tmp_path)
    assert len(ckpt.files) > 1
    assert ckpt.config["n_embd"] == 32
    state = model.state_dict()
    for name, info in ckpt.tensors.items():
        assert same_bits(ckpt.tensor(name), state[name])
    # the index path itself opens the same checkpoint
    assert set(open_checkpoint(tmp_path / "model.safetensors.index.json").tensors) == set(ckpt.tensors)


def write_raw(path: Path, header: object, data: bytes = b"", raw_header: bytes | None = None) -> Path:
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    return path


GOOD = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}


@pytest.mark.parametrize("header,data,raw,message,tensor", [
    (GOOD, b"\0" * 12, None, None, None),
    ({**GOOD, "b": {"dtype": "Q8", "shape": [1], "data_offsets": [8, 12]}}, b"\0" * 12, None, "unknown", "b"),
    ({**GOOD, "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 12]}}, b"\0" * 12, None, "needs 8 bytes", "b"),
    ({**GOOD, "b": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]}}, b"\0" * 16, None, "gap", "b"),
    ({**GOOD, "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 12, None, "overlaps", "b"),
    (GOOD, b"\0" * 10, None, "cover 12 bytes", None),
    (GOOD, b"\0" * 13, None, "cover 12 bytes", None),
    ({**GOOD, "b": {"dtype": "F32", "shape": [-1], "data_offsets": [8, 12]}}, b"\0" * 12, None, "shape", "b"),
    ({**GOOD, "b": {"dtype": "F32", "shape": [1], "data_offsets": [8]}}, b"\0" * 12, None, "data_offsets", "b"),
    ({**GOOD, "b": [1, 2]}, b"\0" * 12, None, "exactly", "b"),
    ({"__metadata__": {"x": 1}}, b"", None, "__metadata__", None),
    ([1, 2], b"", None, "not a JSON object", None),
    (None, b"", b'{"a": 1, "a": 2}', "duplicate key", None),
    (None, b"", b"\xff\xfe{}", "UTF-8 JSON", None),
    (None, b"", b"[" * 100000 + b"]" * 100000, "nested more than", None),
])
def test_header_checks(tmp_path, header, data, raw, message, tensor):
    path = write_raw(tmp_path / "x.safetensors", header, data, raw)
    if message is None:
        assert set(open_checkpoint(path).tensors) == {"a", "b"}
        return
    with pytest.raises(CheckpointError, match=message) as err:
        open_checkpoint(path)
    assert err.value.file == str(path)
    assert err.value.tensor == tensor
    assert str(path) in str(err.value)


def test_length_prefix_checks(tmp_path):
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match="too short"):
        open_checkpoint(short)
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes((2**63).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError, match="header length"):
        open_checkpoint(huge)


def test_index_checks(tmp_path):
    save_file({"a": torch.ones(2)}, tmp_path / "s1.safetensors")
    save_file({"b": torch.ones(3), "c": torch.ones(1)}, tmp_path / "s2.safetensors")
    index = tmp_path / "model.safetensors.index.json"

    def with_map(weight_map):
        index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        return open_checkpoint(tmp_path)

    assert set(with_map({"a": "s1.safetensors", "b": "s2.safetensors", "c": "s2.safetensors"}).tensors) == {"a", "b", "c"}
    with pytest.raises(CheckpointError, match="s3.safetensors is missing") as err:
        with_map({"a": "s1.safetensors", "b": "s3.safetensors"})
    assert err.value.tensor == "b"
    with pytest.raises(CheckpointError, match="not listed") as err:
        with_map({"a": "s1.safetensors", "b": "s2.safetensors"})
    assert err.value.tensor == "c"
    with pytest.raises(CheckpointError, match="does not hold it") as err:
        with_map({"a": "s1.safetensors", "b": "s2.safetensors", "c": "s2.safetensors", "d": "s1.safetensors"})
    assert err.value.tensor == "d"
    with pytest.raises(CheckpointError, match="leaves the checkpoint directory"):
        with_map({"a": "../s1.safetensors"})
    index.write_text("{not json")
    with pytest.raises(CheckpointError, match="index is not valid UTF-8 JSON"):
        open_checkpoint(tmp_path)


def test_directory_resolution(tmp_path):
    with pytest.raises(CheckpointError, match="no .safetensors"):
        open_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no such file"):
        open_checkpoint(tmp_path / "missing.safetensors")
    save_file({"a": torch.ones(2)}, tmp_path / "weights.safetensors")
    assert "a" in open_checkpoint(tmp_path)
    save_file({"a": torch.ones(2)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="2 .safetensors files"):
        open_checkpoint(tmp_path)


class Boom:
    def __reduce__(self):
        return (print, ("code ran",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_is_refused_unless_allowed(tmp_path, capfd):
    state = {"w": torch.randn(3, 2), "b": torch.zeros(2, dtype=torch.bfloat16)}
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle"):
        open_checkpoint(tmp_path)
    ckpt = open_checkpoint(tmp_path, allow_pickle=True)
    assert same_bits(ckpt.tensor("w"), state["w"]) and same_bits(ckpt.rows("w", 1, 2), state["w"][1:2])
    evil = tmp_path / "evil.bin"
    evil.write_bytes(pickle.dumps({"w": Boom()}))
    with pytest.raises(CheckpointError, match="cannot load pickle"):
        open_checkpoint(evil, allow_pickle=True)
    assert "code ran" not in capfd.readouterr().out


def test_unknown_tensor_and_bad_rows(tmp_path):
    save_file({"a": torch.ones(4, 2)}, tmp_path / "m.safetensors")
    ckpt = open_checkpoint(tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="no such tensor") as err:
        ckpt.tensor("zzz")
    assert err.value.tensor == "zzz"
    with pytest.raises(CheckpointError, match="outside its 4 rows"):
        ckpt.rows("a", 2, 5)


def test_zero_size_tensor_with_unaddressable_shape(tmp_path):
    """Found by the fuzzer: zero elements, but strides past int64."""
    header = {"c": {"dtype": "F32", "shape": [0, 326364125, 28260986213], "data_offsets": [0, 0]}}
    path = write_raw(tmp_path / "z.safetensors", header)
    with pytest.raises(CheckpointError, match="too large to address") as err:
        open_checkpoint(path)
    assert err.value.tensor == "c"


def test_read_rows_copies_into_the_callers_buffer(tmp_path):
    t = torch.randn(5, 3)
    save_file({"w": t, "s": torch.tensor(2.5)}, tmp_path / "m.safetensors")
    ckpt = open_checkpoint(tmp_path)
    asked = []
    scratch = memoryview(bytearray(1024))

    def buffer(n):
        asked.append(n)
        return scratch

    got = ckpt.read_rows("w", 1, 4, buffer)
    assert asked == [36] and got.nbytes == 36
    assert bytes(got) == t[1:4].numpy().tobytes()
    assert bytes(ckpt.read_rows("s", 0, 1, buffer)) == torch.tensor(2.5).numpy().tobytes()
    with pytest.raises(CheckpointError, match="outside its 5 rows"):
        ckpt.read_rows("w", 4, 6, buffer)


def test_read_rows_through_the_read_ahead_in_any_order(tmp_path, monkeypatch):
    import random

    from ws_convert import reader

    monkeypatch.setattr(reader, "READ_AHEAD", 100)  # windows of 100 bytes; 8 to 240-byte tensors
    tensors = {f"t{i}": torch.randn(1 + i % 5, 1 + i % 12) for i in range(40)}
    save_file(dict(list(tensors.items())[:25]), tmp_path / "a.safetensors")
    save_file(dict(list(tensors.items())[25:]), tmp_path / "b.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {n: "a.safetensors" if int(n[1:]) < 25 else "b.safetensors" for n in tensors}}))
    ckpt = open_checkpoint(tmp_path)
    reads = [(n, r0, r1) for n, t in tensors.items() for r0 in range(t.shape[0]) for r1 in (r0 + 1, t.shape[0])]
    random.Random(0).shuffle(reads)
    for name, r0, r1 in sorted(reads, key=lambda r: ckpt.info(r[0]).start) + reads:
        got = ckpt.read_rows(name, r0, r1, lambda n: memoryview(bytearray(n + 3)))
        assert bytes(got) == tensors[name][r0:r1].numpy().tobytes(), (name, r0, r1)


def test_read_rows_of_a_truncated_file_names_it(tmp_path):
    save_file({"a": torch.ones(64, 4), "b": torch.ones(64, 4)}, tmp_path / "m.safetensors")
    ckpt = open_checkpoint(tmp_path)
    info = ckpt.info("b")
    os.truncate(info.file, info.start + 100)
    with pytest.raises(CheckpointError, match="truncated while it was read") as err:
        ckpt.read_rows("b", 0, 64, lambda n: memoryview(bytearray(n)))
    assert err.value.tensor == "b" and err.value.file == str(info.file)


MANY_SHARDS = """
import json, os, resource, sys
from pathlib import Path
import torch
from safetensors.torch import save_file
from ws_convert.reader import open_checkpoint
root, shards = Path(sys.argv[1]), int(sys.argv[2])
weight_map = {}
for i in range(shards):
    save_file({f"t{i}": torch.full((2, 3), float(i))}, root / f"s{i}.safetensors")
    weight_map[f"t{i}"] = f"s{i}.safetensors"
(root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
scratch = memoryview(bytearray(24))
with open_checkpoint(root) as ckpt:
    assert len(ckpt.files) == shards
    for rounds in range(2):
        for i in range(shards):
            assert ckpt.tensor(f"t{i}")[1, 2] == i
            assert bytes(ckpt.read_rows(f"t{i}", 0, 2, lambda n: scratch)) == bytes(ckpt.buffer(f"t{i}", 0, 2))
        print(len(os.listdir("/proc/self/fd")))
"""


def test_open_files_stay_bounded_whatever_the_shard_count(tmp_path):
    """Every shard read used to keep a descriptor (its map's) open: 400
    shards under a limit of 256 failed with "Too many open files"."""
    src = tmp_path / "src"
    src.mkdir()
    done = subprocess.run([sys.executable, "-c", MANY_SHARDS, str(src), "400"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert all(int(n) < 200 for n in done.stdout.split()), done.stdout
    (src / "config.json").write_text('{"hidden_size": 3, "num_attention_heads": 1}')
    grow = ("import resource, sys; from ws_convert.engine import grow\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
            "grow(sys.argv[1], 6, out=sys.argv[2], arch='generic', max_shard_size=50)")
    done = subprocess.run([sys.executable, "-c", grow, str(src), str(tmp_path / "out")], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    grown = open_checkpoint(tmp_path / "out")
    assert len(grown.files) == 400 and grown.tensor("t399")[1, 2] != 0


def calls_to_grow(tmp_path: Path, tensors: int) -> int:
    """Python function calls (all threads) that growing `tensors` tiny
    tensors takes, progress reports included."""
    import itertools
    import threading

    from ws_convert.engine import grow

    src = tmp_path / f"src{tensors}"
    src.mkdir()
    save_file({f"layers.{i}.w": torch.ones(2, 2) for i in range(tensors)}, src / "model.safetensors")
    (src / "config.json").write_text('{"hidden_size": 2, "num_attention_heads": 1}')
    counter = itertools.count()

    def count(frame, event, arg):
        if event in ("call", "c_call"):
            next(counter)

    threading.setprofile(count)
    sys.setprofile(count)
    try:
        grow(src, 4, out=tmp_path / f"out{tensors}", arch="generic", progress=lambda *a: None)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    return next(counter)


def test_grow_work_is_linear_in_the_tensor_count(tmp_path):
    """Counted, not timed, so that a loaded machine cannot make it flaky:
    progress summing every tensor's size per chunk made 16,000 tensors take
    266 s against 0.6 s for 1,000."""
    small, large = calls_to_grow(tmp_path, 250), calls_to_grow(tmp_path, 1000)
    assert large < 5 * small, (small, large)
