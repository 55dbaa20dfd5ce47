"""The record a grown checkpoint carries of how it was made: `ws_convert.json`,
and a copy in every shard's `__metadata__`. It holds enough for `verify` to
recompute every byte grow wrote, to find the source again after both were
moved, and to tell a source changed since from a corrupt output.

The shards' copy lacks the source tensors' content hashes: headers are
written before the data is read, and the hashes are known only at the end."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import threading
import types
import typing
from collections.abc import Mapping
from dataclasses import asdict, fields
from pathlib import Path

import xxhash

from ._version import __version__
from .errors import CheckpointError
from .plan import GrowthOptions
from .reader import PICKLE_SUFFIXES, Checkpoint, header_sha256, open_regular, parse_json, pread_full, read_file

TOOL = "ws-convert"
HASHES = "source_hashes"  # the key of ws_convert.json the shards' copy lacks
GROWN = "grown_files"  # files grow computes beside the weights (a grown optimizer state), by their hashes
HASH_ALGORITHM = "xxh3_128"  # releases the GIL and runs at memory speed: hashing never slows grow
HASH_BLOCK = 16 << 20


def fingerprint(path: Path) -> str:
    """SHA-256 of a safetensors header (a pickle file: of the whole file)."""
    if path.suffix in PICKLE_SUFFIXES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    return header_sha256(path)


def config_sha256(config: Mapping | None) -> str | None:
    """The source config as planning sees it (from config.json or the shards' metadata)."""
    if config is None:
        return None
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode("utf-8")).hexdigest()


def relative_source(src: Path, out: Path) -> str | None:
    """The source's path from the output directory when the two share a
    parent below the root, so that both can move together."""
    src, out = src.resolve(), out.resolve()
    if os.path.commonpath([src, out]) == out.anchor:
        return None
    return os.path.relpath(src, out)


def record(ckpt: Checkpoint, options: GrowthOptions, arch: str, base_shapes: str | None,
           allow_pickle: bool, out: Path, max_shard_size: int) -> dict:
    """No timestamps or host names: the same command must give the same bytes."""
    src = Path(ckpt.path).resolve()
    return {
        "tool": TOOL,
        "version": __version__,
        "source": {"path": str(src), "relative_path": relative_source(src, Path(out)),
                   "config_sha256": config_sha256(ckpt.config),
                   "files": [{"name": f.name, "header_sha256": fingerprint(f)} for f in ckpt.files]},
        "arch": arch,
        "options": asdict(options),
        "base_shapes": str(Path(base_shapes).resolve()) if base_shapes else None,
        "allow_pickle": allow_pickle,
        "max_shard_size": max_shard_size,
    }


def record_text(rec: Mapping) -> str:
    """ws_convert.json as grow writes it."""
    return json.dumps(rec, indent=2, sort_keys=True) + "\n"


def without_hashes(rec: Mapping) -> dict:
    """The record as the shards' `__metadata__` carry it."""
    return {k: v for k, v in rec.items() if k != HASHES}


# -- source content hashes ------------------------------------------------------

@functools.lru_cache(maxsize=256)
def hash_prefix(dtype: str, shape: tuple[int, ...]) -> bytes:
    """What a source tensor's hash covers before its bytes (cached: a
    checkpoint of many tensors has few distinct shapes)."""
    return f"{dtype} {list(shape)}\n".encode()


class SourceHasher:
    """Hashes every source tensor (dtype, shape and bytes) on a background
    thread while grow or verify computes from the same source. Files are
    read with plain reads, one at a time and in blocks of HASH_BLOCK that
    hold many small tensors each, so a file that shrinks meanwhile is an
    error here, not a SIGBUS. Use as a context manager; leaving it on an
    exception stops the thread within one block."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt = ckpt
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ws-convert-hash", daemon=True)
        self._hashes: dict[str, str] = {}
        self._error: BaseException | None = None

    def __enter__(self) -> SourceHasher:
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._stop.set()
        self._thread.join()

    def result(self) -> dict:
        """{"algorithm", "tensors": {name: hex digest}}, the `source_hashes` of ws_convert.json."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return {"algorithm": HASH_ALGORITHM, "tensors": dict(sorted(self._hashes.items()))}

    def _run(self) -> None:
        try:
            if self.ckpt.files[0].suffix in PICKLE_SUFFIXES:  # already in memory
                for name, info in self.ckpt.tensors.items():
                    if self._stop.is_set():
                        return
                    rows = info.shape[0] if info.shape else 1
                    self._hash(info, [self.ckpt.buffer(name, 0, rows)])
            else:
                by_file: dict[Path, list] = {}
                for info in self.ckpt.tensors.values():
                    by_file.setdefault(info.file, []).append(info)
                # One buffer for all files: fresh pages cost a fault each.
                block = memoryview(bytearray(min(HASH_BLOCK, sum(i.nbytes for i in self.ckpt.tensors.values()))))
                for file, infos in by_file.items():
                    fd = open_regular(file)
                    try:
                        self._hash_file(fd, sorted(infos, key=lambda i: i.start), block)
                    finally:
                        os.close(fd)
        except BaseException as exc:  # handed to the caller by result()
            self._error = exc

    def _hash_file(self, fd: int, infos: list, block: memoryview) -> None:
        """Hash the tensors of one file, in file order. A tensor larger than
        `block` is read through it in pieces; the others are sliced from one
        read of `block` that starts at the first of them not yet read."""
        begin = end = 0  # the file range `block` holds
        for info in infos:
            if self._stop.is_set():
                return
            if info.nbytes > len(block):
                self._hash(info, self._pieces(fd, info, block))
                begin = end = 0
                continue
            if not begin <= info.start <= info.start + info.nbytes <= end:
                begin, end = info.start, info.start + pread_full(fd, info, info.start, block, info.nbytes)
            self._hash(info, [block[info.start - begin:info.start - begin + info.nbytes]])

    def _hash(self, info, blocks: typing.Iterable) -> None:
        h = xxhash.xxh3_128(hash_prefix(info.dtype, info.shape))
        for block in blocks:
            h.update(block)
        if not self._stop.is_set():
            self._hashes[info.name] = h.hexdigest()

    def _pieces(self, fd: int, info, block: memoryview) -> typing.Iterator[memoryview]:
        pos, end = info.start, info.start + info.nbytes
        while pos < end and not self._stop.is_set():
            piece = block[:min(end - pos, len(block))]
            pos += pread_full(fd, info, pos, piece, piece.nbytes)
            yield piece


# -- reading a record back -------------------------------------------------------

class _Map:
    """Schema of a JSON object of any keys, all strings, to values of one schema."""

    def __init__(self, value: object) -> None:
        self.value = value


class _Optional:
    """Schema of a field a record may leave out: one written before the field existed."""

    def __init__(self, value: object) -> None:
        self.value = value


ADDED_OPTIONS = ("to_experts", "experts_top_k", "method")  # options older records leave out (defaults apply)


def _options_schema() -> dict:
    hints = typing.get_type_hints(GrowthOptions)
    types_of = {f.name: (typing.get_args(hints[f.name]) if isinstance(hints[f.name], types.UnionType)
                         else hints[f.name]) for f in fields(GrowthOptions)}
    return {name: _Optional(t) if name in ADDED_OPTIONS else t for name, t in types_of.items()}


SCHEMA = {
    "tool": str, "version": str, "arch": str, "allow_pickle": bool, "max_shard_size": int,
    "base_shapes": (str, type(None)),
    "source": {"path": str, "relative_path": (str, type(None)), "config_sha256": (str, type(None)),
               "files": [{"name": str, "header_sha256": str}],
               "hub_repo_id": _Optional((str, type(None))), "hub_revision": _Optional((str, type(None)))},
    "options": _options_schema(),
    HASHES: {"algorithm": str, "tensors": _Map(str), "files": _Map({"bytes": int, HASH_ALGORITHM: str}),
             GROWN: _Optional(_Map({"bytes": int, HASH_ALGORITHM: str}))},
}
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", type(None): "null"}


def _check(value: object, schema: object, where: str, file: Path) -> None:
    """Raise a one-line CheckpointError naming the first field of `value`
    that does not fit `schema` (the schema's depth bounds the recursion)."""
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            raise CheckpointError(file, f"{where or 'the record'} must be a JSON object")
        missing = [k for k in schema if k not in value and not isinstance(schema[k], _Optional)]
        extra = [k for k in value if k not in schema]
        if missing:
            raise CheckpointError(file, f"{where or 'the record'} has no field '{missing[0]}'")
        if extra:
            raise CheckpointError(file, f"{where or 'the record'} has an unknown field {extra[0][:80]!r}")
        for k, sub in schema.items():
            if k in value:
                _check(value[k], sub.value if isinstance(sub, _Optional) else sub, f"{where}.{k}" if where else k,
                       file)
    elif isinstance(schema, list):
        if not isinstance(value, list):
            raise CheckpointError(file, f"field '{where}' must be a list")
        for i, item in enumerate(value):
            _check(item, schema[0], f"{where}[{i}]", file)
    elif isinstance(schema, _Map):
        if not isinstance(value, dict):
            raise CheckpointError(file, f"field '{where}' must be a JSON object")
        for k, item in value.items():
            _check(item, schema.value, f"{where}[{k[:80]!r}]", file)
    else:
        allowed = _as_tuple(schema)
        if not any(_is(value, t) for t in allowed):
            raise CheckpointError(file, f"field '{where}' must be {' or '.join(_TYPE_NAMES[t] for t in allowed)}, "
                                        f"not {_show(value)}")


def _as_tuple(schema: type | tuple) -> tuple:
    return schema if isinstance(schema, tuple) else (schema,)


def _show(value: object) -> str:
    """A short one-line form of a JSON value (never dumping a nested one)."""
    if isinstance(value, (dict, list)):
        return "an object" if isinstance(value, dict) else "a list"
    return json.dumps(value)[:80]


def _is(value: object, t: type) -> bool:
    if isinstance(value, bool) or t is bool:
        return isinstance(value, bool) and t is bool
    if t is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, t)


def read_record(path: Path) -> dict:
    """ws_convert.json, checked field by field: bad JSON, a missing field or a
    value of the wrong type is one line naming the file and field."""
    if not path.exists():
        raise CheckpointError(path, "missing: not a ws-convert output, or its record was deleted")
    return check_record(parse_json(read_file(path), path, "the record"), path)


def check_record(rec: object, path: Path, *, copy: bool = False) -> dict:
    """`rec` as a record (`copy`: the shards' copy, without the source hashes)
    or a CheckpointError naming `path` and the first field that is wrong."""
    _check(rec, without_hashes(SCHEMA) if copy else SCHEMA, "", path)
    for name, value in rec["options"].items():
        if name == "seed" and not 0 <= value < 2**64:
            raise CheckpointError(path, f"field 'options.seed' must be in [0, 2**64), not {value}")
        schema = SCHEMA["options"][name]
        schema = schema.value if isinstance(schema, _Optional) else schema
        if name != "seed" and _is(value, int) and int in _as_tuple(schema) and value < 1:
            raise CheckpointError(path, f"field 'options.{name}' must be at least 1, not {value}")
    if rec["max_shard_size"] < 1:
        raise CheckpointError(path, f"field 'max_shard_size' must be at least 1, not {rec['max_shard_size']}")
    return rec


def read_options(rec: dict) -> GrowthOptions:
    """The options of a record read_record checked."""
    return GrowthOptions(**rec["options"])
