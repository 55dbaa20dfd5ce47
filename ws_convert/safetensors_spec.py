"""The safetensors format, as far as ws-convert reads and writes it by hand.

A file is: 8 bytes little-endian header length N, N bytes of UTF-8 JSON
(`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
{str: str}}`), then the byte buffer, which the tensors cover exactly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

import torch

# safetensors dtype name -> torch dtype, for every dtype both know.
DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, attr)
    for name, attr in [
        ("F64", "float64"), ("F32", "float32"), ("F16", "float16"), ("BF16", "bfloat16"),
        ("I64", "int64"), ("I32", "int32"), ("I16", "int16"), ("I8", "int8"), ("U8", "uint8"),
        ("BOOL", "bool"), ("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64"),
        ("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"), ("C64", "complex64"),
    ]
    if hasattr(torch, attr)
}
NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
ITEMSIZE: dict[str, int] = {k: v.itemsize for k, v in DTYPES.items()}

# The reference implementation refuses headers over 100 MB; so do we.
MAX_HEADER = 100_000_000
METADATA_KEY = "__metadata__"


def nbytes(dtype: str, shape: Sequence[int]) -> int:
    return ITEMSIZE[dtype] * math.prod(shape)


def encode_header(entries: Sequence[tuple[str, str, Sequence[int]]],
                  metadata: Mapping[str, str] | None) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """Header bytes (length prefix included, padded to 8 bytes) for tensors
    stored back to back in the given order, and each one's [begin, end)."""
    header: dict[str, object] = {}
    if metadata:
        header[METADATA_KEY] = dict(metadata)
    spans, offset = {}, 0
    for name, dtype, shape in entries:
        size = nbytes(dtype, shape)
        spans[name] = (offset, offset + size)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-(len(text) + 8) % 8)
    return len(text).to_bytes(8, "little") + text, spans
