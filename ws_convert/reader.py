"""Lazy reading of (sharded) safetensors checkpoints.

Every header is parsed and checked before anything uses it, and tensor data is
never copied: `Checkpoint.buffer` returns a memoryview of the memory-mapped
file (no torch needed), `Checkpoint.tensor` and `Checkpoint.rows` tensors
viewing the same memory. We parse headers ourselves instead of going through
`safetensors.safe_open` because the engine needs zero-copy row-range views
(safe_open hands out copies) and errors that name the file and the tensor.
"""

from __future__ import annotations

import ctypes
import json
import math
import mmap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CheckpointError
from .safetensors_spec import ITEMSIZE, MAX_HEADER, METADATA_KEY, nbytes

if TYPE_CHECKING:
    import torch

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, dtype (safetensors name), shape, bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    start: int  # absolute byte offset of the data in the file
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    seen: dict[str, object] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key '{key}'")
        seen[key] = value
    return seen


def header_sha256(path: Path) -> str:
    """SHA-256 of a safetensors file's length prefix and header: a cheap
    fingerprint of its layout (the data is not hashed)."""
    import hashlib

    with open(path, "rb") as f:
        prefix = f.read(8)
        n = int.from_bytes(prefix, "little") if len(prefix) == 8 else 0
        return hashlib.sha256(prefix + f.read(min(n, MAX_HEADER))).hexdigest()


def read_header(path: Path) -> tuple[list[TensorInfo], dict[str, str]]:
    """Parse and check one safetensors header; tensors come in file order."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CheckpointError(path, f"file has {size} bytes, too short for a safetensors header")
            n = int.from_bytes(prefix, "little")
            if n < 2 or n > MAX_HEADER or 8 + n > size:
                raise CheckpointError(path, f"header length {n} does not fit a file of {size} bytes")
            raw = f.read(n)
    except OSError as exc:
        raise CheckpointError(path, f"cannot read: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(path, f"header is not valid UTF-8 JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(path, "header is not a JSON object")
    metadata = header.pop(METADATA_KEY, None) or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise CheckpointError(path, "__metadata__ must map strings to strings")

    base = 8 + n
    tensors = []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(path, "entry must have exactly dtype, shape and data_offsets", name)
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in ITEMSIZE:
            raise CheckpointError(path, f"unknown or unsupported dtype {dtype!r}", name)
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise CheckpointError(path, f"shape {shape!r} is not a list of non-negative integers", name)
        if math.prod(max(d, 1) for d in shape) >= 2**63:  # strides would overflow, even with a zero dim
            raise CheckpointError(path, f"shape {shape} is too large to address", name)
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(type(o) is int for o in offsets) or not 0 <= offsets[0] <= offsets[1]):
            raise CheckpointError(path, f"data_offsets {offsets!r} are not [begin, end]", name)
        need = nbytes(dtype, shape)
        if offsets[1] - offsets[0] != need:
            raise CheckpointError(path, f"shape {shape} of {dtype} needs {need} bytes but data_offsets "
                                        f"span {offsets[1] - offsets[0]}", name)
        tensors.append((offsets[0], offsets[1], name, dtype, tuple(shape)))

    tensors.sort()
    end, previous = 0, None
    for begin, stop, name, _, _ in tensors:
        if begin != end:
            kind = "overlaps" if begin < end else "leaves a gap after"
            other = f"tensor '{previous}'" if previous is not None else "the start of the data"
            raise CheckpointError(path, f"data at byte {begin} {kind} {other} (ends at {end})", name)
        end, previous = stop, name
    if end != size - base:
        raise CheckpointError(path, f"tensors cover {end} bytes but the file holds {size - base} after the header")
    infos = [TensorInfo(name, dtype, shape, path, base + begin, stop - begin)
             for begin, stop, name, dtype, shape in tensors]
    return infos, metadata


class Checkpoint:
    """A checkpoint opened for lazy reading: names, dtypes, shapes, metadata
    and config up front; data as views of memory-mapped files on demand."""

    def __init__(self, path: Path, files: list[Path], tensors: dict[str, TensorInfo],
                 metadata: dict[str, str], config: dict | None,
                 loaded: dict[str, torch.Tensor] | None = None) -> None:
        self.path, self.files, self.tensors = path, files, tensors
        self.metadata, self.config = metadata, config
        self._loaded = loaded  # a pickle checkpoint, already in memory
        self._maps: dict[Path, mmap.mmap] = {}

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop the file maps; views already handed out keep theirs alive."""
        self._maps.clear()

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise CheckpointError(self.path, "no such tensor in the checkpoint", name) from None

    def _map(self, file: Path) -> mmap.mmap:
        if file not in self._maps:
            with open(file, "rb") as f:
                # copy-on-write: torch wants a writable buffer; the file is never written
                self._maps[file] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        return self._maps[file]

    def _row_range(self, name: str, start: int, stop: int) -> tuple[TensorInfo, tuple[int, ...], int]:
        """The tensor's info, the shape of rows [start, stop) and their byte offset in the data."""
        info = self.info(name)
        shape = info.shape or (1,)
        if not 0 <= start <= stop <= shape[0]:
            raise CheckpointError(info.file, f"rows [{start}, {stop}) are outside its {shape[0]} rows", name)
        out_shape = (stop - start, *shape[1:]) if info.shape else ()
        return info, out_shape, start * math.prod(shape[1:]) * ITEMSIZE[info.dtype]

    def buffer(self, name: str, start: int, stop: int) -> memoryview:
        """The bytes of rows [start, stop) along axis 0, as a zero-copy view."""
        info, shape, offset = self._row_range(name, start, stop)
        size = math.prod(shape) * ITEMSIZE[info.dtype]
        if self._loaded is not None:
            return tensor_bytes(self._loaded[name])[offset:offset + size]
        return memoryview(self._map(info.file))[info.start + offset:info.start + offset + size]

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) along axis 0 of a tensor, as a zero-copy view."""
        import torch

        from .torch_dtypes import DTYPES

        info, shape, _ = self._row_range(name, start, stop)
        if self._loaded is not None:
            return self._loaded[name].reshape(info.shape or (1,))[start:stop].reshape(shape)
        data = self.buffer(name, start, stop)
        if not data.nbytes:
            return torch.empty(shape, dtype=DTYPES[info.dtype])
        return torch.frombuffer(data, dtype=DTYPES[info.dtype]).reshape(shape)

    def tensor(self, name: str) -> torch.Tensor:
        """A whole tensor, as a zero-copy view of its file."""
        info = self.info(name)
        return self.rows(name, 0, info.shape[0] if info.shape else 1)


def _load_config(directory: Path) -> dict | None:
    path = directory / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(path, f"cannot read config: {exc}") from None
    if not isinstance(config, dict):
        raise CheckpointError(path, "config is not a JSON object")
    return config


def _open_index(index: Path) -> tuple[list[Path], dict[str, TensorInfo], dict[str, str]]:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(index, f"cannot read index: {exc}") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise CheckpointError(index, "index has no weight_map of tensor names to shard files")
    files, tensors, metadata = [], {}, {}
    for shard_name in dict.fromkeys(weight_map.values()):
        if Path(shard_name).is_absolute() or ".." in Path(shard_name).parts:
            raise CheckpointError(index, f"shard path {shard_name!r} leaves the checkpoint directory")
        shard = index.parent / shard_name
        if not shard.is_file():
            missing = next(k for k, v in weight_map.items() if v == shard_name)
            raise CheckpointError(index, f"shard {shard_name} is missing", missing)
        infos, shard_meta = read_header(shard)
        metadata = metadata or shard_meta
        files.append(shard)
        for info in infos:
            if weight_map.get(info.name) != shard_name:
                raise CheckpointError(shard, "tensor is not listed for this shard in the index", info.name)
            tensors[info.name] = info
    for name, shard_name in weight_map.items():
        if name not in tensors:
            raise CheckpointError(index.parent / shard_name, "the index lists this tensor but the shard "
                                                             "does not hold it", name)
    return files, tensors, metadata


def tensor_bytes(data: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, without copying."""
    n = data.numel() * data.element_size()
    if n == 0:
        return memoryview(b"")
    return memoryview((ctypes.c_char * n).from_address(data.data_ptr())).cast("B")


def _open_pickle(path: Path) -> Checkpoint:
    import torch

    from .torch_dtypes import NAMES

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad pickle
        raise CheckpointError(path, f"cannot load pickle checkpoint: {exc}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(path, "pickle checkpoint is not a dict of tensor names to tensors")
    tensors, loaded = {}, {}
    for name, t in state.items():
        if t.dtype not in NAMES:
            raise CheckpointError(path, f"dtype {t.dtype} has no safetensors equivalent", name)
        loaded[name] = t.contiguous()
        tensors[name] = TensorInfo(name, NAMES[t.dtype], tuple(t.shape), path, 0,
                                   t.numel() * t.element_size())
    return Checkpoint(path, [path], tensors, {}, _load_config(path.parent), loaded)


def open_checkpoint(path: str | Path, *, allow_pickle: bool = False) -> Checkpoint:
    """Open a `.safetensors` file, a `model.safetensors.index.json`, or a
    directory holding either (with an optional `config.json` beside them).

    Pickle checkpoints (`.bin`, `.pt`) can run code when loaded; they are
    refused unless `allow_pickle`, and then loaded with `weights_only=True`.
    """
    path = Path(path)
    if path.is_dir():
        candidates = [path / INDEX_NAME, path / SINGLE_NAME]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            singles = sorted(path.glob("*.safetensors"))
            pickles = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
            if len(singles) == 1:
                found = singles[0]
            elif singles:
                raise CheckpointError(path, f"{len(singles)} .safetensors files but no {INDEX_NAME}")
            elif pickles:
                found = pickles[0]
            else:
                raise CheckpointError(path, "no .safetensors checkpoint (or index) in this directory")
        path = found
    if not path.exists():
        raise CheckpointError(path, "no such file or directory")
    if path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise CheckpointError(path, "pickle checkpoints can run code when loaded; convert to "
                                        "safetensors or allow pickle explicitly")
        return _open_pickle(path)
    if path.suffix == ".json":
        files, tensors, metadata = _open_index(path)
    else:
        infos, metadata = read_header(path)
        files, tensors = [path], {i.name: i for i in infos}
    config = _load_config(path.parent)
    if config is None and "config" in metadata:  # a config carried in the shards' own metadata
        try:
            config = json.loads(metadata["config"])
        except ValueError as exc:
            raise CheckpointError(files[0], f"__metadata__ config is not JSON ({exc})") from None
        if not isinstance(config, dict):
            raise CheckpointError(files[0], "__metadata__ config is not a JSON object")
    return Checkpoint(path, files, tensors, metadata, config)
