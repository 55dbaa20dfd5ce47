"""Planned, streaming, crash-safe writing of (sharded) safetensors checkpoints.

Every shard's header is computed up front from the output names, dtypes and
shapes, so tensor data can arrive in any order, whole or in row chunks, from
several threads, and go straight to its offset with a positional write; no
state dict is ever built. safetensors' own writers (`save_file`) need every
tensor in memory at once, which is exactly what this module avoids.

Everything is written into a hidden temporary directory beside the target and
renamed into place only after every byte is written and flushed, so a crash
never leaves a directory that looks complete at the target path.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import OutputError
from .reader import INDEX_NAME, SINGLE_NAME, tensor_bytes
from .safetensors_spec import ITEMSIZE, encode_header, nbytes

if TYPE_CHECKING:
    import torch

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size: str | int) -> int:
    """Bytes from 5000000, "500MB", "5GB" (powers of 10) or "4GiB" (powers of 2)."""
    if isinstance(size, int):
        value = size
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", size)
        if not m or m.group(2).upper() not in _UNITS:
            raise ValueError(f"cannot read size {size!r}; write it like 500MB, 5GB or 4GiB")
        value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if value <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return value


@dataclass(frozen=True)
class OutputTensor:
    """One tensor of the checkpoint to write: name, safetensors dtype, shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return nbytes(self.dtype, self.shape)


@dataclass
class Shard:
    """One planned file: its tensors, header bytes and each tensor's data offset."""

    file: str
    tensors: list[OutputTensor]
    header: bytes = b""
    offsets: dict[str, int] = field(default_factory=dict)  # absolute, in the file

    @property
    def size(self) -> int:
        return len(self.header) + sum(t.nbytes for t in self.tensors)


def plan_shards(tensors: Sequence[OutputTensor], max_shard_size: int | str,
                metadata: Mapping[str, str] | None = None) -> list[Shard]:
    """Fill shards in order up to `max_shard_size` bytes of data (a tensor
    larger than that gets a shard of its own); within a shard, larger dtypes
    come first so that every tensor's data is aligned to its item size."""
    limit = parse_size(max_shard_size)
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise OutputError("two output tensors share a name")
    groups: list[list[OutputTensor]] = [[]]
    used = 0
    for t in tensors:
        if t.dtype not in ITEMSIZE:
            raise OutputError(f"tensor '{t.name}': dtype {t.dtype!r} cannot be stored in safetensors")
        if groups[-1] and used + t.nbytes > limit:
            groups.append([])
            used = 0
        groups[-1].append(t)
        used += t.nbytes
    n = len(groups)
    shards = []
    for i, group in enumerate(groups, 1):
        group = sorted(group, key=lambda t: -ITEMSIZE[t.dtype])
        header, spans = encode_header([(t.name, t.dtype, t.shape) for t in group], metadata)
        shard = Shard(SINGLE_NAME if n == 1 else f"model-{i:05d}-of-{n:05d}.safetensors", group, header)
        shard.offsets = {name: len(header) + begin for name, (begin, _) in spans.items()}
        shards.append(shard)
    return shards


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


WRITEBACK_EARLY = hasattr(os, "posix_fadvise") and os.environ.get("WS_CONVERT_WRITEBACK", "1") != "0"

PROVENANCE_NAME = "ws_convert.json"
CONFIG_NAME = "config.json"
BASE_SHAPES_NAME = "base_shapes.bsh"


class CheckpointWriter:
    """Writes one checkpoint directory. Use as a context manager:

        with CheckpointWriter(out, tensors, provenance={...}, config={...}) as w:
            w.write(name, tensor_or_row_chunk, row_start=...)

    Beside the shards it writes `ws_convert.json` (the provenance record, also
    in every shard's `__metadata__` under "ws_convert"), `config.json` and the
    mup base shapes `base_shapes.bsh`, each when given.

    On a clean exit the directory is completed and renamed into place; on an
    exception (or a crash) the target path is left as it was.
    """

    def __init__(self, out_dir: str | Path, tensors: Sequence[OutputTensor], *,
                 max_shard_size: int | str = "5GB", provenance: Mapping | None = None,
                 config: Mapping | None = None, base_shapes: str | None = None,
                 overwrite: bool = False, protect: Iterable[str | Path] = ()) -> None:
        self.out_dir = Path(out_dir).absolute()
        self.metadata = {"format": "pt"}
        self.files: dict[str, str] = {}
        if provenance is not None:
            self.metadata["ws_convert"] = json.dumps(provenance, sort_keys=True, separators=(",", ":"))
            self.files[PROVENANCE_NAME] = json.dumps(provenance, indent=2, sort_keys=True) + "\n"
        if config is not None:
            self.files[CONFIG_NAME] = json.dumps(config, indent=2, sort_keys=True) + "\n"
        if base_shapes is not None:
            self.files[BASE_SHAPES_NAME] = base_shapes
        self.overwrite = overwrite
        self.protect = [Path(p).resolve() for p in protect]
        self.shards = plan_shards(tensors, max_shard_size, self.metadata)
        self._order = [t.name for t in tensors]
        self._where = {t.name: (s, t) for s in self.shards for t in s.tensors}
        self._written: dict[str, list[tuple[int, int]]] = {name: [] for name in self._where}
        self._lock = threading.Lock()
        self._fds: dict[str, int] = {}
        self.tmp_dir: Path | None = None

    @property
    def total_size(self) -> int:
        """Bytes of tensor data, as the index's metadata.total_size counts it."""
        return sum(t.nbytes for s in self.shards for t in s.tensors)

    # -- set-up -------------------------------------------------------------

    def _check_target(self) -> None:
        target = self.out_dir.resolve()
        for p in self.protect:
            if target == p or p in target.parents or target in p.parents:
                raise OutputError(f"refusing to write {self.out_dir}: it would overwrite or sit inside "
                                  f"the source {p}")
        if self.out_dir.exists() or self.out_dir.is_symlink():
            if not self.out_dir.is_dir():
                raise OutputError(f"{self.out_dir} exists and is not a directory")
            if not self.overwrite:
                raise OutputError(f"{self.out_dir} already exists; pass --overwrite (overwrite=True) to replace it")
        if not self.out_dir.parent.is_dir():
            raise OutputError(f"{self.out_dir.parent} does not exist")

    def _remove_stale(self) -> None:
        """Temporary directories of earlier runs that died (their pid is gone)."""
        pattern = re.compile(re.escape(f".{self.out_dir.name}.partial-") + r"([0-9]+)-[0-9a-f]+")
        for p in self.out_dir.parent.iterdir():
            m = pattern.fullmatch(p.name)
            if m and p.is_dir() and not _pid_alive(int(m.group(1))):
                shutil.rmtree(p, ignore_errors=True)

    def __enter__(self) -> CheckpointWriter:
        self._check_target()
        self._remove_stale()
        tag = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.tmp_dir = self.out_dir.parent / f".{self.out_dir.name}.partial-{tag}"
        try:
            self._check_space()
            self.tmp_dir.mkdir()
            for shard in self.shards:
                fd = os.open(self.tmp_dir / shard.file, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                self._fds[shard.file] = fd
                os.ftruncate(fd, shard.size)
                os.pwrite(fd, shard.header, 0)
        except BaseException as exc:
            self._abort()
            raise self._as_output_error(exc) from None
        return self

    def _check_space(self) -> None:
        """Fail before writing anything when the output cannot fit. (Space is
        not reserved with fallocate: on tmpfs that zero-fills every page, and
        a disk that fills up mid-way still fails cleanly in write().)"""
        st = os.statvfs(self.out_dir.parent)
        need = sum(s.size for s in self.shards)
        have = st.f_bavail * st.f_frsize
        if need > have:
            raise OSError(errno.ENOSPC, f"needs {need} bytes, {have} free")

    def _as_output_error(self, exc: BaseException) -> BaseException:
        if isinstance(exc, OSError):
            what = (f"no space left on the device ({exc.strerror})" if exc.errno == errno.ENOSPC
                    else (exc.strerror or str(exc)))
            return OutputError(f"cannot write {self.out_dir}: {what}")
        return exc

    # -- data -----------------------------------------------------------------

    def write(self, name: str, data: memoryview | torch.Tensor, row_start: int = 0) -> None:
        """Write `data` (the whole tensor, or rows from `row_start` along axis
        0): a contiguous CPU tensor of the planned dtype, or its raw bytes."""
        if self.tmp_dir is None:
            raise OutputError("write() outside the writer's with-block")
        try:
            shard, t = self._where[name]
        except KeyError:
            raise OutputError(f"tensor '{name}' is not in the planned output") from None
        view = data.cast("B") if isinstance(data, memoryview) else self._tensor_view(name, t, data)
        rows = t.shape[0] if t.shape else 1
        row_bytes = t.nbytes // rows if rows else 0
        size = view.nbytes
        if row_bytes:
            n_rows, rest = divmod(size, row_bytes)
        else:
            n_rows, rest = (0, 0) if size == 0 else (0, size)
        if rest or not 0 <= row_start <= row_start + n_rows <= rows:
            raise OutputError(f"tensor '{name}': {size} bytes at row {row_start} do not fit its shape {t.shape}")
        begin, end = row_start * row_bytes, row_start * row_bytes + size
        with self._lock:
            spans = self._written[name]
            if any(b < end and begin < e for b, e in spans):
                raise OutputError(f"tensor '{name}': bytes [{begin}, {end}) written twice")
            spans.append((begin, end))
        offset = shard.offsets[name] + begin
        fd = self._fds[shard.file]
        try:
            while view:
                done = os.pwrite(fd, view, offset)
                view, offset = view[done:], offset + done
            if WRITEBACK_EARLY:
                # Start writing this range to the device now, so the disk works
                # while later chunks are computed instead of all at the final
                # fsync (and clean output pages leave the page cache).
                os.posix_fadvise(fd, shard.offsets[name] + begin, size, os.POSIX_FADV_DONTNEED)
        except OSError as exc:
            raise self._as_output_error(exc) from None

    @staticmethod
    def _tensor_view(name: str, t: OutputTensor, data: torch.Tensor) -> memoryview:
        from .torch_dtypes import NAMES

        if NAMES.get(data.dtype) != t.dtype:
            raise OutputError(f"tensor '{name}': got {data.dtype}, planned {t.dtype}")
        if data.device.type != "cpu" or not data.is_contiguous():
            raise OutputError(f"tensor '{name}': data must be a contiguous CPU tensor")
        return tensor_bytes(data)

    def missing(self) -> list[str]:
        """Tensors not yet written in full."""
        return [name for name, (_, t) in self._where.items()
                if sum(e - b for b, e in self._written[name]) != t.nbytes]

    # -- finish ----------------------------------------------------------------

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._abort()
            return
        try:
            self._commit()
        except BaseException as err:
            self._abort()
            raise self._as_output_error(err) from None

    def _write_file(self, name: str, content: str) -> None:
        with open(self.tmp_dir / name, "wb") as f:
            f.write(content.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())

    def _commit(self) -> None:
        missing = self.missing()
        if missing:
            raise OutputError(f"{len(missing)} tensors were not written in full, first '{missing[0]}'")
        for file, fd in list(self._fds.items()):
            os.fsync(fd)
            os.close(fd)
            del self._fds[file]
        if len(self.shards) > 1:
            index = {"metadata": {"total_size": self.total_size},
                     "weight_map": {name: self._where[name][0].file for name in self._order}}
            self._write_file(INDEX_NAME, json.dumps(index, indent=2) + "\n")
        for name, content in self.files.items():
            self._write_file(name, content)
        _fsync_dir(self.tmp_dir)
        self._check_target()  # nothing appeared meanwhile
        if self.out_dir.exists():  # overwrite: swap the old one out only now
            old = self.out_dir.parent / f".{self.out_dir.name}.replaced-{self.tmp_dir.name.rsplit('-', 2)[-2]}"
            os.rename(self.out_dir, old)
            try:
                os.rename(self.tmp_dir, self.out_dir)
            except OSError:
                os.rename(old, self.out_dir)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.tmp_dir, self.out_dir)
        self.tmp_dir = None
        _fsync_dir(self.out_dir.parent)

    def _abort(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if self.tmp_dir is not None:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            self.tmp_dir = None
