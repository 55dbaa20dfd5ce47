"""The record a grown checkpoint carries of how it was made (ws_convert.json
and every shard's __metadata__), enough for `verify` to recompute it."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, fields
from pathlib import Path

from ._version import __version__
from .errors import CheckpointError
from .plan import GrowthOptions
from .reader import PICKLE_SUFFIXES, Checkpoint, header_sha256

TOOL = "ws-convert"


def fingerprint(path: Path) -> str:
    """SHA-256 of a safetensors header (a pickle file: of the whole file)."""
    if path.suffix in PICKLE_SUFFIXES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    return header_sha256(path)


def record(ckpt: Checkpoint, options: GrowthOptions, arch: str, base_shapes: str | None,
           allow_pickle: bool) -> dict:
    """No timestamps or host names: the same command must give the same bytes."""
    return {
        "tool": TOOL,
        "version": __version__,
        "source": {"path": str(Path(ckpt.path).resolve()),
                   "files": [{"name": f.name, "header_sha256": fingerprint(f)} for f in ckpt.files]},
        "arch": arch,
        "options": asdict(options),
        "base_shapes": str(Path(base_shapes).resolve()) if base_shapes else None,
        "allow_pickle": allow_pickle,
    }


def read_options(rec: dict, where: str) -> GrowthOptions:
    try:
        names = {f.name for f in fields(GrowthOptions)}
        return GrowthOptions(**{k: v for k, v in rec["options"].items() if k in names})
    except (KeyError, TypeError) as exc:
        raise CheckpointError(where, f"provenance record has no usable options ({exc})") from None
