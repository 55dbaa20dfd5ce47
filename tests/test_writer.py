"""The planned streaming writer: round trips, byte-identical output however
the data arrives, sharding, and the files beside the shards."""

import json
import random
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from io_helpers import all_dtype_tensors, planned, same_bits
from ws_convert.errors import OutputError
from ws_convert.reader import open_checkpoint
from ws_convert.writer import CheckpointWriter, OutputTensor, parse_size, plan_shards


def write_all(out, tensors, order=None, chunk_rows=None, threads=1, shuffle=False, **kw):
    """Write `tensors` whole or in row chunks, in `order` (or shuffled), from `threads` threads."""
    jobs = []
    for name in order or list(tensors):
        t = tensors[name]
        if chunk_rows and t.dim() > 0 and t.shape[0] > 1:
            jobs += [(name, t[r:r + chunk_rows].contiguous(), r) for r in range(0, t.shape[0], chunk_rows)]
        else:
            jobs.append((name, t.contiguous(), 0))
    if shuffle:
        random.Random(len(jobs)).shuffle(jobs)
    with CheckpointWriter(out, planned(tensors), **kw) as w:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda job: w.write(*job[:2], row_start=job[2]), jobs))
    return out


def files_bytes(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_round_trip_every_dtype(tmp_path):
    tensors = all_dtype_tensors()
    out = write_all(tmp_path / "out", tensors, provenance={"tool": "ws-convert", "seed": 0},
                    config={"hidden_size": 8}, base_shapes="a.weight: [8, null]\n")
    assert sorted(p.name for p in out.iterdir()) == ["base_shapes.bsh", "config.json", "model.safetensors",
                                                     "ws_convert.json"]
    loaded = load_file(out / "model.safetensors")
    with safe_open(out / "model.safetensors", "pt") as f:
        meta = f.metadata()
        assert set(f.keys()) == set(tensors)
    assert meta["format"] == "pt"
    assert json.loads(meta["ws_convert"]) == {"tool": "ws-convert", "seed": 0}
    assert json.loads((out / "ws_convert.json").read_text()) == {"tool": "ws-convert", "seed": 0}
    assert json.loads((out / "config.json").read_text()) == {"hidden_size": 8}
    for name, t in tensors.items():
        assert same_bits(loaded[name], t), name
        assert same_bits(open_checkpoint(out).tensor(name), t), name


@pytest.mark.parametrize("shard_size", ["5GB", 600, 100])
def test_same_bytes_however_data_arrives(tmp_path, shard_size):
    tensors = all_dtype_tensors(seed=1)
    tensors["big"] = torch.randn(37, 11)
    ref = files_bytes(write_all(tmp_path / "a", tensors, max_shard_size=shard_size))
    variants = [dict(order=list(reversed(tensors))), dict(chunk_rows=1), dict(chunk_rows=5, shuffle=True),
                dict(chunk_rows=2, threads=4, shuffle=True)]
    for i, v in enumerate(variants):
        assert files_bytes(write_all(tmp_path / f"v{i}", tensors, max_shard_size=shard_size, **v)) == ref, v


def test_sharding_and_index(tmp_path):
    tensors = {f"w{i}": torch.randn(10, 10) for i in range(5)}  # 400 bytes each
    out = write_all(tmp_path / "out", tensors, max_shard_size=900)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["metadata"] == {"total_size": 2000}
    assert list(index["weight_map"]) == list(tensors)
    assert set(index["weight_map"].values()) == {f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)}
    ckpt = open_checkpoint(out)
    assert all(same_bits(ckpt.tensor(n), t) for n, t in tensors.items())


def test_transformers_loads_written_checkpoint(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=64)
    model = transformers.GPT2LMHeadModel(config)
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied to wte
    write_all(tmp_path / "out", state, max_shard_size="20KB", config=config.to_dict())
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
    loaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out")
    for name, t in loaded.state_dict().items():
        assert torch.equal(t, model.state_dict()[name]), name
    ids = torch.randint(0, 100, (1, 8))
    assert torch.equal(loaded(ids).logits, model.eval()(ids).logits)


def test_plan_and_sizes():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("500MB") == 5 * 10**8
    assert parse_size("4GiB") == 4 * 2**30 and parse_size(1234) == 1234 and parse_size("1.5KB") == 1500
    for bad in ("five", "5XB", "-1", "0"):
        with pytest.raises(ValueError):
            parse_size(bad)
    shards = plan_shards([OutputTensor("a", "F32", (100,)), OutputTensor("b", "BF16", (1000,)),
                          OutputTensor("c", "F32", (10,))], max_shard_size=500)
    assert [[t.name for t in s.tensors] for s in shards] == [["a"], ["b"], ["c"]]  # b alone: over the limit
    with pytest.raises(OutputError, match="share a name"):
        plan_shards([OutputTensor("a", "F32", (1,))] * 2, 100)


def test_header_is_the_compact_json_text():
    """The header is written entry by entry; it must be exactly the text
    json.dumps gives, for names and metadata that need escaping too."""
    from ws_convert.safetensors_spec import encode_header

    entries = [("a", "F32", (2, 3)), ('b"\\\n\u00e9\u2028\x7f', "BF16", ()), ("c", "U8", [5]), ("d", "F32", (2, 3)),
               ("e", "I64", (0, 4))]
    metadata = {"format": "pt", "x": 'quote " and \u00e9\n'}
    for meta in (metadata, None, {}):
        header, spans = encode_header(entries, meta)
        body = json.loads(header[8:].decode("utf-8"))
        expected = {**({"__metadata__": meta} if meta else {}),
                    **{n: {"dtype": d, "shape": list(s), "data_offsets": list(spans[n])} for n, d, s in entries}}
        text = json.dumps(expected, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        assert header[8:].rstrip(b" ") == text and body == expected
        assert int.from_bytes(header[:8], "little") == len(header) - 8 and len(header) % 8 == 0
    assert [spans[n] for n, _, _ in entries] == [(0, 24), (24, 26), (26, 31), (31, 55), (55, 55)]


def test_bad_writes(tmp_path):
    plan = [OutputTensor("a", "F32", (4, 3)), OutputTensor("b", "BF16", (2,))]
    with pytest.raises(OutputError, match="not written in full, first 'b'"):
        with CheckpointWriter(tmp_path / "out", plan) as w:
            w.write("a", torch.zeros(4, 3))
    assert not (tmp_path / "out").exists()
    with CheckpointWriter(tmp_path / "out", plan) as w:
        with pytest.raises(OutputError, match="not in the planned output"):
            w.write("zzz", torch.zeros(1))
        with pytest.raises(OutputError, match="got torch.float64"):
            w.write("a", torch.zeros(4, 3, dtype=torch.float64))
        with pytest.raises(OutputError, match="do not fit"):
            w.write("a", torch.zeros(2, 3), row_start=3)
        with pytest.raises(OutputError, match="do not fit"):
            w.write("a", torch.zeros(5))
        with pytest.raises(OutputError, match="contiguous"):
            w.write("a", torch.zeros(3, 4).t())
        w.write("a", torch.zeros(2, 3), row_start=1)
        with pytest.raises(OutputError, match="written twice"):
            w.write("a", torch.zeros(2, 3), row_start=2)
        w.write("a", torch.zeros(1, 3), row_start=0)
        w.write("a", torch.zeros(1, 3), row_start=3)
        w.write("b", torch.zeros(2, dtype=torch.bfloat16))
    assert (tmp_path / "out" / "model.safetensors").is_file()
