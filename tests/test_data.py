"""Training data through a Hugging Face tokenizer: the tokens are the
tokenizer's own, cached once and read back without tokenizing, invalidated by
any change to a data file; held-out files chosen by path hash; uint32 tokens
for big vocabularies; and one-line refusals for data a model cannot use."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ws_convert import data
from ws_convert.data import DataError, load

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

COMMON = ["the", "model", "grows", "wide", "and", "deep", "tokens", "flow"]
FILES = 30  # enough that the path hash holds out a few


def _save_tokenizer(path: Path, words: list[str]) -> Path:
    """A word-level tokenizer over `words`, saved with save_pretrained; <unk> 0, <s> 1, </s> 2."""
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", *words])}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                         eos_token="</s>").save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """Every test caches under its own tmp_path, never in the user's home."""
    monkeypatch.setenv("WS_CONVERT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    return _save_tokenizer(tmp_path_factory.mktemp("tok"), COMMON + [f"w{i}" for i in range(FILES)])


def _write_corpus(root: Path, n: int = FILES, seed: int = 0) -> dict[str, str]:
    """n files (some in a subfolder), each tagged by its own word w{i}; returns relpath -> text."""
    rng = random.Random(seed)
    texts = {}
    for i in range(n):
        rel = f"sub/doc{i}.txt" if i % 3 == 0 else f"doc{i}.txt"
        body = " ".join(rng.choice(COMMON + ["unknown"]) for _ in range(rng.randint(5, 40)))
        texts[rel] = f"w{i} {body}\nw{i}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(texts[rel])
    return texts


def _expected_held(rels: list[str]) -> set[str]:
    return {r for r in rels if hashlib.sha256(r.encode()).digest()[0] < 26}


def _stream(tok, texts: list[str]) -> list[int]:
    out: list[int] = []
    for t in texts:
        if out:
            out.append(tok.eos_token_id)
        out += tok.encode(t, add_special_tokens=False)
    return out


class Calls:
    """Counts the tokenizer's encodings by wrapping the tokenizer class's __call__."""

    def __init__(self, monkeypatch) -> None:
        self.n = 0
        cls = next(c for c in transformers.PreTrainedTokenizerFast.__mro__ if "__call__" in c.__dict__)
        real = cls.__call__

        def counted(tok, *args, **kwargs):
            self.n += 1
            return real(tok, *args, **kwargs)

        monkeypatch.setattr(cls, "__call__", counted)


def test_tokens_are_the_tokenizers_own_and_the_held_out_files_hash_low(tmp_path, tok_dir):
    texts = _write_corpus(tmp_path / "corpus")
    held = _expected_held(list(texts))
    assert 0 < len(held) < FILES  # the corpus exercises the hash rule itself, not its fallbacks
    ds = load(str(tmp_path / "corpus"), tokenizer=tok_dir)
    tok = transformers.AutoTokenizer.from_pretrained(tok_dir)
    order = sorted(texts, key=lambda r: hashlib.sha256(r.encode()).digest())  # a file-level shuffle
    assert ds.train.tolist() == _stream(tok, [texts[r] for r in order if r not in held])
    assert ds.val.tolist() == _stream(tok, [texts[r] for r in order if r in held])
    assert ds.vocab_size == len(tok) == 3 + len(COMMON) + FILES and ds.train.dtype == torch.int64
    assert 2 in ds.train.tolist() and 0 in ds.train.tolist()  # EOS between documents; unknown words kept as <unk>


def test_held_out_files_do_not_depend_on_listing_order_place_or_other_files(tmp_path, tok_dir, monkeypatch):
    def held_tags(ds) -> set[int]:
        return set(ds.val.tolist()) - set(range(3 + len(COMMON)))

    texts = _write_corpus(tmp_path / "a")
    first = held_tags(load(str(tmp_path / "a"), tokenizer=tok_dir))
    assert first == {3 + len(COMMON) + int(Path(r).stem[3:]) for r in _expected_held(list(texts))}

    _write_corpus(tmp_path / "b")  # same files elsewhere, listed in reverse, plus one more file
    (tmp_path / "b" / "zz_new.txt").write_text("the model")
    rglob = Path.rglob
    monkeypatch.setattr(Path, "rglob", lambda self, pattern: reversed(list(rglob(self, pattern))))
    assert held_tags(load(str(tmp_path / "b"), tokenizer=tok_dir)) == first


def test_a_folder_is_read_shuffled_by_file_so_a_cut_stream_samples_the_whole_tree(tmp_path):
    """Files go into the stream in the order of their path's hash, not in
    path order, so cutting it at max_bytes keeps files from every directory."""
    rels = [f"{d}/{i}.txt" for d in "abcdefgh" for i in range(8)]
    for r in rels:
        (tmp_path / "tree" / r).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "tree" / r).write_text(f"<{r}>")
    kept = [r for r in rels if r not in _expected_held(rels)]
    ds = load(str(tmp_path / "tree"))
    text = bytes(ds.train.tolist()).decode()
    assert text == "\n".join(f"<{r}>" for r in sorted(kept, key=lambda r: hashlib.sha256(r.encode()).digest()))
    cut = bytes(load(str(tmp_path / "tree"), max_bytes=len(text) // 4).train.tolist()).decode()
    assert len({r.split("/")[0] for r in kept if f"<{r}>" in cut}) >= 4  # a quarter of the stream, most directories


def _names(low: bool, n: int) -> list[str]:
    """n file names that all hash below the held-out mark (low) or all above it."""
    names = (f"f{i}.txt" for i in range(10_000))
    return [r for r in names if bool(_expected_held([r])) == low][:n]


@pytest.mark.parametrize("low,n", [(False, 2), (False, 3), (True, 2), (True, 3)])
def test_a_small_folder_holds_out_at_least_one_file_and_keeps_one(tmp_path, tok_dir, low, n):
    """Whether the hash holds out none of the files or all of them, one is held out and one kept."""
    for i, name in enumerate(_names(low, n)):
        (tmp_path / "few").mkdir(exist_ok=True)
        (tmp_path / "few" / name).write_text(f"the w{i}")
    ds = load(str(tmp_path / "few"), tokenizer=tok_dir)
    kept, held = (set(t.tolist()) - set(range(3 + len(COMMON))) for t in (ds.train, ds.val))
    assert kept and held and not kept & held and len(kept | held) == n


def test_one_file_holds_out_its_last_tenth(tmp_path, tok_dir):
    path = tmp_path / "one.txt"
    path.write_text(" ".join(COMMON * 25) + " w7")
    ds = load(str(path), tokenizer=tok_dir)
    assert len(ds.train) == 180 and len(ds.val) == 21 and ds.val.tolist()[-1] == 3 + len(COMMON) + 7


def test_second_load_reads_the_cache_without_tokenizing(tmp_path, tok_dir, cache, monkeypatch):
    _write_corpus(tmp_path / "corpus")
    calls = Calls(monkeypatch)
    first = load(str(tmp_path / "corpus"), tokenizer=tok_dir)
    assert calls.n > 0
    files = sorted(cache.iterdir())
    assert [f.name.endswith(".bin") and not f.name.endswith(".u32.bin") for f in files] == [True, True]
    assert sorted(f.stat().st_size for f in files) == sorted([2 * len(first.train), 2 * len(first.val)])
    as_bin = [load(str(f)) for f in files]  # a cache file is itself a uint16 token file
    assert sorted(len(d.train) + len(d.val) for d in as_bin) == sorted([len(first.train), len(first.val)])

    calls.n = 0
    second = load(str(tmp_path / "corpus"), tokenizer=tok_dir)
    assert calls.n == 0
    assert torch.equal(second.train, first.train) and torch.equal(second.val, first.val)
    assert sorted(cache.iterdir()) == files


def test_a_changed_file_content_or_mtime_makes_a_new_cache(tmp_path, tok_dir, cache, monkeypatch):
    texts = _write_corpus(tmp_path / "corpus")
    first = load(str(tmp_path / "corpus"), tokenizer=tok_dir)
    calls = Calls(monkeypatch)
    kept = tmp_path / "corpus" / min(set(texts) - _expected_held(list(texts)))
    kept.write_text(kept.read_text() + " deep deep")
    changed = load(str(tmp_path / "corpus"), tokenizer=tok_dir)
    assert calls.n > 0 and len(changed.train) == len(first.train) + 2 and torch.equal(changed.val, first.val)
    assert len(list(cache.iterdir())) == 3  # a new train stream; the held-out one is reused

    calls.n = 0
    st = kept.stat()
    os.utime(kept, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    touched = load(str(tmp_path / "corpus"), tokenizer=tok_dir)
    assert calls.n > 0 and torch.equal(touched.train, changed.train)
    assert len(list(cache.iterdir())) == 4


def test_a_changed_tokenizer_makes_a_new_cache(tmp_path, tok_dir, cache):
    (tmp_path / "t.txt").write_text("the model grows wide w3")
    load(str(tmp_path / "t.txt"), tokenizer=tok_dir)
    other = _save_tokenizer(tmp_path / "other", list(reversed(COMMON)))
    ds = load(str(tmp_path / "t.txt"), tokenizer=other)
    assert ds.train.tolist() + ds.val.tolist() == [10, 9, 8, 7, 0]
    assert len(list(cache.iterdir())) == 2


def test_an_interrupted_write_leaves_no_cache_file(tmp_path, tok_dir, cache, monkeypatch):
    (tmp_path / "t.txt").write_text("the model grows")

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(data.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        load(str(tmp_path / "t.txt"), tokenizer=tok_dir)
    assert list(cache.iterdir()) == []


def test_a_vocabulary_over_65536_caches_uint32(tmp_path, cache):
    words = [f"v{i}" for i in range(70_000)]
    big = _save_tokenizer(tmp_path / "big", words)
    (tmp_path / "t.txt").write_text("v69999 v3 v65533 v65534 nope v12345 v0 v69000 v1 v2 v68000")
    ds = load(str(tmp_path / "t.txt"), tokenizer=big)
    tokens = ds.train.tolist() + ds.val.tolist()
    assert tokens == [70002, 6, 65536, 65537, 0, 12348, 3, 69003, 4, 5, 68003]
    assert ds.vocab_size == 70_003
    (file,) = cache.iterdir()
    assert file.name.endswith(".u32.bin") and file.stat().st_size == 4 * len(tokens)
    again = load(str(file))
    assert again.train.tolist() + again.val.tolist() == tokens


def test_u32_token_file_round_trip_and_range_check(tmp_path):
    tokens = torch.tensor([0, 70_000, 65_535, 65_536, 4_000_000_000, 12] * 50, dtype=torch.int64)
    path = tmp_path / "train.u32.bin"
    path.write_bytes(b"".join(int(t).to_bytes(4, "little") for t in tokens))
    ds = load(str(path))
    assert torch.equal(torch.cat([ds.train, ds.val]), tokens) and ds.vocab_size == 4_000_000_001
    assert load(str(path), vocab_size=4_000_000_001).vocab_size == 4_000_000_001
    with pytest.raises(DataError, match=f"{path}: token 4000000000 is outside the model's vocabulary of 100000"):
        load(str(path), vocab_size=100_000)
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(DataError, match=f"{path}: .* not a whole number of uint32 tokens"):
        load(str(path))


def test_uint16_token_file_range_check(tmp_path):
    path = tmp_path / "train.bin"
    path.write_bytes(b"".join(t.to_bytes(2, "little") for t in [5, 65_535, 300] * 10))
    assert load(str(path)).vocab_size == 65_536
    with pytest.raises(DataError, match=f"{path}: token 65535 is outside the model's vocabulary of 50257"):
        load(str(path), vocab_size=50_257)


def test_refusals_name_what_to_give(tmp_path, tok_dir):
    (tmp_path / "t.txt").write_text("the model w29")
    for spec, name in ((None, "stdlib"), (str(tmp_path / "t.txt"), str(tmp_path / "t.txt"))):
        with pytest.raises(DataError, match=rf"{name}: text needs the model's tokenizer \(--tokenizer DIR\).*"
                                            "not 32000"):
            load(spec, vocab_size=32_000)
    assert load(str(tmp_path / "t.txt"), vocab_size=256).vocab_size == 256
    empty = tmp_path / "weights"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(DataError, match=f"{empty}: no tokenizer files"):
        load(str(tmp_path / "t.txt"), tokenizer=empty)
    with pytest.raises(DataError, match=f"{tmp_path / 'absent'}: no tokenizer files"):
        load(str(tmp_path / "t.txt"), tokenizer=tmp_path / "absent")
    with pytest.raises(DataError, match=f"{tok_dir}: token {3 + len(COMMON) + 29} is outside the model's vocabulary"
                                        " of 20; give the model's own tokenizer"):
        load(str(tmp_path / "t.txt"), tokenizer=tok_dir, vocab_size=20)
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "a.txt").write_text("")
    with pytest.raises(DataError, match="no data"):
        load(str(tmp_path / "blank"), tokenizer=tok_dir)


def test_stdlib_through_a_tokenizer_holds_out_by_path_hash(tok_dir):
    ds = load(None, tokenizer=tok_dir, max_bytes=50_000)
    assert ds.name == "stdlib" and ds.vocab_size == len(transformers.AutoTokenizer.from_pretrained(tok_dir))
    assert len(ds.train) > 1000 and len(ds.val) > 100
    root, files, _ = data._text_files(None)
    kept, held = data._split_by_path(root, files)
    rels = [f.relative_to(root).as_posix() for f in files]
    assert {f.relative_to(root).as_posix() for f in held} == _expected_held(rels)
    assert 0.05 < len(held) / len(files) < 0.15


def test_cache_folder_rule(monkeypatch, tmp_path):
    assert data.cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("WS_CONVERT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_dir() == tmp_path / "xdg" / "ws-convert" / "tokens"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.cache_dir() == tmp_path / "home" / ".cache" / "ws-convert" / "tokens"


def test_byte_data_loads_without_transformers(tmp_path):
    (tmp_path / "t.txt").write_text("bytes need no tokenizer")
    code = ("import sys; sys.modules['transformers'] = None; from ws_convert.data import load; "
            f"print(load({str(tmp_path / 't.txt')!r}).vocab_size)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "256"
