"""Sources on the Hugging Face Hub: SRC may be a repo id (`org/name`, with a
revision) as well as a path. A local path of that name wins. The repo is
resolved through `huggingface_hub`: from its cache when offline
(`HF_HUB_OFFLINE=1`), else downloading only what growth reads (the
safetensors shards and index, the config, the tokenizer and generation
files), with its progress bars. The commit it resolved to is recorded, so
verify finds the very same files again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError

REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
FILES = ["*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json", "tokenizer*",
         "special_tokens_map.json", "added_tokens.json", "vocab.*", "merges.txt", "*.model", "*.tiktoken",
         "chat_template*"]


@dataclass(frozen=True)
class Resolved:
    """Where a SRC lies on this machine, and the Hub repo and commit it came from (if any)."""

    path: Path
    repo_id: str | None = None
    revision: str | None = None  # the commit hash


def is_repo_id(src: str | Path) -> bool:
    return REPO_ID.fullmatch(str(src)) is not None and not Path(src).exists()


def resolve(src: str | Path, revision: str | None = None) -> Resolved:
    """A local path as it is; a Hub repo id as its snapshot in the local cache."""
    if not is_repo_id(src):
        if revision is not None:
            raise CheckpointError(src, "--revision names a Hub revision, but this is a local path")
        return Resolved(Path(src))
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        local = Path(snapshot_download(str(src), revision=revision, allow_patterns=FILES))
    except (OSError, ValueError, HFValidationError) as exc:  # the hub's errors derive from these
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(src, f"no such local path, and not found on the Hugging Face Hub"
                                   f"{f' at revision {revision}' if revision else ''} ({reason})") from None
    return Resolved(local, str(src), local.name)
