"""safetensors dtype names <-> torch dtypes, for the code that makes tensors
(kept apart so the file format and the CPU engine need no torch)."""

from __future__ import annotations

import torch

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
