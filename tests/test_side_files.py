"""The grown directory is complete: the source's tokenizer, chat template,
generation config and other non-weight files are copied byte for byte,
recorded in ws_convert.json and checked by verify."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from models import tiny
from ws_convert.cli import main

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"


def _tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A tiny word-level tokenizer built here, without downloads."""
    words = ["<unk>", "<s>", "</s>", "hello", "world"]
    model = tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>")
    tok = tokenizers.Tokenizer(model)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                                eos_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A tiny Llama saved with save_pretrained, with its tokenizer and generation config."""
    cls, config = tiny("llama")
    path = tmp_path_factory.mktemp("side") / "llama"
    cls(config).save_pretrained(path)
    transformers.GenerationConfig(bos_token_id=1, eos_token_id=2, max_new_tokens=7, temperature=0.5,
                                  do_sample=True).save_pretrained(path)
    _tokenizer().save_pretrained(path)
    (path / "notes.txt").write_bytes(bytes(range(256)) * 4)  # any other file, not UTF-8
    return path


def _grow(*args: object) -> str:
    res = CliRunner().invoke(main, ["grow", *map(str, args), "--to-width", "128"])
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="module")
def grown(source: Path) -> Path:
    out = source.parent / "grown"
    _grow(source, "-o", out)
    return out


def _others(path: Path) -> set[str]:
    return {p.name for p in path.iterdir()
            if not p.name.endswith(".safetensors") and p.name not in ("config.json", "ws_convert.json", "base_shapes.bsh")}


def test_tokenizer_and_generation_config_load_from_the_grown_directory(source, grown):
    tok, want = transformers.AutoTokenizer.from_pretrained(grown), transformers.AutoTokenizer.from_pretrained(source)
    assert tok("hello world")["input_ids"] == want("hello world")["input_ids"] == [3, 4]
    assert tok.chat_template == CHAT_TEMPLATE
    assert (tok.bos_token, tok.eos_token) == ("<s>", "</s>")
    gen = transformers.GenerationConfig.from_pretrained(grown)
    assert gen.to_dict() == transformers.GenerationConfig.from_pretrained(source).to_dict()
    assert gen.max_new_tokens == 7


def test_every_other_file_is_copied_byte_for_byte_and_recorded(source, grown):
    names = _others(source)
    assert {"generation_config.json", "tokenizer.json", "tokenizer_config.json", "notes.txt"} <= names
    assert _others(grown) == names
    for name in names:
        assert (grown / name).read_bytes() == (source / name).read_bytes(), name
    recorded = json.loads((grown / "ws_convert.json").read_text())["source_hashes"]["files"]
    assert sorted(recorded) == sorted(names)
    assert recorded["notes.txt"]["bytes"] == 1024
    res = CliRunner().invoke(main, ["verify", str(grown)])
    assert res.exit_code == 0 and "ok:" in res.output, res.output


def _copy_tree(src: Path, dst: Path) -> None:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())


def test_verify_names_an_edited_or_missing_copy(tmp_path, grown):
    out = tmp_path / "out"
    _copy_tree(grown, out)
    ws = json.loads((out / "ws_convert.json").read_text())
    ws["source"]["relative_path"] = None  # the source at its absolute path
    (out / "ws_convert.json").write_text(json.dumps(ws, indent=2, sort_keys=True) + "\n")
    edited = (out / "tokenizer.json").read_bytes().replace(b"hello", b"jello")
    (out / "tokenizer.json").write_bytes(edited)
    (out / "generation_config.json").unlink()
    res = CliRunner().invoke(main, ["verify", str(out)])
    assert res.exit_code == 1
    assert "differs: tokenizer.json: is not the source's file byte for byte" in res.output, res.output
    assert "missing: generation_config.json" in res.output
    assert "FAILED: the output is corrupt" in res.output


def test_verify_reports_a_source_file_changed_since(tmp_path, source):
    src = tmp_path / "src"
    _copy_tree(source, src)
    _grow(src, "-o", tmp_path / "out", "-q")
    (src / "tokenizer_config.json").write_text("{}")
    res = CliRunner().invoke(main, ["verify", str(tmp_path / "out")])
    assert res.exit_code == 1
    assert "the source changed since: file tokenizer_config.json" in res.output, res.output


def test_links_out_and_fifos_are_not_copied_and_are_named(tmp_path, source):
    src = tmp_path / "src"
    _copy_tree(source, src)
    secret = tmp_path / "secret.txt"
    secret.write_text("not the model's")
    os.symlink(secret, src / "special_tokens_map.json")
    os.symlink("tokenizer.json", src / "linked.json")  # inside the directory: copied as a file
    os.mkfifo(src / "pipe.txt")
    (src / ".hidden").write_text("x")
    (src / "sub").mkdir()
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["grow", str(src), "-o", str(out), "--to-width", "128"])
    assert res.exit_code == 0, res.output
    assert "note: not copied: special_tokens_map.json (a symlink leading out of the source directory)" in res.stderr
    assert "note: not copied: pipe.txt (not a regular file)" in res.stderr
    names = {p.name for p in out.iterdir()}
    assert not {"special_tokens_map.json", "pipe.txt", ".hidden", "sub"} & names
    assert not (out / "linked.json").is_symlink()
    assert (out / "linked.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    assert CliRunner().invoke(main, ["verify", str(out)]).exit_code == 0


def test_the_sources_weights_in_other_formats_are_not_copied_and_are_named(tmp_path, source):
    src = tmp_path / "src"
    _copy_tree(source, src)
    others = ["pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack", "model.onnx", "params.json"]
    for name in others:
        (src / name).write_text("{}")
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["grow", str(src), "-o", str(out), "--to-width", "128"])
    assert res.exit_code == 0, res.output
    for name in others:
        assert f"note: not copied: {name} (weights or sizes of the source in another format, not grown)" in res.stderr
    assert not set(others) & {p.name for p in out.iterdir()}
    assert (out / "tokenizer.json").is_file()


def test_overwrite_replaces_an_output_holding_copied_files(source, grown, tmp_path):
    out = tmp_path / "out"
    _grow(source, "-o", out, "-q")
    (out / "stray.txt").write_text("not grow's")
    res = CliRunner().invoke(main, ["grow", str(source), "-o", str(out), "--to-width", "128", "--overwrite"])
    assert res.exit_code == 2 and "stray.txt" in res.output, res.output
    (out / "stray.txt").unlink()
    _grow(source, "-o", out, "-q", "--overwrite")
    assert (out / "tokenizer.json").read_bytes() == (source / "tokenizer.json").read_bytes()


def test_a_lone_file_brings_no_neighbours(tmp_path, source):
    (tmp_path / "weights.safetensors").write_bytes((source / "model.safetensors").read_bytes())
    (tmp_path / "config.json").write_bytes((source / "config.json").read_bytes())  # the reader takes it
    (tmp_path / "tokenizer.json").write_text("{}")
    _grow(tmp_path / "weights.safetensors", "-o", tmp_path / "out", "-q")
    assert not (tmp_path / "out" / "tokenizer.json").exists()
