"""`verify`: recompute a grown checkpoint from its recorded source and knobs
and compare it with what is on disk, tensor by tensor, byte by byte."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .engine import DEFAULT_CHUNK_BYTES, execute
from .errors import CheckpointError
from .plan import Source, make_plan
from .provenance import fingerprint, read_options
from .reader import open_checkpoint
from .writer import PROVENANCE_NAME


@dataclass
class VerifyReport:
    out: Path
    source: str
    checked: int = 0
    differing: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    source_changed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.differing or self.missing or self.unexpected)


def verify(out: str | Path, *, threads: int | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> VerifyReport:
    """Recompute every tensor of the grown checkpoint at `out` on the CPU, as
    `grow` computes it, and compare the bytes with the files."""
    out = Path(out)
    prov_path = out / PROVENANCE_NAME
    try:
        rec = json.loads(prov_path.read_text(encoding="utf-8"))
        src_path = rec["source"]["path"]
        recorded = {f["name"]: f["header_sha256"] for f in rec["source"]["files"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(prov_path, f"no readable provenance record ({exc})") from None
    options = read_options(rec, str(prov_path))
    report = VerifyReport(out, src_path)
    with open_checkpoint(src_path, allow_pickle=bool(rec.get("allow_pickle"))) as src, \
            open_checkpoint(out) as grown:
        report.source_changed = sorted(
            f.name for f in src.files if recorded.get(f.name) != fingerprint(f)) + sorted(
            set(recorded) - {f.name for f in src.files})
        plan = make_plan(Source.of(src), options, rec.get("base_shapes"))
        names = {t.name for t in plan.tensors}
        report.missing = sorted(names - set(grown.tensors))
        report.unexpected = sorted(set(grown.tensors) - names)
        present = [t for t in plan.tensors if t.name in grown.tensors]
        mismatched = {t.name for t in present if (grown.info(t.name).dtype, grown.info(t.name).shape)
                      != (t.dtype, t.shape)}
        checked = [t for t in present if t.name not in mismatched]
        on_disk = {t.name: grown.buffer(t.name, 0, t.shape[0] if t.shape else 1) for t in checked}
        row_bytes = {t.name: t.row_bytes for t in checked}
        differ: set[str] = set()

        def compare(name: str, want: memoryview, r0: int) -> None:
            start = r0 * row_bytes[name]
            if on_disk[name][start:start + want.nbytes] != want:
                differ.add(name)

        execute(plan, src, compare, threads=threads, chunk_bytes=chunk_bytes, tensors=checked)
        report.checked = len(checked)
        report.differing = [t.name for t in present if t.name in mismatched or t.name in differ]
    return report
