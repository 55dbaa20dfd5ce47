"""The SZP operator on one tensor: T = shrink * embed(S) + perturb * init_T.

`szp()` is the low-level fused op on tensors. It runs the compiled CPU or
CUDA kernel when present and the plain-PyTorch reference otherwise; the reference is
plain PyTorch and is the oracle the kernels match bit for bit. The
arguments themselves (segments, inits, the kernel's record) live in
`szp_spec`, which needs no torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import _ext
from .noise import normal_at, normal_stream
from .szp_spec import (KERNEL_DTYPES, AxisMap, Buffer, Constant, Init, NoiseMap, NoiseSegment, Normal, Segment,
                       as_rows, check_maps, f32, kernel_args, pad_maps)
from .torch_dtypes import NAMES

# torch dtype -> kernel dtype name, for the dtypes the kernels take
DTYPES = {dtype: KERNEL_DTYPES[name] for dtype, name in NAMES.items() if name in KERNEL_DTYPES}
CANONICAL_NAN = {torch.float32: (0x7FC00000, torch.int32), torch.bfloat16: (0x7FC0, torch.int16),
                 torch.float16: (0x7E00, torch.int16)}


def _check_tensor(t: torch.Tensor, what: str) -> None:
    if t.dtype not in DTYPES:
        raise ValueError(f"{what} has dtype {t.dtype}; the op takes float32, bfloat16 or float16")
    if not t.is_contiguous():
        raise ValueError(f"{what} must be contiguous")


def _buffer(t: torch.Tensor) -> Buffer:
    return Buffer(t.data_ptr(), t.numel() * t.element_size(), DTYPES[t.dtype])


def _axis_tables(maps: Sequence[AxisMap], out_shape: Sequence[int], rows: tuple[int, int],
                 device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per axis: (source index or -1, float32 scale) of each output position;
    axis 0 cut to `rows`."""
    tables = []
    for axis, n in enumerate(out_shape):
        index = torch.full((n,), -1, dtype=torch.int64)
        scale = torch.ones(n, dtype=torch.float32)
        for dst, s, length, *k in maps[axis]:
            index[dst:dst + length] = torch.arange(s, s + length)
            scale[dst:dst + length] = f32(k[0]) if k else 1.0
        if axis == 0:
            index, scale = index[rows[0]:rows[1]], scale[rows[0]:rows[1]]
        tables.append((index.to(device), scale.to(device)))
    return tables


def _broadcast(table: torch.Tensor, axis: int, ndim: int) -> torch.Tensor:
    view = [1] * ndim
    view[axis] = -1
    return table.view(view)


def _embed(src: torch.Tensor, src_shape: Sequence[int], out_shape: Sequence[int],
           maps: Sequence[AxisMap], rows: tuple[int, int], src_row_start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 rows [rows) of the embedded source (0 where nothing lands), and
    where something lands."""
    shape = (rows[1] - rows[0], *out_shape[1:])
    index = torch.zeros(shape, dtype=torch.int64, device=src.device)
    valid = torch.ones(shape, dtype=torch.bool, device=src.device)
    stride = 1
    tables = _axis_tables(maps, out_shape, rows, src.device)
    for axis in reversed(range(len(out_shape))):
        table = tables[axis][0]
        if axis == 0:
            table = torch.where(table >= 0, table - src_row_start, table)
        table = _broadcast(table, axis, len(out_shape))
        valid &= table >= 0
        index = index + table.clamp(min=0) * stride
        stride *= src_shape[axis]
    flat = src.reshape(-1).to(torch.float32)
    if flat.numel() == 0:
        return torch.zeros(shape, dtype=torch.float32, device=src.device), torch.zeros_like(valid)
    if bool((valid & (index >= flat.numel())).any()):
        raise ValueError("the segments read source rows outside the source buffer")
    return torch.where(valid, flat[index.clamp(max=flat.numel() - 1)], 0.0), valid


def _multiplier(shrink: float, maps: Sequence[AxisMap], out_shape: Sequence[int], rows: tuple[int, int],
                device: torch.device) -> torch.Tensor:
    """The float32 factor of each source element: f32(shrink * row scale) *
    column scale, the row scale being the leading axes' scales multiplied in
    axis order (each product rounded to float32, as the kernels do)."""
    tables = _axis_tables(maps, out_shape, rows, device)
    ndim = len(out_shape)
    row = torch.ones((1,) * ndim, dtype=torch.float32, device=device)
    for axis in range(ndim - 1):
        row = row * _broadcast(tables[axis][1], axis, ndim)
    return (torch.tensor(f32(shrink), dtype=torch.float32, device=device) * row) * \
        _broadcast(tables[ndim - 1][1], ndim - 1, ndim)


def _noise(noise_maps: Sequence[NoiseMap], out_shape: Sequence[int], rows: tuple[int, int], tid: int, seed: int,
           device: torch.device) -> torch.Tensor:
    """The standard normals of rows [rows), each drawn at the position its
    axes' noise segments name and times their signs."""
    ndim = len(out_shape)
    index = torch.zeros((1,) * ndim, dtype=torch.int64, device=device)
    sign = torch.ones((1,) * ndim, dtype=torch.float32, device=device)
    stride = 1
    for axis in reversed(range(ndim)):
        at = torch.arange(out_shape[axis], dtype=torch.int64)
        signs = torch.ones(out_shape[axis], dtype=torch.float32)
        for dst, pos, length, sgn in noise_maps[axis]:
            at[dst:dst + length] = torch.arange(pos, pos + length)
            signs[dst:dst + length] = float(sgn)
        if axis == 0:
            at, signs = at[rows[0]:rows[1]], signs[rows[0]:rows[1]]
        index = index + _broadcast(at.to(device), axis, ndim) * stride
        sign = sign * _broadcast(signs.to(device), axis, ndim)
        stride *= out_shape[axis]
    return normal_at(index.reshape(-1), tid, seed) * sign.expand(index.shape).reshape(-1)


def _store(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round float32 to the output dtype (nearest-even), NaN made canonical."""
    out = v.to(dtype)
    bits, int_type = CANONICAL_NAN[dtype]
    nan = torch.tensor(bits, dtype=torch.int64).to(int_type).view(dtype)
    return torch.where(torch.isnan(v), nan.to(v.device), out)


def _reference(src: torch.Tensor | None, src_shape: Sequence[int] | None, out_shape: Sequence[int],
               maps: Sequence[AxisMap], *, shrink: float, perturb: float, init: Init, seed: int,
               tid: int, rows: tuple[int, int], src_row_start: int,
               out_dtype: torch.dtype, device: torch.device, noise_maps: Sequence[NoiseMap] | None) -> torch.Tensor:
    """Plain-PyTorch SZP on output rows [rows): the oracle for the kernels."""
    inner = 1
    for d in out_shape[1:]:
        inner *= d
    begin, end = rows[0] * inner, rows[1] * inner
    if src is None:
        emb = torch.zeros(end - begin, dtype=torch.float32, device=device)
        landed = torch.zeros(end - begin, dtype=torch.bool, device=device)
        maps = [[] for _ in out_shape]
    else:
        emb, landed = (x.reshape(-1) for x in _embed(src, src_shape, out_shape, maps, rows, src_row_start))
    if isinstance(init, Normal):
        if noise_maps is None or not any(noise_maps):
            add = normal_stream(begin, end, tid, seed, device)
        else:
            add = _noise(noise_maps, out_shape, rows, tid, seed, device)
        scale = f32(init.std * perturb)
    else:
        add = torch.where(landed, f32(perturb * init.source_value), f32(perturb * init.value)).to(torch.float32)
        scale = 1.0
    a = _multiplier(shrink, maps, out_shape, rows, device).expand(rows[1] - rows[0], *out_shape[1:]).reshape(-1)
    zero = torch.tensor(f32(shrink), dtype=torch.float32, device=device) * 0.0  # the shrunk zero, signed
    s = torch.tensor(scale, dtype=torch.float32, device=device)
    v = torch.where(landed, a * emb, zero) + s * add
    return _store(v, out_dtype).reshape(rows[1] - rows[0], *out_shape[1:])


def _pick_backend(backend: str, device: torch.device):
    if backend not in ("auto", "cpu", "cuda", "reference"):
        raise ValueError(f"backend must be auto, cpu, cuda or reference, not {backend!r}")
    if backend == "auto":
        if device.type == "cuda" and _ext.cuda is not None:
            return "cuda"
        if device.type == "cpu" and _ext.cpu is not None:
            return "cpu"
        return "reference"
    if backend != "reference":
        if backend != device.type:
            raise ValueError(f"backend {backend!r} cannot run on tensors on {device}")
        module = _ext.cpu if backend == "cpu" else _ext.cuda
        if module is None:
            name = "_C" if backend == "cpu" else "_C_cuda"
            raise RuntimeError(f"the {backend} extension is not built: {_ext.why_missing.get(name, '')}")
    return backend


def szp(src: torch.Tensor | None, out_shape: Sequence[int], maps: Sequence[AxisMap], *,
        shrink: float = 0.4, perturb: float = 1.0, init: Init = Normal(0.02), seed: int = 0,
        tid: int, rows: tuple[int, int] | None = None, src_shape: Sequence[int] | None = None,
        src_row_start: int = 0, out: torch.Tensor | None = None,
        out_dtype: torch.dtype | None = None, device: torch.device | str | None = None,
        threads: int | None = None, backend: str = "auto",
        noise_maps: Sequence[NoiseMap] | None = None) -> torch.Tensor:
    """Compute output rows [rows) (axis 0; default all) of one SZP tensor.

    `src` holds source rows [src_row_start, src_row_start + len(src)) of a
    source tensor of shape `src_shape` (default: src's own shape), so large
    tensors can be streamed in row chunks. `tid` is the tensor's noise stream
    (`tensor_id(name)`); `noise_maps` (default: every position its own)
    say where on that stream each position's noise is drawn. Returns `out`
    (allocated when not given) with shape (rows[1] - rows[0], *out_shape[1:]).
    """
    out_shape = tuple(int(d) for d in out_shape)
    if src is not None:
        _check_tensor(src, "source tensor")
        src_shape = tuple(src.shape) if src_shape is None else tuple(int(d) for d in src_shape)
    else:
        src_shape = None
    if not out_shape:
        _, _, maps = as_rows(out_shape, src_shape, maps)  # a scalar has no noise map to follow
        res = szp(None if src is None else src.reshape(1), (1,), maps, shrink=shrink,
                  perturb=perturb, init=init, seed=seed, tid=tid, src_row_start=0,
                  out=None if out is None else out.reshape(1), out_dtype=out_dtype,
                  device=device, threads=threads, backend=backend)
        return res.reshape(()) if out is None else out
    rows = (0, out_shape[0]) if rows is None else (int(rows[0]), int(rows[1]))
    if not 0 <= rows[0] <= rows[1] <= out_shape[0]:
        raise ValueError(f"row range {rows} is outside the output's {out_shape[0]} rows")
    check_maps(maps, out_shape, src_shape, noise_maps)
    if not isinstance(init, (Normal, Constant)):
        raise TypeError("init must be Normal(std) or Constant(value)")
    part_shape = (rows[1] - rows[0], *out_shape[1:])
    if out is not None:
        _check_tensor(out, "output tensor")
        if tuple(out.shape) != part_shape:
            raise ValueError(f"output tensor has shape {tuple(out.shape)}, expected {part_shape}")
        out_dtype = out.dtype
    dev = torch.device(device) if device is not None else (
        out.device if out is not None else src.device if src is not None else torch.device("cpu"))
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    out_dtype = out_dtype or (src.dtype if src is not None else torch.float32)
    if out_dtype not in DTYPES:
        raise ValueError(f"output dtype {out_dtype} is not float32, bfloat16 or float16")
    for t, what in ((src, "source tensor"), (out, "output tensor")):
        if t is not None and t.device != dev:
            raise ValueError(f"{what} is on {t.device}, expected {dev}")

    chosen = _pick_backend(backend, dev)
    if chosen == "reference":
        res = _reference(src, src_shape, out_shape, maps, shrink=shrink, perturb=perturb,
                         init=init, seed=seed, tid=tid, rows=rows, src_row_start=src_row_start,
                         out_dtype=out_dtype, device=dev, noise_maps=noise_maps)
        if out is None:
            return res
        out.copy_(res)
        return out

    if out is None:
        out = torch.empty(part_shape, dtype=out_dtype, device=dev)
    args = kernel_args(_buffer(out), out_shape, rows, None if src is None else _buffer(src), src_shape,
                       src_row_start, maps, shrink=shrink, perturb=perturb, init=init, seed=seed, tid=tid,
                       noise_maps=noise_maps)
    if chosen == "cpu":
        _ext.cpu.szp(args, threads or 0)
    else:
        with torch.cuda.device(dev):
            _ext.cuda.szp(args, torch.cuda.current_stream(dev).cuda_stream)
    return out


def szp_reference(src: torch.Tensor | None, out_shape: Sequence[int], maps: Sequence[AxisMap],
                  **options) -> torch.Tensor:
    """The plain-PyTorch oracle, taking szp's arguments: szp(..., backend="reference")."""
    return szp(src, out_shape, maps, **options, backend="reference")


__all__ = ["Constant", "Init", "Normal", "Segment", "NoiseSegment", "AxisMap", "NoiseMap", "pad_maps", "szp",
           "szp_reference"]
