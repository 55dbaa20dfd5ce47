"""The SZP operator's arguments as plain data, without tensors.

Planning, the CLI and the file-to-file engine on CPU need only this module
and the compiled kernel, never torch: so `ws-convert grow` starts in a tenth
of a second instead of the two seconds importing torch takes. `op.py` runs
the same call on tensors.

Where source elements land is described per axis by segments: source
positions [src, src + length) of that axis go to [dst, dst + length), times a
scale. One segment per axis is a top-left zero pad; several describe heads,
fused q|k|v projections or rotary half-splits; a source position may land
several times (an operator that copies units). Everything not covered is
zero before the noise is added. The noise of an output position is, by
default, the stream's value at that position; noise segments let an axis
draw it from another position, times a sign (so paired blocks can carry
opposite noise).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

# The dtypes the kernels read and write: safetensors name -> kernel name.
KERNEL_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


class Segment(NamedTuple):
    """Source positions [src, src + length) of one axis land at [dst, dst + length),
    multiplied by `scale` (the scales of all axes and the shrink multiply)."""

    dst: int
    src: int
    length: int
    scale: float = 1.0


class NoiseSegment(NamedTuple):
    """Output positions [dst, dst + length) of one axis take the noise drawn
    for positions [at, at + length) of that axis, times `sign` (1, -1 or 0)."""

    dst: int
    at: int
    length: int
    sign: int = 1


AxisMap = Sequence[Segment]
NoiseMap = Sequence[NoiseSegment]


@dataclass(frozen=True)
class Normal:
    """A Gaussian μP init with this std at the target size."""

    std: float


@dataclass(frozen=True)
class Constant:
    """A constant init (1 for norm gains, 0 for biases). `on_source`, when
    given, is added instead where a source element lands: with shrink 1 and
    on_source 0 the old units are copied and only the new ones start at
    `value` (norm gains copied, docs/DESIGN.md section 2's per-role override)."""

    value: float
    on_source: float | None = None

    @property
    def source_value(self) -> float:
        return self.value if self.on_source is None else self.on_source


Init = Normal | Constant


def pad_maps(src_shape: Sequence[int]) -> list[list[Segment]]:
    """The top-left zero pad: every source axis lands at the start of the output axis."""
    return [[Segment(0, 0, d)] if d else [] for d in src_shape]


def as_rows(out_shape: Sequence[int], src_shape: Sequence[int] | None,
            maps: Sequence[AxisMap]) -> tuple[tuple[int, ...], tuple[int, ...] | None, Sequence[AxisMap]]:
    """The kernels work on rows: a 0-d tensor is one row of one element (its
    source element, if any, lands on it). Other shapes pass unchanged."""
    if out_shape:
        return tuple(out_shape), None if src_shape is None else tuple(src_shape), maps
    return (1,), None if src_shape is None else (1,), [[Segment(0, 0, 1)] if src_shape is not None else []]


def f32(x: float) -> float:
    """Round a Python float (double) to the nearest float32, once."""
    return struct.unpack("f", struct.pack("f", x))[0]


def tensor_id(name: str) -> int:
    """The 64-bit stream id of an output tensor: first 8 bytes (LE) of SHA-256(name)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")


def check_maps(maps: Sequence[AxisMap], out_shape: Sequence[int], src_shape: Sequence[int] | None,
               noise_maps: Sequence[NoiseMap] | None = None) -> None:
    """The checks the kernels make too, so the reference refuses the same input."""
    if len(maps) != len(out_shape):
        raise ValueError(f"expected one segment list per output axis ({len(out_shape)}), got {len(maps)}")
    if noise_maps is not None:
        if len(noise_maps) != len(out_shape):
            raise ValueError(f"expected one noise segment list per output axis ({len(out_shape)}), "
                             f"got {len(noise_maps)}")
        for axis, (segs, n_out) in enumerate(zip(noise_maps, out_shape)):
            end = 0
            for dst, at, length, sign in sorted(segs):
                if min(dst, at, length) < 0 or dst + length > n_out or at + length > n_out or sign not in (-1, 0, 1):
                    raise ValueError(f"axis {axis}: noise segment (dst={dst}, at={at}, len={length}, sign={sign}) "
                                     f"does not fit output size {n_out} or has a sign other than -1, 0, 1")
                if length and dst < end:
                    raise ValueError(f"axis {axis}: noise segments overlap at output position {dst}")
                end = max(end, dst + length)
    if src_shape is None:
        if any(len(m) for m in maps):
            raise ValueError("segments given but no source tensor")
        return
    if len(src_shape) != len(out_shape):
        raise ValueError(f"source has {len(src_shape)} axes, output has {len(out_shape)}")
    for axis, (segs, n_out, n_src) in enumerate(zip(maps, out_shape, src_shape)):
        end = 0
        for dst, src, length, *_ in sorted(segs):
            if min(dst, src, length) < 0 or dst + length > n_out or src + length > n_src:
                raise ValueError(f"axis {axis}: segment (dst={dst}, src={src}, len={length}) does not "
                                 f"fit output size {n_out} and source size {n_src}")
            if length and dst < end:
                raise ValueError(f"axis {axis}: segments overlap at output position {dst}")
            end = max(end, dst + length)


@dataclass(frozen=True)
class Buffer:
    """Raw memory the kernel reads or writes: an address, a size in bytes and
    a kernel dtype name (float32, bfloat16, float16)."""

    address: int
    nbytes: int
    dtype: str


def kernel_args(out: Buffer, out_shape: Sequence[int], rows: tuple[int, int], src: Buffer | None,
                src_shape: Sequence[int] | None, src_row_start: int, maps: Sequence[AxisMap], *,
                shrink: float, perturb: float, init: Init, seed: int, tid: int,
                noise_maps: Sequence[NoiseMap] | None = None) -> dict:
    """The keyword record both compiled modules take (csrc/bind_args.h): the
    float32 knobs and scales rounded once, as docs/DESIGN.md section 5 fixes."""
    if src is not None and src.nbytes == 0:  # an empty source: nothing lands
        src, maps = None, [[] for _ in out_shape]
    return dict(
        out_ptr=out.address, out_nbytes=out.nbytes, out_dtype=out.dtype, out_shape=list(out_shape),
        row_start=rows[0], row_stop=rows[1],
        src_ptr=0 if src is None else src.address, src_nbytes=0 if src is None else src.nbytes,
        src_dtype="float32" if src is None else src.dtype, src_shape=list(src_shape or ()),
        src_row_start=int(src_row_start), maps=[[_segment(seg) for seg in axis] for axis in maps],
        noise_maps=[[tuple(int(x) for x in seg) for seg in axis] for axis in noise_maps or [[] for _ in out_shape]],
        **_knobs(shrink, perturb, init), seed=int(seed), tid=int(tid),
    )


def _segment(seg: Sequence) -> tuple:
    """(dst, src, length, scale): the scale as float32, rounded once."""
    dst, src, length, *scale = seg
    return int(dst), int(src), int(length), f32(scale[0] if scale else 1.0)


def knobs_key(shrink: float, perturb: float, init: Init) -> tuple[bytes, ...]:
    """A cache key for the knobs that tells -0.0 from 0.0 (equal as floats,
    but a zero's sign can reach the output's bytes): their bits. Cheap, as
    the engine asks once per chunk."""
    if isinstance(init, Normal):
        return _BITS(shrink, perturb, init.std), b"normal"
    return _BITS(shrink, perturb, init.value), b"constant", b"" if init.on_source is None else _BIT(init.on_source)


_BITS, _BIT = struct.Struct("<3d").pack, struct.Struct("<d").pack
_KNOBS: dict[tuple[bytes, ...], dict] = {}


def _knobs(shrink: float, perturb: float, init: Init) -> dict:
    """kernel_args' float32 knobs. Cached: a plan has few distinct ones, and
    a checkpoint of many small tensors makes a call per tensor."""
    key = knobs_key(shrink, perturb, init)
    if key not in _KNOBS:
        _KNOBS[key] = _float32_knobs(shrink, perturb, init)
    return _KNOBS[key]


def _float32_knobs(shrink: float, perturb: float, init: Init) -> dict:
    noise = isinstance(init, Normal)
    return dict(shrink=f32(shrink), noise_scale=f32(init.std * perturb) if noise else 0.0,
                constant=0.0 if noise else f32(perturb * init.value),
                constant_src=0.0 if noise else f32(perturb * init.source_value), noise=noise)
