"""Training data as one stream of tokens, split into train and held-out.

Sources: the Python standard library's own `.py` files read as bytes (the
embedded default: on every machine, no download), any text file or folder
(bytes, vocabulary 256), or a pre-tokenized `uint16` token file (nanoGPT's
`.bin` format). Batches are a pure function of (seed, step), so a resumed or
multi-process run sees exactly the batches a single run would.
"""

from __future__ import annotations

import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import WsConvertError


class DataError(WsConvertError):
    """Training data that cannot be used."""


@dataclass
class Dataset:
    train: torch.Tensor  # 1-D int64 tokens
    val: torch.Tensor
    vocab_size: int
    name: str


HELD_OUT = 0.1  # the last 10% of the stream (for the stdlib: every tenth file)


def _read_files(files: list[Path], what: str) -> list[bytes]:
    chunks = [f.read_bytes() for f in files]
    if not any(chunks):
        raise DataError(f"{what}: no data (no files, or all empty)")
    return chunks


def load(spec: str | None = None, *, max_bytes: int = 64 << 20) -> Dataset:
    """`None` or "stdlib": the standard library; a `.bin` file: uint16 tokens;
    anything else: a text file or a folder of them, as bytes."""
    if spec in (None, "stdlib"):
        root = Path(sysconfig.get_paths()["stdlib"])
        files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and p.is_file())
        chunks = _read_files(files, str(root))
        train = b"\n".join(c for i, c in enumerate(chunks) if i % 10 != 9)[:max_bytes]
        val = b"\n".join(c for i, c in enumerate(chunks) if i % 10 == 9)[: max_bytes // 10]
        as_tokens = lambda b: torch.frombuffer(bytearray(b), dtype=torch.uint8).long()  # noqa: E731
        return Dataset(as_tokens(train), as_tokens(val), 256, "stdlib")
    path = Path(spec)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file() and path.suffix == ".bin":
        raw = path.read_bytes()
        if len(raw) % 2:
            raise DataError(f"{path}: {len(raw)} bytes is not a whole number of uint16 tokens")
        tokens = torch.frombuffer(bytearray(raw), dtype=torch.int16).long() & 0xFFFF
        vocab = int(tokens.max()) + 1 if len(tokens) else 0
    else:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        tokens = torch.frombuffer(bytearray(b"\n".join(_read_files(files, str(path)))[:max_bytes]),
                                  dtype=torch.uint8).long()
        vocab = 256
    cut = int(len(tokens) * (1 - HELD_OUT))
    return Dataset(tokens[:cut], tokens[cut:], vocab, str(path))


def batch(tokens: torch.Tensor, batch_size: int, context: int, seed: int, step: int,
          rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of `step` (random windows), and this rank's share of it."""
    if len(tokens) <= context + 1:
        raise DataError(f"{len(tokens)} tokens are too few for a context of {context}")
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, len(tokens) - context - 1, (batch_size,), generator=g)
    share = starts[rank * batch_size // world: (rank + 1) * batch_size // world]
    idx = share[:, None] + torch.arange(context + 1)
    window = tokens[idx]
    return window[:, :-1], window[:, 1:]
