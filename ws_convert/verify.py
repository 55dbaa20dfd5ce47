"""`verify`: check every file of a grown checkpoint against what grow writes
from the recorded source and knobs: each shard's header byte for byte, every
tensor recomputed and compared, the index, config.json, base_shapes.bsh and
ws_convert.json rebuilt, nothing missing and nothing extra. Differences that
a source changed since explains (grow records a content hash of every source
tensor) are told apart from corruption of the output."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .engine import DEFAULT_CHUNK_BYTES, Chunk, execute, planned_writer
from .errors import CheckpointError, PlanError
from .hub import resolve
from .plan import Plan, Source, make_plan
from .provenance import (GROWN, HASH_ALGORITHM, HASHES, TOOL, SourceHasher, check_record, config_sha256, fingerprint,
                         read_options, read_record, record_text, without_hashes)
from .reader import INDEX_NAME, Checkpoint, open_checkpoint, open_regular, parse_json
from .safetensors_spec import MAX_HEADER, METADATA_KEY
from .writer import PROVENANCE_NAME, CheckpointWriter, hash_file


@dataclass(frozen=True)
class Problem:
    """One output file that is missing, unexpected, or differs from what grow writes."""

    kind: str  # "missing", "unexpected" or "differs"
    file: str
    detail: str = ""


@dataclass
class VerifyReport:
    out: Path
    source: Path
    made_by: str  # the ws-convert version that wrote the output
    checked: int = 0  # output tensors recomputed and compared
    files: list[Problem] = field(default_factory=list)
    differing: list[str] = field(default_factory=list)  # output tensors that differ, their source unchanged
    stale: list[str] = field(default_factory=list)  # output tensors that differ because their source changed
    source_changed: list[str] = field(default_factory=list)  # source tensors whose content changed since
    source_config_changed: bool = False
    source_files_changed: list[str] = field(default_factory=list)  # source files whose header changed since
    source_copies_changed: list[str] = field(default_factory=list)  # copied source files changed or gone since

    @property
    def source_layout_changed(self) -> bool:
        """Names, dtypes, shapes or config of the source changed: the plan itself may differ."""
        return bool(self.source_files_changed) or self.source_config_changed

    @property
    def corrupt(self) -> bool:
        """The output differs in a way no change of the source explains."""
        return bool(self.differing) or (bool(self.files) and not self.source_layout_changed)

    @property
    def ok(self) -> bool:
        return not (self.files or self.differing or self.stale or self.source_changed or self.source_config_changed
                    or self.source_copies_changed)


def verify(out: str | Path, *, source: str | Path | None = None, allow_pickle: bool = False,
           threads: int | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> VerifyReport:
    """Recompute everything grow wrote to `out` from its source (the recorded
    one, or `source`) on the CPU and compare it with the files. A pickle
    source is opened only with `allow_pickle`."""
    out = Path(out)
    prov_path = out / PROVENANCE_NAME
    rec = read_record(prov_path)
    if rec[HASHES]["algorithm"] != HASH_ALGORITHM:
        raise CheckpointError(prov_path, f"source hashes are {rec[HASHES]['algorithm']!r}; this version of "
                                         f"ws-convert computes {HASH_ALGORITHM}")
    src_path = Path(source) if source is not None else find_source(rec, out)
    if rec["allow_pickle"] and not allow_pickle:
        raise CheckpointError(src_path, "the output was grown from a pickle checkpoint, which can run code when "
                                        "loaded; pass --allow-pickle to verify from it")
    with open_checkpoint(src_path, allow_pickle=allow_pickle) as src, SourceHasher(src) as hasher:
        report = VerifyReport(out, Path(src.path), rec["version"])
        recorded = {f["name"]: f["header_sha256"] for f in rec["source"]["files"]}
        now = {f.name: fingerprint(f) for f in src.files}
        report.source_files_changed = sorted(n for n in recorded.keys() | now.keys() if recorded.get(n) != now.get(n))
        report.source_config_changed = config_sha256(src.config) != rec["source"]["config_sha256"]
        plan = _replan(src, rec, report)
        writer = planned_writer(out, plan, rec)
        copies, grown = rec[HASHES]["files"], rec[HASHES].get(GROWN, {})
        report.files = (_check_record(rec, plan) + _check_files(out, writer, rec, {**copies, **grown})
                        + _check_copies(out, copies) + _check_copies(out, grown, "the file grow wrote"))
        report.source_copies_changed = sorted(n for n, want in copies.items()
                                              if _content(Path(src.path).parent / n) != want)
        checked = [t for s in writer.shards if _is_file_of(out / s.file, s.size) for t in s.tensors]
        differ = _compare_data(out, plan, src, writer, {t.name for t in checked}, threads, chunk_bytes)
        hashes = rec[HASHES]["tensors"]
        current = hasher.result()["tensors"]
    report.checked = len(checked)
    report.source_changed = sorted(n for n in hashes.keys() | current.keys() if hashes.get(n) != current.get(n))
    changed = set(report.source_changed)
    for t in plan.tensors:
        if t.name in differ:
            (report.stale if t.source in changed else report.differing).append(t.name)
    return report


def find_source(rec: dict, out: Path) -> Path:
    """The recorded source: beside the output as it was when grown (both may
    have moved together), else at its absolute path."""
    relative, absolute = rec["source"]["relative_path"], Path(rec["source"]["path"])
    candidates = ([Path(os.path.normpath(out.resolve() / relative))] if relative else []) + [absolute]
    for path in candidates:
        if path.exists():
            return path
    if rec["source"].get("hub_repo_id"):  # the same commit, from the Hub or its cache
        return resolve(rec["source"]["hub_repo_id"], rec["source"]["hub_revision"]).path
    raise CheckpointError(out / PROVENANCE_NAME, f"the source {absolute} is gone"
                          + (f" (nor at {candidates[0]})" if relative else "") + "; pass --source PATH")


def _replan(src: Checkpoint, rec: dict, report: VerifyReport) -> Plan:
    try:
        return make_plan(Source.of(src), read_options(rec), rec["base_shapes"])
    except PlanError as exc:
        if report.source_layout_changed:
            raise PlanError(f"the source changed since the output was made and no longer plans: {exc}") from None
        raise


def _check_record(rec: dict, plan: Plan) -> list[Problem]:
    """What this version would record but the record says otherwise (the
    version itself may legitimately be older: the report says whose)."""
    problems = []
    if rec["tool"] != TOOL:
        problems.append(Problem("differs", PROVENANCE_NAME, f"tool is {rec['tool'][:80]!r}, not {TOOL!r}"))
    if rec["arch"] != plan.arch:
        problems.append(Problem("differs", PROVENANCE_NAME, f"arch is {rec['arch'][:80]!r}, the source plans "
                                                            f"as {plan.arch!r}"))
    return problems


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _is_file_of(path: Path, size: int) -> bool:
    st = _lstat(path)
    return st is not None and stat.S_ISREG(st.st_mode) and st.st_size == size


def _read(path: Path, n: int) -> bytes:
    """The first `n` bytes of a regular file."""
    fd = open_regular(path)
    try:
        return os.pread(fd, n, 0)
    finally:
        os.close(fd)


def _first_difference(have: bytes, want: bytes) -> int:
    return next((i for i, (a, b) in enumerate(zip(have, want)) if a != b), min(len(have), len(want)))


def _compare_file(out: Path, name: str, want: bytes, size: int, what: str = "it") -> Problem | None:
    """`want`: `what` the file starts with (all of it for a side file), of `size` bytes in all."""
    st = _lstat(out / name)
    if st is None:
        return Problem("missing", name)
    if not stat.S_ISREG(st.st_mode):
        return Problem("differs", name, "is not a regular file")
    if st.st_size != size:
        return Problem("differs", name, f"has {st.st_size} bytes, grow writes {size}")
    have = _read(out / name, len(want))
    if have != want:
        at = _first_difference(have, want)
        return Problem("differs", name, f"{what} differs from what grow writes at byte {at}")
    return None


def _record_copy(path: Path) -> dict | str:
    """The record in a shard header's __metadata__, or why there is no usable one."""
    try:
        n = int.from_bytes(_read(path, 8), "little")
        header = parse_json(_read(path, 8 + min(n, MAX_HEADER))[8:], path, "header")
        metadata = header.get(METADATA_KEY) if isinstance(header, dict) else None
        copy = metadata.get("ws_convert") if isinstance(metadata, dict) else None
        if not isinstance(copy, str):
            return "there is none"
        return check_record(parse_json(copy, path, "the record copy"), path, copy=True)
    except CheckpointError as exc:
        return exc.reason
    except OSError as exc:
        return exc.strerror or str(exc)


def _content(path: Path) -> dict | None:
    """{"bytes", "xxh3_128"} of a regular file as grow records a copied one,
    read in blocks; None when it is missing or not a regular file."""
    try:
        fd = open_regular(path)
    except CheckpointError:
        return None
    try:
        size, digest = hash_file(fd)
    finally:
        os.close(fd)
    return {"bytes": size, HASH_ALGORITHM: digest}


def _check_copies(out: Path, copies: dict[str, dict], what: str = "the source's file") -> list[Problem]:
    """Files grow copied (or computed), against the sizes and hashes it recorded."""
    problems = []
    for name, want in copies.items():
        st = _lstat(out / name)
        if st is None:
            problems.append(Problem("missing", name))
        elif not stat.S_ISREG(st.st_mode):
            problems.append(Problem("differs", name, "is not a regular file"))
        elif (have := _content(out / name)) != want:
            detail = (f"has {have['bytes']} bytes, {what} had {want['bytes']}"
                      if have and have["bytes"] != want["bytes"] else
                      f"is not {what} byte for byte (its xxh3_128 differs from the record)")
            problems.append(Problem("differs", name, detail))
    return problems


def _check_files(out: Path, writer: CheckpointWriter, rec: dict, copied: Iterable[str]) -> list[Problem]:
    """Every file of the directory against what grow writes: shards' headers
    and sizes, and the side files in full (`copied`: the source's files grow
    copied, checked by `_check_copies`)."""
    problems = []
    disagree: list[tuple[str, list[str]]] = []  # shards whose record copy disagrees with ws_convert.json
    for shard in writer.shards:
        problem = _compare_file(out, shard.file, shard.header, shard.size, "its header")
        if problem is None:
            continue
        problems.append(problem)
        if problem.kind != "differs":
            continue
        copy = _record_copy(out / shard.file)
        if isinstance(copy, str):
            problems.append(Problem("differs", shard.file, f"its copy of the record: {copy}"))
        elif copy != without_hashes(rec):
            disagree.append((shard.file, sorted(k for k in copy if copy[k] != rec[k])))
    if disagree:
        first, keys = disagree[0]
        more = f" (and {len(disagree) - 1} more shards)" if len(disagree) > 1 else ""
        fields = ", ".join(f"'{k}'" for k in keys)
        problems.append(Problem("differs", PROVENANCE_NAME,
                                f"disagrees on {fields} with the copy in the header of {first}{more}"))
    side = {**writer.files, PROVENANCE_NAME: record_text(rec)}
    index = writer.index_text()
    if index is not None:
        side[INDEX_NAME] = index
    for name, content in side.items():
        data = content.encode("utf-8")
        problem = _compare_file(out, name, data, len(data))
        if problem is not None:
            problems.append(problem)
    expected = {s.file for s in writer.shards} | side.keys() | set(copied)
    problems += [Problem("unexpected", name) for name in sorted(set(os.listdir(out)) - expected)]
    return problems


class _OutputReader:
    """Output bytes by plain reads, one file open at a time (the sink runs on
    one thread, mostly through one shard after another)."""

    def __init__(self, out: Path) -> None:
        self.out, self.file, self.fd = out, "", -1

    def read(self, file: str, offset: int, n: int) -> bytes:
        if file != self.file:
            self.close()
            self.fd, self.file = open_regular(self.out / file), file
        return os.pread(self.fd, n, offset)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.fd, self.file = -1, ""


def _compare_data(out: Path, plan: Plan, src: Checkpoint, writer: CheckpointWriter, names: set[str],
                  threads: int | None, chunk_bytes: int) -> set[str]:
    """Names of the tensors among `names` whose bytes at their planned place
    differ from a recomputation."""
    where = {t.name: (s.file, s.offsets[t.name]) for s in writer.shards for t in s.tensors}
    tensors = [t for t in plan.tensors if t.name in names]
    row_bytes = {t.name: t.row_bytes for t in tensors}
    reader = _OutputReader(out)
    differ: set[str] = set()

    def compare(data: memoryview, chunks: list[Chunk]) -> None:
        at = 0
        for name, r0, n in chunks:
            file, offset = where[name]
            if reader.read(file, offset + r0 * row_bytes[name], n) != data[at:at + n]:
                differ.add(name)
            at += n

    try:
        execute(plan, src, compare, threads=threads, chunk_bytes=chunk_bytes, tensors=tensors)
    finally:
        reader.close()
    return differ


__all__ = ["verify", "VerifyReport", "Problem", "find_source"]
