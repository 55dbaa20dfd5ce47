"""Training data as one stream of tokens, split into train and held-out.

Sources: the Python standard library's own `.py` files (the embedded default:
on every machine, no download), any text file or folder, or a pre-tokenized
token file: `NAME.bin` holds little-endian uint16 tokens (nanoGPT's format),
`NAME.u32.bin` little-endian uint32 tokens, for vocabularies over 65,536.

Text is read as bytes (vocabulary 256) unless a Hugging Face tokenizer folder
is given; then each file is tokenized as one document, with the tokenizer's
EOS between documents, and the tokens are cached (in the `.bin` / `.u32.bin`
formats above) under `cache_dir()`, keyed by the tokenizer's files and each
data file's path, size and mtime, so a second run does not tokenize again.

Held out: for a folder, the files whose relative path hashes low (about 10%,
stable when files are added, the same in every listing order), both parts
read in the order of that hash (a file-level shuffle); for the stdlib read
as bytes, every tenth file in path order (as the shipped model was
trained); for one file or a token file, its last 10%.
Batches are a pure function of (seed, step), so a resumed or multi-process run
sees exactly the batches a single run would.
"""

from __future__ import annotations

import array
import hashlib
import json
import os
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import torch

from .errors import WsConvertError, printable


class DataError(WsConvertError):
    """Training data that cannot be used."""


@dataclass
class Dataset:
    train: torch.Tensor  # 1-D int64 tokens
    val: torch.Tensor
    vocab_size: int
    name: str


HELD_OUT = 0.1  # the last 10% of the stream (for the stdlib as bytes: every tenth file)
HELD_OUT_BELOW = 26  # a tokenized folder holds out a file when sha256(its relative path) starts below this: ~10%
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.json", "vocab.txt",
                   "merges.txt")
_CACHE_FORMAT = 1  # bump when what a cache file holds changes, so older caches are not read
_TOKENIZE_CHUNK = 1 << 20  # bytes of text per tokenizer call: big enough for its threads, small for progress


def cache_dir() -> Path:
    """Where token caches live: $WS_CONVERT_CACHE, else $XDG_CACHE_HOME/ws-convert/tokens,
    else ~/.cache/ws-convert/tokens."""
    if os.environ.get("WS_CONVERT_CACHE"):
        return Path(os.environ["WS_CONVERT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ws-convert" / "tokens"


def _read_files(files: list[Path], what: str) -> list[bytes]:
    chunks = [f.read_bytes() for f in files]
    if not any(chunks):
        raise DataError(f"{what}: no data (no files, or all empty)")
    return chunks


def _token_width(path: Path) -> int | None:
    """Bytes per token of a pre-tokenized file, or None for text."""
    if not path.is_file() or path.suffix != ".bin":
        return None
    return 4 if path.name.endswith(".u32.bin") else 2


def _as_tensor(tokens: array.array) -> torch.Tensor:
    """Unsigned tokens in native byte order, as int64."""
    if not tokens:
        return torch.zeros(0, dtype=torch.long)
    signed = torch.frombuffer(tokens, dtype=torch.int16 if tokens.itemsize == 2 else torch.int32)
    return signed.long() & ((1 << 8 * tokens.itemsize) - 1)


def _from_le(raw: bytes, width: int) -> torch.Tensor:
    """Little-endian unsigned tokens of `width` bytes, as int64."""
    tokens = array.array(_array_code(width))
    tokens.frombytes(raw)
    if sys.byteorder == "big":
        tokens.byteswap()
    return _as_tensor(tokens)


def _array_code(width: int) -> str:
    return next(code for code in "HIL" if array.array(code).itemsize == width)


def is_tokenizer_file(name: str) -> bool:
    return name in TOKENIZER_FILES or name.endswith(".tiktoken")


def tokenizer_files(path: Path) -> list[Path]:
    """The files a tokenizer was saved as in folder `path` (none if it is not a folder)."""
    return sorted(p for p in path.iterdir() if is_tokenizer_file(p.name) and p.is_file()) if path.is_dir() else []


def _open_tokenizer(path: Path) -> tuple[Any, str]:
    """The tokenizer saved in `path`, and a digest of its files' bytes."""
    files = tokenizer_files(path)
    if not files:
        raise DataError(f"{path}: no tokenizer files (tokenizer.json, tokenizer_config.json, ...); "
                        "give the folder the model's tokenizer was saved to")
    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        raise DataError(f"{path}: reading a tokenizer needs transformers (pip install transformers)") from e
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:  # a broken tokenizer folder fails in many ways; each is one line for a person
        raise DataError(printable(f"{path}: the tokenizer does not load: {type(e).__name__}: {e}")) from e
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return tok, digest.hexdigest()


def _split_by_path(root: Path, files: list[Path]) -> tuple[list[Path], list[Path]]:
    """(kept, held out) files, chosen by a hash of each relative path: the same
    choice on every machine and in every listing order, and adding a file moves
    no other file across the split. Each part comes in the order of that hash,
    a file-level shuffle: a stream cut short (max_bytes) samples the whole
    tree, not its first directories, as the held-out files do."""
    digest = {f: hashlib.sha256(f.relative_to(root).as_posix().encode("utf-8", "surrogateescape")).digest()
              for f in files}
    held = {f for f in files if digest[f][0] < HELD_OUT_BELOW}
    if not held:
        held = {min(files, key=digest.__getitem__)}
    if len(held) == len(files):
        held.remove(max(files, key=digest.__getitem__))
    shuffled = sorted(files, key=digest.__getitem__)
    return [f for f in shuffled if f not in held], [f for f in shuffled if f in held]


def _tokenize(tok: Any, tok_dir: Path, used: list[tuple[str, int, int, int]], width: int,
              what: str) -> array.array:
    """The documents' tokens, EOS between them, with a progress bar on stderr."""
    out = array.array(_array_code(width))
    eos = tok.eos_token_id
    label = f"tokenizing {what} (once; cached in {cache_dir()})"
    with click.progressbar(length=sum(n for *_, n in used), label=label, file=sys.stderr) as bar:
        start = 0
        while start < len(used):
            end, size = start, 0
            while end < len(used) and (end == start or size + used[end][3] <= _TOKENIZE_CHUNK):
                size += used[end][3]
                end += 1
            texts = []
            for path, _, _, n in used[start:end]:
                with open(path, "rb") as fh:
                    texts.append(fh.read(n).decode("utf-8", errors="replace"))
            for ids in tok(texts, add_special_tokens=False, verbose=False)["input_ids"]:
                if not ids:
                    continue
                if out and eos is not None:
                    out.append(eos)
                try:
                    out.extend(ids)
                except OverflowError as e:
                    raise DataError(f"{tok_dir}: the tokenizer gave a token id beyond its {len(tok)} tokens") from e
            bar.update(size)
            start = end
    return out


def _write_atomic(path: Path, tokens: array.array) -> None:
    """Write `tokens` little-endian; a run killed midway leaves no half file under `path`."""
    if sys.byteorder == "big":
        tokens = array.array(tokens.typecode, tokens)
        tokens.byteswap()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                tokens.tofile(fh)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        raise DataError(f"{path.parent}: cannot write the token cache ({e.strerror}); "
                        "set WS_CONVERT_CACHE to a writable folder") from e


def _token_stream(tok: Any, tok_dir: Path, tok_digest: str, files: list[Path], budget: int,
                  what: str) -> torch.Tensor:
    """The first `budget` bytes of `files`, tokenized, or read from the cache
    when these tokenizer files and these data files were tokenized before."""
    used = []  # (path, size, mtime_ns, bytes read): what the cache key names
    for f in files:
        if budget <= 0:
            break
        st = f.stat()
        used.append((str(f.resolve()), st.st_size, st.st_mtime_ns, min(st.st_size, budget)))
        budget -= used[-1][3]
    width = 2 if len(tok) <= 1 << 16 else 4
    key = hashlib.sha256(json.dumps([_CACHE_FORMAT, tok_digest, used]).encode()).hexdigest()[:40]
    cache = cache_dir() / f"{key}{'.bin' if width == 2 else '.u32.bin'}"
    if cache.is_file():
        return _from_le(cache.read_bytes(), width)
    tokens = _tokenize(tok, tok_dir, used, width, what)
    _write_atomic(cache, tokens)
    return _as_tensor(tokens)


def _check_range(tokens: torch.Tensor, limit: int | None, what: object, whose: str, fix: str) -> None:
    if limit is not None and len(tokens) and int(tokens.max()) >= limit:
        raise DataError(f"{what}: token {int(tokens.max())} is outside {whose} of {limit}; {fix}")


def _text_files(spec: str | None) -> tuple[Path, list[Path], str]:
    """(root, files, name) of a text source: the stdlib, a file or a folder."""
    if spec in (None, "stdlib"):
        root = Path(sysconfig.get_paths()["stdlib"])
        files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and p.is_file())
        return root, files, "stdlib"
    path = Path(spec)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return path, files, str(path)


def load(spec: str | None = None, *, tokenizer: str | Path | None = None, vocab_size: int | None = None,
         max_bytes: int = 64 << 20) -> Dataset:
    """`None` or "stdlib": the standard library; a `.bin` / `.u32.bin` file:
    uint16 / uint32 tokens; anything else: a text file or a folder of them, as
    bytes, or tokenized by the Hugging Face tokenizer saved in folder
    `tokenizer`. `vocab_size` is the model's: tokens outside it are refused,
    and so is byte data for a vocabulary other than 256. `max_bytes` bounds the
    text read for training (a tenth of it for held-out files)."""
    if spec not in (None, "stdlib") and not Path(spec).exists():
        raise DataError(f"{spec}: no such file or folder")
    tok, tok_digest = _open_tokenizer(Path(tokenizer)) if tokenizer is not None else (None, "")
    width = _token_width(Path(spec)) if spec not in (None, "stdlib") else None
    if width:
        path = Path(spec)
        raw = path.read_bytes()
        if len(raw) % width:
            raise DataError(f"{path}: {len(raw)} bytes is not a whole number of uint{8 * width} tokens")
        tokens = _from_le(raw, width)
        fix = "give the model's tokenizer, or data tokenized with it"
        _check_range(tokens, vocab_size, path, "the model's vocabulary", fix)
        if tok is not None:
            _check_range(tokens, len(tok), path, "the tokenizer's vocabulary", fix)
        vocab = len(tok) if tok is not None else vocab_size or (int(tokens.max()) + 1 if len(tokens) else 0)
        cut = int(len(tokens) * (1 - HELD_OUT))
        return Dataset(tokens[:cut], tokens[cut:], vocab, str(path))
    root, files, name = _text_files(spec)
    if tok is None:
        if vocab_size not in (None, 256):
            raise DataError(f"{name}: text needs the model's tokenizer (--tokenizer DIR); bytes suit only a "
                            f"byte-level vocabulary of 256, not {vocab_size}")
        return _bytes(root, files, name, max_bytes)
    if not any(f.stat().st_size for f in files):
        raise DataError(f"{name}: no data (no files, or all empty)")
    using = (tok, Path(tokenizer), tok_digest)
    if len(files) == 1:
        tokens = _token_stream(*using, files, max_bytes, name)
        cut = int(len(tokens) * (1 - HELD_OUT))
        train, val = tokens[:cut], tokens[cut:]
    else:
        kept, held = _split_by_path(root, files)
        train, val = _token_stream(*using, kept, max_bytes, name), _token_stream(*using, held, max_bytes // 10, name)
    _check_range(torch.cat([train, val]), vocab_size, tokenizer, "the model's vocabulary",
                 "give the model's own tokenizer")
    return Dataset(train, val, len(tok), name)


def _bytes(root: Path, files: list[Path], name: str, max_bytes: int) -> Dataset:
    """Text as bytes, vocabulary 256: the stdlib holds out every tenth file, a
    folder the files its path hash picks, one file its last 10%."""
    as_tokens = lambda b: torch.frombuffer(bytearray(b), dtype=torch.uint8).long()  # noqa: E731
    if name == "stdlib" or len(files) > 1:
        kept, held = ([f for i, f in enumerate(files) if i % 10 != 9], files[9::10]) if name == "stdlib" \
            else _split_by_path(root, files)
        data = dict(zip(files, _read_files(files, str(root))))  # refuses a folder of no data, naming it
        train = b"\n".join(data[f] for f in kept)[:max_bytes]
        val = b"\n".join(data[f] for f in held)[: max_bytes // 10]
        return Dataset(as_tokens(train), as_tokens(val), 256, name)
    tokens = as_tokens(b"\n".join(_read_files(files, str(root)))[:max_bytes])
    cut = int(len(tokens) * (1 - HELD_OUT))
    return Dataset(tokens[:cut], tokens[cut:], 256, name)


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
