"""Mutated checkpoints: the reader either reads them or raises its own error;
it never crashes, hangs or raises anything else."""

import json

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from ws_convert.errors import CheckpointError
from ws_convert.reader import open_checkpoint

VALID = save({"a": torch.randn(3, 4), "b": torch.ones(5, dtype=torch.bfloat16),
                    "c": torch.zeros(0), "d": torch.tensor(7, dtype=torch.int64)}, metadata={"format": "pt"})
HEADER_LEN = int.from_bytes(VALID[:8], "little")
HEADER = json.loads(VALID[8:8 + HEADER_LEN])


def read_all(path) -> None:
    try:
        ckpt = open_checkpoint(path)
    except CheckpointError:
        return
    for name in ckpt.tensors:  # whatever it accepted must be readable
        ckpt.tensor(name).clone()


def fuzz_settings(n):
    return settings(max_examples=n, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@fuzz_settings(150)
@given(cut=st.integers(0, len(VALID)))
def test_truncated(tmp_path, cut):
    path = tmp_path / "t.safetensors"
    path.write_bytes(VALID[:cut])
    read_all(path)


@fuzz_settings(300)
@given(flips=st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(1, 255)), min_size=1, max_size=8))
def test_flipped_bytes(tmp_path, flips):
    data = bytearray(VALID)
    for pos, mask in flips:
        data[pos] ^= mask
    path = tmp_path / "f.safetensors"
    path.write_bytes(bytes(data))
    read_all(path)


@fuzz_settings(100)
@given(length=st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 2 * HEADER_LEN)))
def test_header_length(tmp_path, length):
    path = tmp_path / "l.safetensors"
    path.write_bytes(length.to_bytes(8, "little") + VALID[8:])
    read_all(path)


json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=5)
                           | st.floats(allow_nan=False), lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8)


@fuzz_settings(300)
@given(name=st.sampled_from(sorted(HEADER)), field=st.sampled_from(["dtype", "shape", "data_offsets", None]),
       value=json_values | st.sampled_from(["F32", "BF16", "F8_E4M3", "Q4", [0, 0], [0, 48], [48, 58], [3, 4], [2**63]]))
def test_mutated_header_entries(tmp_path, name, field, value):
    header = json.loads(json.dumps(HEADER))
    if field is None:
        header[name] = value
    else:
        header[name][field] = value
    text = json.dumps(header).encode()
    path = tmp_path / "h.safetensors"
    path.write_bytes(len(text).to_bytes(8, "little") + text + VALID[8 + HEADER_LEN:])
    read_all(path)
