"""Planned, streaming, crash-safe writing of (sharded) safetensors checkpoints.

Every shard's header is computed up front from the output names, dtypes and
shapes, so tensor data can arrive in any order, whole or in row chunks, from
several threads, and go straight to its offset with a positional write; no
state dict is ever built. safetensors' own writers (`save_file`) need every
tensor in memory at once, which is exactly what this module avoids.

Everything is written into a hidden temporary directory beside the target and
renamed into place only after every byte is written and flushed, so a crash
never leaves a directory that looks complete at the target path. The rename
never replaces what another run put there meanwhile, `overwrite` replaces only
an empty directory or an earlier output, and a later run cleans up (or puts
back) whatever a killed run left beside the target.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import re
import secrets
import shutil
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import xxhash

from .errors import CheckpointError, OutputError, printable
from .reader import INDEX_NAME, SINGLE_NAME, parse_json, read_file, tensor_bytes
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


class PlannedTensor(Protocol):
    """What the writer needs of a tensor to lay it out: an OutputTensor, or
    a growth plan's TensorPlan as it is (no copy per tensor)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class OutputTensor:
    """One tensor of the checkpoint to write: name, safetensors dtype, shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @cached_property
    def nbytes(self) -> int:
        return nbytes(self.dtype, self.shape)


@dataclass
class Shard:
    """One planned file: its tensors, header bytes and each tensor's data offset."""

    file: str
    tensors: list[PlannedTensor]
    header: bytes = b""
    offsets: dict[str, int] = field(default_factory=dict)  # absolute, in the file

    @property
    def size(self) -> int:
        return len(self.header) + sum(t.nbytes for t in self.tensors)


def plan_shards(tensors: Sequence[PlannedTensor], max_shard_size: int | str,
                metadata: Mapping[str, str] | None = None) -> list[Shard]:
    """Fill shards in order up to `max_shard_size` bytes of data (a tensor
    larger than that gets a shard of its own); within a shard, larger dtypes
    come first so that every tensor's data is aligned to its item size."""
    limit = parse_size(max_shard_size)
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise OutputError("two output tensors share a name")
    groups: list[list[PlannedTensor]] = [[]]
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


def _fsync_path(path: Path) -> None:
    """fsync a file or directory by name (Linux syncs the file, whichever fd)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _close_fds(fds: Iterable[tuple[int, bool]]) -> None:
    """Close every fd, fsyncing those marked; the first error is raised once all are closed."""
    error = None
    for fd, sync in fds:
        try:
            if sync:
                os.fsync(fd)
        except OSError as exc:
            error = error or exc
        finally:
            os.close(fd)
    if error is not None:
        raise error


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


def _pwritev_all(fd: int, views: list[memoryview], offset: int) -> None:
    """Write `views` back to back into the file from `offset`: one system
    call for many buffers (at most IOV_MAX at a time), resumed after a short
    write."""
    i = 0
    while i < len(views):
        done = os.pwritev(fd, views[i:i + IOV_MAX], offset)
        offset += done
        while i < len(views) and done >= views[i].nbytes:
            done -= views[i].nbytes
            i += 1
        if done:
            views[i] = views[i][done:]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- renames that never replace ----------------------------------------------------

_AT_FDCWD = -100
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276}


def _find_renameat2() -> Callable[[bytes, bytes, int], int] | None:
    """Linux's renameat2, from libc (glibc 2.28 and later) or as the raw system call."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    if hasattr(libc, "renameat2"):
        fn = libc.renameat2
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        return lambda src, dst, flags: fn(_AT_FDCWD, src, _AT_FDCWD, dst, flags)
    number = _SYS_RENAMEAT2.get(platform.machine())
    if number is None:
        return None
    syscall = libc.syscall
    syscall.restype = ctypes.c_long
    return lambda src, dst, flags: syscall(ctypes.c_long(number), ctypes.c_int(_AT_FDCWD), ctypes.c_char_p(src),
                                           ctypes.c_int(_AT_FDCWD), ctypes.c_char_p(dst), ctypes.c_uint(flags))


_RENAMEAT2 = _find_renameat2()


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Rename with renameat2's `flags`; False where the system or the
    filesystem does not have them (the caller falls back to rename)."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(os.fsencode(src), os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def _rename_noreplace(src: Path, dst: Path) -> None:
    """Move `src` to `dst`, failing with EEXIST when `dst` exists, in one
    atomic step. Without renameat2 it is a check and then a rename: racy only
    there, and even then a directory cannot replace a non-empty one (rename
    refuses with ENOTEMPTY), only an empty one made in between."""
    if not _renameat2(src, dst, _RENAME_NOREPLACE):
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
        os.rename(src, dst)


def _remove(path: Path) -> None:
    """Delete a directory this module made; a symlink is unlinked, never followed."""
    if path.is_symlink():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except RuntimeError:  # a symlink loop, before Python 3.13
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path)) from None


def overlap(target: Path, protected: Iterable[Path]) -> Path | None:
    """The first of the resolved `protected` paths that the resolved `target`
    is, contains or sits inside: writing there would overwrite a source."""
    return next((p for p in protected if target == p or p in target.parents or target in p.parents), None)


def output_dir(out: str | os.PathLike[str]) -> Path:
    """`out` as a path. An empty or blank name (an unset shell variable)
    would mean the current directory, so it is refused, and so is a path
    that cannot be resolved (a symlink loop)."""
    text = os.fspath(out)
    if not text.strip():
        raise OutputError(f"the output directory is empty ({text!r}); name one")
    try:
        _resolved(Path(text))
    except OSError as exc:
        raise OutputError(f"cannot write {text}: {exc.strerror}") from None
    return Path(text)


WRITEBACK_EARLY = hasattr(os, "posix_fadvise") and os.environ.get("WS_CONVERT_WRITEBACK", "1") != "0"

PROVENANCE_NAME = "ws_convert.json"
OPTIMIZER_NAME = "optimizer.pt"  # a trainer's optimizer state (grown with --optimizer-state)
CONFIG_NAME = "config.json"
BASE_SHAPES_NAME = "base_shapes.bsh"
MAX_OPEN = 16  # output shards open at once; the others are closed until written again

# What a directory holding ws_convert.json may hold for `overwrite` to replace it.
_OUTPUT_FILE = re.compile("|".join([re.escape(SINGLE_NAME), r"model-[0-9]{5,}-of-[0-9]{5,}\.safetensors",
                                    *map(re.escape, (INDEX_NAME, PROVENANCE_NAME, CONFIG_NAME, BASE_SHAPES_NAME))]))
# where ws_convert.json lists the files grow wrote beside the weights: the source's it copied, those it computed
SIDE_HASHES, SIDE_LISTS = "source_hashes", ("files", "grown_files")
COPY_BLOCK = 1 << 20


def copied_names(out: Path) -> set[str]:
    """The names of the files an earlier output's ws_convert.json says grow
    wrote beside the weights (source files it copied, an optimizer state it
    grew; none when it cannot be read): `overwrite` may replace them with
    the rest of that output."""
    try:
        rec = parse_json(read_file(out / PROVENANCE_NAME), out / PROVENANCE_NAME, "the record")
    except CheckpointError:
        return set()
    hashes = rec.get(SIDE_HASHES) if isinstance(rec, dict) else None
    lists = [hashes.get(key) for key in SIDE_LISTS] if isinstance(hashes, dict) else []
    return {name for names in lists if isinstance(names, dict) for name in names}


def hash_file(fd: int, each: Callable[[bytes, int], None] | None = None) -> tuple[int, str]:
    """Size and xxh3_128 of the file open at `fd`, read from its start in
    blocks; `each(block, offset)` sees every block (a copy writes it). The
    one definition of a copied file's record, which verify recomputes."""
    h, size = xxhash.xxh3_128(), 0
    while block := os.pread(fd, COPY_BLOCK, size):
        if each is not None:
            each(block, size)
        h.update(block)
        size += len(block)
    return size, h.hexdigest()


class CheckpointWriter:
    """Writes one checkpoint directory. Use as a context manager:

        with CheckpointWriter(out, tensors, provenance={...}, config={...}) as w:
            w.write(name, tensor_or_row_chunk, row_start=...)

    Beside the shards it writes `ws_convert.json` (the provenance record, also
    in every shard's `__metadata__` under "ws_convert"), `config.json` and the
    mup base shapes `base_shapes.bsh`, each when given.

    On a clean exit the directory is completed and renamed into place; on an
    exception (or a crash) the target path is left as it was. An existing
    target is replaced only with `overwrite`, and only when it is empty or
    holds nothing but an earlier output's files. At most MAX_OPEN shards are
    open at a time, whatever their number.
    """

    def __init__(self, out_dir: str | Path, tensors: Sequence[PlannedTensor], *,
                 max_shard_size: int | str = "5GB", provenance: Mapping | None = None,
                 config: Mapping | None = None, base_shapes: str | None = None,
                 overwrite: bool = False, protect: Iterable[str | Path] = ()) -> None:
        self.out_dir = output_dir(out_dir).absolute()
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
        self.total_size = sum(t.nbytes for t in tensors)  # the index's metadata.total_size
        self._order = [t.name for t in tensors]
        self._where = {t.name: (s, t) for s in self.shards for t in s.tensors}
        self._written: dict[str, list[tuple[int, int]]] = {name: [] for name in self._where}
        self._unwritten = self.total_size  # bytes not yet claimed: 0 means every tensor is whole
        self._lock = threading.Lock()
        self._open: OrderedDict[str, list[int]] = OrderedDict()  # shard file -> [fd, writes using it], LRU first
        self._unsynced: set[str] = set()  # shard files written since their last fsync
        self._tag = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.tmp_dir: Path | None = None

    # -- set-up -------------------------------------------------------------

    def check(self) -> None:
        """Everything checked before a byte is written: the target and the
        free space. Dry runs call it too."""
        self.check_target()
        try:
            self._check_space()
        except OSError as exc:
            raise self._as_output_error(exc) from None

    def check_target(self) -> None:
        """Refuse a target this run must not write: the source or a path in or
        around it, an existing directory without `overwrite` or one that is
        neither empty nor an earlier output, a path that cannot be looked up."""
        try:
            self._check_target()
        except OSError as exc:
            raise self._as_output_error(exc) from None

    def _check_target(self) -> None:
        out = self.out_dir
        target = _resolved(out)
        p = overlap(target, self.protect)
        if p is not None:
            raise OutputError(f"refusing to write {out}: it would overwrite or sit inside the source {p}")
        try:
            os.lstat(out)
        except FileNotFoundError:
            if not out.parent.is_dir():
                raise OutputError(f"{out.parent} does not exist") from None
            return
        if not out.is_dir():
            raise OutputError(f"{out} exists and is not a directory")
        if not self.overwrite:
            raise OutputError(f"{out} already exists; pass --overwrite (overwrite=True) to replace it")
        entries = sorted(os.listdir(out))
        copied = copied_names(out) if PROVENANCE_NAME in entries else set()
        foreign = [e for e in entries
                   if PROVENANCE_NAME not in entries or not (_OUTPUT_FILE.fullmatch(e) or e in copied)]
        if foreign:
            n = len(foreign)
            shown = printable(", ".join(foreign[:3])) + (", ..." if n > 3 else "")
            raise OutputError(f"refusing to replace {out}: it holds {n} {'entry' if n == 1 else 'entries'} "
                              f"that {'is' if n == 1 else 'are'} not part of a ws-convert output ({shown})")

    def _recover(self) -> None:
        """Clean up after earlier runs into this target that died (their pid
        is gone). A temporary directory is removed. An old output moved aside
        for a swap goes back to the target when nothing is there (the swap
        never finished, so it may be the only complete copy), else it is
        removed; one that is a symlink was not made here and is unlinked."""
        if not self.out_dir.parent.is_dir():
            return  # check_target says what is wrong
        pattern = re.compile(re.escape(f".{self.out_dir.name}.") + r"(partial|replaced)-([0-9]+)(?:-[0-9a-f]+)?")
        found = [(m.group(1), p) for p in sorted(self.out_dir.parent.iterdir())
                 if (m := pattern.fullmatch(p.name)) and not _pid_alive(int(m.group(2)))]
        for kind, p in sorted(found, key=lambda item: item[0] != "replaced"):
            if kind == "replaced" and not p.is_symlink() and not os.path.lexists(self.out_dir):
                _rename_noreplace(p, self.out_dir)
            else:
                _remove(p)

    def __enter__(self) -> CheckpointWriter:
        try:
            self._recover()
            self.check()
            tmp = self.out_dir.parent / f".{self.out_dir.name}.partial-{self._tag}"
            tmp.mkdir()
            self.tmp_dir = tmp
            for shard in self.shards:
                fd = os.open(tmp / shard.file, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                self._unsynced.add(shard.file)
                try:
                    os.ftruncate(fd, shard.size)
                    _pwrite_all(fd, memoryview(shard.header), 0)
                finally:
                    os.close(fd)
        except BaseException as exc:
            self._abort()
            raise self._as_output_error(exc) from None
        return self

    def attach(self, tmp_dir: Path) -> None:
        """Write into the temporary directory another process of the same run
        opened (same plan, same shards); that process alone commits."""
        self.tmp_dir = Path(tmp_dir)

    def sync(self) -> None:
        """Close and flush every shard this process wrote to."""
        _close_fds([self._take(file) for file in list(self._open)])
        for file in sorted(self._unsynced):
            _fsync_path(self.tmp_dir / file)
        self._unsynced.clear()

    def written_elsewhere(self, names: Iterable[str]) -> None:
        """Count tensors as written in full: other processes of the run wrote them (and said so)."""
        for name in names:
            nbytes = self._planned(name)[1].nbytes
            self._unwritten -= nbytes - sum(e - b for b, e in self._written[name])
            self._written[name] = [(0, nbytes)]

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
        self._check_open()
        view = data.cast("B") if isinstance(data, memoryview) else self._tensor_view(name, data)
        self.write_chunks(view, [(name, row_start, view.nbytes)])

    def write_chunks(self, data: memoryview, chunks: Sequence[tuple[str, int, int]]) -> None:
        """Write chunks that lie back to back in the raw bytes `data`, each
        (tensor name, first row, bytes), as `write` would one by one. Chunks
        that lie back to back in a shard, in whatever order they come, go out
        in one vectored write: a stream of many small tensors costs a few
        system calls per slot, not one per tensor."""
        self._check_open()
        data = data.cast("B")
        runs: list[tuple[str, int, int, int]] = []  # (shard file, file offset, start in data, end in data)
        with self._lock:
            claimed: list[str] = []
            try:
                at = 0
                for name, row_start, size in chunks:
                    file, offset = self._claim(name, row_start, size)
                    claimed.append(name)
                    runs.append((file, offset, at, at + size))
                    at += size
                if at != data.nbytes:
                    raise OutputError(f"{data.nbytes} bytes given for chunks of {at}")
            except BaseException:
                for name in reversed(claimed):  # this call's spans are the last of each tensor
                    b, e = self._written[name].pop()
                    self._unwritten += e - b
                raise
        runs.sort()
        # [shard file, file offset, spans of data written back to back there, bytes]
        groups: list[list] = []
        for file, offset, begin, end in runs:
            last = groups[-1] if groups else None
            if not (last and last[0] == file and last[1] + last[3] == offset):
                groups.append([file, offset, [[begin, end]], end - begin])
                continue
            spans = last[2]
            if spans[-1][1] == begin:  # next in the data too: one buffer
                spans[-1][1] = end
            else:
                spans.append([begin, end])
            last[3] += end - begin
        try:
            for file, offset, spans, size in groups:
                with self._opened(file) as fd:
                    _pwritev_all(fd, [data[b:e] for b, e in spans], offset)
                    if WRITEBACK_EARLY:
                        # Start writing this range to the device now, so the disk
                        # works while later chunks are computed instead of all at
                        # the final fsync (and clean output pages leave the page cache).
                        os.posix_fadvise(fd, offset, size, os.POSIX_FADV_DONTNEED)
        except OSError as exc:
            raise self._as_output_error(exc) from None

    def _check_open(self) -> None:
        if self.tmp_dir is None:
            raise OutputError("write() outside the writer's with-block")

    def _planned(self, name: str) -> tuple[Shard, PlannedTensor]:
        try:
            return self._where[name]
        except KeyError:
            raise OutputError(f"tensor '{name}' is not in the planned output") from None

    def _claim(self, name: str, row_start: int, size: int) -> tuple[str, int]:
        """Record that `size` bytes of tensor `name` from row `row_start` are
        being written (the caller holds the lock) and return where they go:
        the shard file and the offset in it. Refuses bytes that do not fit
        the tensor's shape or that were written before."""
        shard, t = self._planned(name)
        rows = t.shape[0] if t.shape else 1
        row_bytes = t.nbytes // rows if rows else 0
        if row_bytes:
            n_rows, rest = divmod(size, row_bytes)
        else:
            n_rows, rest = (0, 0) if size == 0 else (0, size)
        if rest or not 0 <= row_start <= row_start + n_rows <= rows:
            raise OutputError(f"tensor '{name}': {size} bytes at row {row_start} do not fit its shape {t.shape}")
        begin, end = row_start * row_bytes, row_start * row_bytes + size
        spans = self._written[name]
        if any(b < end and begin < e for b, e in spans):
            raise OutputError(f"tensor '{name}': bytes [{begin}, {end}) written twice")
        spans.append((begin, end))
        self._unwritten -= size
        return shard.file, shard.offsets[name] + begin

    @contextmanager
    def _opened(self, file: str) -> Iterator[int]:
        """An fd of a shard, opened on demand. Past MAX_OPEN open ones, the
        least recently used that no write is using are synced and closed."""
        with self._lock:
            self._unsynced.add(file)
            entry = self._open.get(file)
            if entry is None:
                entry = self._open[file] = [os.open(self.tmp_dir / file, os.O_RDWR), 0]
            else:
                self._open.move_to_end(file)
            entry[1] += 1
            idle = [f for f, (_, users) in self._open.items() if not users]
            evicted = [self._take(f) for f in idle[:max(0, len(self._open) - MAX_OPEN)]]
        try:
            _close_fds(evicted)
            yield entry[0]
        finally:
            with self._lock:
                entry[1] -= 1

    def _take(self, file: str) -> tuple[int, bool]:
        """Drop an open shard from the table: its fd and whether it needs an fsync."""
        fd, _ = self._open.pop(file)
        dirty = file in self._unsynced
        self._unsynced.discard(file)
        return fd, dirty

    def _tensor_view(self, name: str, data: torch.Tensor) -> memoryview:
        from .torch_dtypes import NAMES

        t = self._planned(name)[1]
        if NAMES.get(data.dtype) != t.dtype:
            raise OutputError(f"tensor '{name}': got {data.dtype}, planned {t.dtype}")
        if data.device.type != "cpu" or not data.is_contiguous():
            raise OutputError(f"tensor '{name}': data must be a contiguous CPU tensor")
        return tensor_bytes(data)

    def missing(self) -> list[str]:
        """Tensors not yet written in full."""
        if not self._unwritten:
            return []
        return [name for name, (_, t) in self._where.items()
                if sum(e - b for b, e in self._written[name]) != t.nbytes]

    def add_file(self, name: str, content: str) -> None:
        """Give a side file (ws_convert.json, config.json, ...) its final
        content, known only once the data is written; it lands at the commit."""
        self._check_side_name(name)
        self.files[name] = content

    def copy_file(self, name: str, src_fd: int) -> tuple[int, str]:
        """Copy the file open at `src_fd` (read from its start, in blocks, so
        its size does not matter) byte for byte into the output as `name`;
        its size and the xxh3_128 of the bytes written."""
        self._check_open()
        self._check_side_name(name)
        if name in self.files:
            raise OutputError(f"{name} cannot be copied: the checkpoint writer writes it itself")
        try:
            fd = os.open(self.tmp_dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            try:
                size, digest = hash_file(src_fd, lambda block, at: _pwrite_all(fd, memoryview(block), at))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise self._as_output_error(exc) from None
        return size, digest

    def _check_side_name(self, name: str) -> None:
        if name in (s.file for s in self.shards) or name == INDEX_NAME:
            raise OutputError(f"{name} cannot be a side file: the checkpoint writer writes it itself")
        if name in ("", ".", "..") or "/" in name or "\0" in name:
            raise OutputError(f"{name!r} cannot be a side file: it is not a plain file name")
        if self.tmp_dir is not None and os.path.lexists(self.tmp_dir / name):
            raise OutputError(f"{name} cannot be a side file: it was copied into the output already")

    def index_text(self) -> str | None:
        """The index of a sharded checkpoint (None for a single file)."""
        if len(self.shards) == 1:
            return None
        index = {"metadata": {"total_size": self.total_size},
                 "weight_map": {name: self._where[name][0].file for name in self._order}}
        return json.dumps(index, indent=2) + "\n"

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
        self.sync()
        index = self.index_text()
        if index is not None:
            self._write_file(INDEX_NAME, index)
        for name, content in self.files.items():
            self._write_file(name, content)
        _fsync_path(self.tmp_dir)
        self.check_target()  # still absent, or still an output that may be replaced
        try:
            if self.overwrite and os.path.lexists(self.out_dir):
                self._swap()
            else:
                _rename_noreplace(self.tmp_dir, self.out_dir)
                self.tmp_dir = None
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise OutputError(f"{self.out_dir} already exists: another run wrote it meanwhile") from None
            raise
        _fsync_path(self.out_dir.parent)

    def _swap(self) -> None:
        """Put the new output in the old one's place, then delete the old one.
        With RENAME_EXCHANGE the two trade places in one step: a crash leaves
        one of them at the target and the other at the temporary name, which
        the next run removes. Otherwise the old one is moved aside first; a
        crash between the two renames leaves nothing at the target, and the
        next run puts the old one back."""
        if _renameat2(self.tmp_dir, self.out_dir, _RENAME_EXCHANGE):
            old = self.tmp_dir
        else:
            old = self.out_dir.parent / f".{self.out_dir.name}.replaced-{self._tag}"
            os.rename(self.out_dir, old)
            try:
                _rename_noreplace(self.tmp_dir, self.out_dir)
            except BaseException:
                os.rename(old, self.out_dir)
                raise
        self.tmp_dir = None
        _remove(old)

    def _abort(self) -> None:
        _close_fds((fd, False) for fd, _ in self._open.values())
        self._open.clear()
        if self.tmp_dir is not None:
            _remove(self.tmp_dir)
            self.tmp_dir = None
