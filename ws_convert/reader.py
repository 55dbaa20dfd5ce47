"""Lazy reading of (sharded) safetensors checkpoints.

Every header is parsed and checked before anything uses it. Tensor data is
read two ways: `Checkpoint.read_rows` copies rows into a buffer the caller
reuses, with positional reads, so a file truncated meanwhile is an error
naming it (the engine reads sources this way); `Checkpoint.buffer`,
`Checkpoint.tensor` and `Checkpoint.rows` are zero-copy views of the
memory-mapped file, for callers that keep whole tensors. We parse headers
ourselves instead of going through `safetensors.safe_open` because safe_open
hands out copies of whole tensors, not row ranges, and its errors name
neither the file nor the tensor.

Only regular files are ever opened (a FIFO or a device named like a
checkpoint would block or never end), and at most MAX_OPEN_FILES source files
per checkpoint are held open at once, whatever the number of shards.
"""

from __future__ import annotations

import ctypes
import json
import math
import mmap
import os
import re
import stat
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from .errors import CheckpointError
from .gc_pause import collection_paused
from .safetensors_spec import ITEMSIZE, MAX_HEADER, METADATA_KEY, nbytes

if TYPE_CHECKING:
    import torch

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
MAX_OPEN_FILES = 64  # per checkpoint; a mapped file holds a second descriptor
READ_AHEAD = 1 << 20  # read_rows serves smaller reads from one read of this size
ENTRY_KEYS = frozenset(("dtype", "shape", "data_offsets"))  # of every tensor's header entry
MAX_JSON_DEPTH = 64  # real configs nest a few levels; deeper ones break recursive code later


class TensorInfo(NamedTuple):
    """Where one tensor lives: file, dtype (safetensors name), shape, bytes.
    A named tuple: a header of tens of thousands of tensors makes one each."""

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
    result = dict(pairs)
    if len(result) < len(pairs):  # find the first repeat, to name it
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key '{key}'")
            seen.add(key)
    return result


def _kind(mode: int) -> str:
    for test, what in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return what
    return "not a regular file"


def open_regular(path: Path) -> int:
    """A read-only descriptor of `path`, which must be a regular file: reading
    a FIFO, socket or device named like a checkpoint file would block or never
    end. The type is checked before opening (opening some devices acts on
    them) and again on the descriptor (the path may have changed between)."""
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISREG(mode):
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
            mode = os.fstat(fd).st_mode
            if stat.S_ISREG(mode):
                os.set_blocking(fd, True)
                return fd
            os.close(fd)
    except OSError as exc:
        raise CheckpointError(path, f"cannot read: {exc.strerror or exc}") from None
    raise CheckpointError(path, f"is {_kind(mode)}, not a regular file")


def read_file(path: Path, limit: int = MAX_HEADER) -> bytes:
    """The bytes of a small regular file (an index or a config), at most `limit`."""
    with os.fdopen(open_regular(path), "rb") as f:
        try:
            raw = f.read(limit + 1)
        except OSError as exc:
            raise CheckpointError(path, f"cannot read: {exc.strerror or exc}") from None
    if len(raw) > limit:
        raise CheckpointError(path, f"is larger than {limit} bytes")
    return raw


def _too_deep(value: object) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                return True
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return False


def _nested_too_deeply(path: Path, what: str) -> CheckpointError:
    return CheckpointError(path, f"{what} is JSON nested more than {MAX_JSON_DEPTH} levels deep")


def parse_json(raw: bytes | str, path: Path, what: str, **kw: object) -> object:
    """JSON from a file (or a field of one): a CheckpointError naming the file
    and `what` for bad UTF-8, bad JSON, or nesting too deep for the parser."""
    try:
        return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw, **kw)
    except RecursionError:
        raise _nested_too_deeply(path, what) from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(path, f"{what} is not valid UTF-8 JSON ({exc})") from None


def _valid_unicode(text: str) -> bool:
    """False for a string holding a lone surrogate (JSON can spell one,
    \\udc80; UTF-8 cannot, so it could never be written back)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def header_sha256(path: Path) -> str:
    """SHA-256 of a safetensors file's length prefix and header: a cheap
    fingerprint of its layout (the data is not hashed)."""
    import hashlib

    with os.fdopen(open_regular(path), "rb") as f:
        prefix = f.read(8)
        n = int.from_bytes(prefix, "little") if len(prefix) == 8 else 0
        return hashlib.sha256(prefix + f.read(min(n, MAX_HEADER))).hexdigest()


def _addressable_nbytes(path: Path, name: str, dtype: str, shape: tuple[int, ...]) -> int:
    """The bytes of a tensor of this dtype and shape, which must be small
    enough that its strides do not overflow, even with a zero dimension."""
    if math.prod(max(d, 1) for d in shape) >= 2**63:
        raise CheckpointError(path, f"shape {list(shape)} is too large to address", name)
    return nbytes(dtype, shape)


def read_header(path: Path) -> tuple[list[TensorInfo], dict[str, str]]:
    """Parse and check one safetensors header; tensors come in file order."""
    with os.fdopen(open_regular(path), "rb") as f:
        try:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CheckpointError(path, f"file has {size} bytes, too short for a safetensors header")
            n = int.from_bytes(prefix, "little")
            if n < 2 or n > MAX_HEADER or 8 + n > size:
                raise CheckpointError(path, f"header length {n} does not fit a file of {size} bytes")
            raw = f.read(n)
        except OSError as exc:
            raise CheckpointError(path, f"cannot read: {exc.strerror or exc}") from None
    header = parse_json(raw, path, "header", object_pairs_hook=_no_duplicates)
    if not isinstance(header, dict):
        raise CheckpointError(path, "header is not a JSON object")
    metadata = header.pop(METADATA_KEY, None) or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise CheckpointError(path, "__metadata__ must map strings to strings")
    if not all(_valid_unicode(k) and _valid_unicode(v) for k, v in metadata.items()):
        raise CheckpointError(path, "__metadata__ holds a string that is not valid Unicode (a lone surrogate)")

    base = 8 + n
    tensors = []
    sizes: dict[tuple[str, tuple[int, ...]], int] = {}  # the bytes of each dtype and shape checked so far
    for name, info in header.items():
        if not _valid_unicode(name):
            raise CheckpointError(path, "tensor name is not valid Unicode (a lone surrogate)", name)
        if not isinstance(info, dict) or info.keys() != ENTRY_KEYS:
            raise CheckpointError(path, "entry must have exactly dtype, shape and data_offsets", name)
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in ITEMSIZE:
            raise CheckpointError(path, f"unknown or unsupported dtype {dtype!r}", name)
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise CheckpointError(path, f"shape {shape!r} is not a list of non-negative integers", name)
        shape = tuple(shape)
        need = sizes.get((dtype, shape))
        if need is None:
            need = sizes[dtype, shape] = _addressable_nbytes(path, name, dtype, shape)
        begin, stop = offsets if isinstance(offsets, list) and len(offsets) == 2 else (None, None)
        if not (type(begin) is int and type(stop) is int and 0 <= begin <= stop):
            raise CheckpointError(path, f"data_offsets {offsets!r} are not [begin, end]", name)
        if stop - begin != need:
            raise CheckpointError(path, f"shape {list(shape)} of {dtype} needs {need} bytes but data_offsets "
                                        f"span {stop - begin}", name)
        tensors.append((begin, stop, name, dtype, shape))

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


def _cached(cache: OrderedDict, key: Path, make: Callable[[], object], drop: Callable[[object], None]) -> object:
    """`cache[key]`, made on a miss; the least recently used entry beyond
    MAX_OPEN_FILES is dropped."""
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    value = cache[key] = make()
    if len(cache) > MAX_OPEN_FILES:
        drop(cache.popitem(last=False)[1])
    return value


def _forget(_: object) -> None:
    """A map is not closed when dropped: views handed out may still use it
    (it closes, with its descriptor, when the last one goes)."""


def pread_full(fd: int, info: TensorInfo, pos: int, into: memoryview, need: int) -> int:
    """Read `info`'s file (open at `fd`) from `pos` into `into` until full or
    the end of the file: at least `need` bytes, else the file was cut short
    meanwhile, an error naming the file and tensor (where a memory map would
    have died by SIGBUS)."""
    done = 0
    while done < into.nbytes:
        try:
            n = os.preadv(fd, [into[done:]], pos + done)
        except OSError as exc:
            raise CheckpointError(info.file, f"cannot read: {exc.strerror or exc}", info.name) from None
        if n == 0:
            break
        done += n
    if done < need:
        raise CheckpointError(info.file, "the file was truncated while it was read", info.name)
    return done


class Checkpoint:
    """A checkpoint opened for lazy reading: names, dtypes, shapes, metadata
    and config up front; data on demand, copied into the caller's buffer or
    as views of memory-mapped files."""

    def __init__(self, path: Path, files: list[Path], tensors: dict[str, TensorInfo],
                 metadata: dict[str, str], config: dict | None,
                 loaded: dict[str, torch.Tensor] | None = None) -> None:
        self.path, self.files, self.tensors = path, files, tensors
        self.metadata, self.config = metadata, config
        self._loaded = loaded  # a pickle checkpoint, already in memory
        self._fds: OrderedDict[Path, int] = OrderedDict()
        self._maps: OrderedDict[Path, mmap.mmap] = OrderedDict()
        self._ahead: memoryview | None = None  # read_rows' read-ahead buffer
        self._window: tuple[Path | None, int, int] = (None, 0, 0)  # what it holds: file, [begin, end)

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the files and drop the maps; views already handed out keep theirs alive."""
        self._maps.clear()
        while self._fds:
            os.close(self._fds.popitem()[1])

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise CheckpointError(self.path, "no such tensor in the checkpoint", name) from None

    def _fd(self, file: Path) -> int:
        return _cached(self._fds, file, lambda: open_regular(file), os.close)

    def _map(self, file: Path) -> mmap.mmap:
        # copy-on-write: torch wants a writable buffer; the file is never written
        return _cached(self._maps, file, lambda: mmap.mmap(self._fd(file), 0, access=mmap.ACCESS_COPY), _forget)

    def _row_range(self, name: str, start: int, stop: int) -> tuple[TensorInfo, tuple[int, ...], int, int]:
        """The tensor's info, the shape of rows [start, stop), their byte offset in the data and their size."""
        info = self.info(name)
        shape = info.shape or (1,)
        if not 0 <= start <= stop <= shape[0]:
            raise CheckpointError(info.file, f"rows [{start}, {stop}) are outside its {shape[0]} rows", name)
        out_shape = (stop - start, *shape[1:]) if info.shape else ()
        row = math.prod(shape[1:]) * ITEMSIZE[info.dtype]
        return info, out_shape, start * row, (stop - start) * row

    def locate_rows(self, name: str, start: int, stop: int) -> tuple[TensorInfo, int, int, int]:
        """Where rows [start, stop) along axis 0 are, for a reader of its own
        (the compiled engine reads them off the interpreter): the tensor's
        info, their size, and their absolute offset in its file, or, for a
        checkpoint already in memory (a pickle), -1 and their address."""
        info, _, offset, size = self._row_range(name, start, stop)
        if self._loaded is not None:
            return info, size, -1, self._loaded[name].data_ptr() + offset
        return info, size, info.start + offset, 0

    def descriptor(self, file: Path) -> int:
        """A new descriptor of one of the checkpoint's files, the caller's to close."""
        return os.dup(self._fd(file))

    def read_rows(self, name: str, start: int, stop: int, buffer: Callable[[int], memoryview]) -> memoryview:
        """Copy rows [start, stop) along axis 0 into the front of `buffer(n)`,
        a writable byte buffer of at least the n bytes they take (the caller
        reuses one), and return that part. Positional reads, not a map: a
        file truncated meanwhile is an error naming it and the tensor
        (touching a map past the end of its file kills the process with SIGBUS).

        Reads under READ_AHEAD bytes are served from one read of READ_AHEAD
        bytes, so that many small tensors read in file order cost few system
        calls (each one lets other threads take the interpreter lock)."""
        info, _, offset, size = self._row_range(name, start, stop)
        target = buffer(size)[:size]
        if self._loaded is not None:
            target[:] = tensor_bytes(self._loaded[name])[offset:offset + size]
            return target
        pos = info.start + offset
        if size >= READ_AHEAD:
            self._pread(info, pos, target, size)
            return target
        file, begin, end = self._window
        if file is not info.file or not begin <= pos <= pos + size <= end:  # one Path object per file
            if self._ahead is None:
                self._ahead = memoryview(bytearray(READ_AHEAD))
            file, begin, end = self._window = info.file, pos, pos + self._pread(info, pos, self._ahead, size)
        target[:] = self._ahead[pos - begin:pos - begin + size]
        return target

    def _pread(self, info: TensorInfo, pos: int, into: memoryview, need: int) -> int:
        return pread_full(self._fd(info.file), info, pos, into, need)

    def buffer(self, name: str, start: int, stop: int) -> memoryview:
        """The bytes of rows [start, stop) along axis 0, as a zero-copy view."""
        info, _, offset, size = self._row_range(name, start, stop)
        if self._loaded is not None:
            return tensor_bytes(self._loaded[name])[offset:offset + size]
        return memoryview(self._map(info.file))[info.start + offset:info.start + offset + size]

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) along axis 0 of a tensor, as a zero-copy view."""
        import torch

        from .torch_dtypes import DTYPES

        info, shape, _, _ = self._row_range(name, start, stop)
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


def _config_object(raw: bytes | str, path: Path, what: str) -> dict:
    """A config: a JSON object nested at most MAX_JSON_DEPTH deep, since it is
    written back out (json.dumps recurses) and hashed."""
    config = parse_json(raw, path, what)
    if not isinstance(config, dict):
        raise CheckpointError(path, f"{what} is not a JSON object")
    if _too_deep(config):
        raise _nested_too_deeply(path, what)
    return config


def _load_config(directory: Path) -> dict | None:
    path = directory / "config.json"
    if not path.exists():
        return None
    return _config_object(read_file(path), path, "config")


def _open_index(index: Path) -> tuple[list[Path], dict[str, TensorInfo], dict[str, str]]:
    data = parse_json(read_file(index), index, "index")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if weight_map is None and isinstance(data, dict) and ("model_type" in data or index.name == "config.json"):
        raise CheckpointError(index, f"is a config, not weights; give its directory, {index.parent}")
    if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise CheckpointError(index, "index has no weight_map of tensor names to shard files")
    if not weight_map:
        raise CheckpointError(index, "index lists no tensors (its weight_map is empty)")
    files, tensors, metadata = [], {}, {}
    for shard_name in dict.fromkeys(weight_map.values()):
        if Path(shard_name).is_absolute() or ".." in Path(shard_name).parts:
            raise CheckpointError(index, f"shard path {shard_name!r} leaves the checkpoint directory")
        shard = index.parent / shard_name
        if not shard.exists():
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
        with os.fdopen(open_regular(path), "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's warnings about what it loads are not ours to print
            state = torch.load(f, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:  # torch raises many types for a bad pickle
        raise CheckpointError(path, f"cannot load pickle checkpoint: {_pickle_reason(exc)}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(path, "pickle checkpoint is not a dict of tensor names to tensors")
    tensors, loaded = {}, {}
    for name, t in state.items():
        if not _valid_unicode(name):
            raise CheckpointError(path, "tensor name is not valid Unicode (a lone surrogate)", name)
        kind = ("quantized" if t.is_quantized else "nested" if t.is_nested
                else str(t.layout).removeprefix("torch.") if t.layout != torch.strided
                else t.device.type if t.device.type != "cpu" else None)
        if kind is not None:
            raise CheckpointError(path, f"not a plain weights-only state dict: a {kind} tensor", name)
        if t.dtype not in NAMES:
            raise CheckpointError(path, f"dtype {t.dtype} has no safetensors equivalent", name)
        loaded[name] = t.contiguous()
        tensors[name] = TensorInfo(name, NAMES[t.dtype], tuple(t.shape), path, 0,
                                   t.numel() * t.element_size())
    return Checkpoint(path, [path], tensors, {}, _load_config(path.parent), loaded)


def _pickle_reason(exc: Exception) -> str:
    """One line of ours for torch's refusal, whose advice to load with
    weights_only=False (running the file's code) must never reach a user."""
    text = str(exc)
    if "weights_only" in text or "Weights only" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        return "not a plain weights-only state dict" + (f" (it refers to {found.group(1)})" if found else "")
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


@collection_paused()
def open_checkpoint(path: str | Path, *, allow_pickle: bool = False) -> Checkpoint:
    """Open a `.safetensors` file, a `model.safetensors.index.json`, or a
    directory holding either (with an optional `config.json` beside them).

    Pickle checkpoints (`.bin`, `.pt`) can run code when loaded; they are
    refused unless `allow_pickle`, and then loaded with `weights_only=True`.
    """
    path = Path(path)
    if path.is_dir():
        candidates = [path / INDEX_NAME, path / SINGLE_NAME]
        found = next((c for c in candidates if c.exists()), None)
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
            raise CheckpointError(path, "pickle checkpoints can run code when loaded; convert this one to "
                                        "safetensors, or pass --allow-pickle (allow_pickle=True in Python) to "
                                        "load only its weights")
        return _open_pickle(path)
    if path.suffix == ".json":
        files, tensors, metadata = _open_index(path)
    else:
        infos, metadata = read_header(path)
        files, tensors = [path], {i.name: i for i in infos}
    config = _load_config(path.parent)
    if config is None and "config" in metadata:  # a config carried in the shards' own metadata
        config = _config_object(metadata["config"], files[0], "__metadata__ config")
    return Checkpoint(path, files, tensors, metadata, config)
