"""The safetensors format, as far as ws-convert reads and writes it by hand.

A file is: 8 bytes little-endian header length N, N bytes of UTF-8 JSON
(`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
{str: str}}`), then the byte buffer, which the tensors cover exactly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence


# Bytes per element of every dtype name the format defines that ws-convert
# reads (torch equivalents: torch_dtypes.py).
ITEMSIZE: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1, "C64": 8,
}

# The reference implementation refuses headers over 100 MB; so do we.
MAX_HEADER = 100_000_000
METADATA_KEY = "__metadata__"


def nbytes(dtype: str, shape: Sequence[int]) -> int:
    return ITEMSIZE[dtype] * math.prod(shape)


def encode_header(entries: Sequence[tuple[str, str, Sequence[int]]],
                  metadata: Mapping[str, str] | None) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """Header bytes (length prefix included, padded to 8 bytes) for tensors
    stored back to back in the given order, and each one's [begin, end).
    The JSON is the compact `json.dumps` text (no spaces, UTF-8 as is),
    written entry by entry: a checkpoint of tens of thousands of tensors
    would otherwise build a dictionary per tensor only to print it."""
    parts = [json.dumps({METADATA_KEY: dict(metadata)}, separators=(",", ":"), ensure_ascii=False)[1:-1]] \
        if metadata else []
    spans, offset = {}, 0
    shown: dict[tuple[str, tuple[int, ...]], tuple[str, int]] = {}  # a checkpoint has few distinct shapes
    for name, dtype, shape in entries:
        key = (dtype, tuple(shape))
        if key not in shown:
            shown[key] = f'{{"dtype":{_string(dtype)},"shape":[{",".join(map(str, key[1]))}],"data_offsets":[', \
                nbytes(dtype, shape)
        text, size = shown[key]
        spans[name] = (offset, offset + size)
        parts.append(f"{_string(name)}:{text}{offset},{offset + size}]}}")
        offset += size
    text = ("{" + ",".join(parts) + "}").encode("utf-8")
    text += b" " * (-(len(text) + 8) % 8)
    return len(text).to_bytes(8, "little") + text, spans


_string = json.encoder.encode_basestring  # a JSON string as json.dumps(..., ensure_ascii=False) writes it
