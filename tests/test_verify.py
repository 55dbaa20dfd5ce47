"""`ws-convert verify`: every byte of every file grow wrote is checked, a
source changed since is told apart from a corrupt output, the source is found
again after both moved, and a bad record is one line and exit 2."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from models import tiny
from ws_convert import __version__, cli
from ws_convert.cli import main
from ws_convert.engine import grow
from ws_convert.errors import CheckpointError
from ws_convert.provenance import HASHES, SourceHasher
from ws_convert.reader import INDEX_NAME, open_checkpoint, read_header


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A tiny two-shard Llama and its three-shard growth, side by side."""
    root = tmp_path_factory.mktemp("pair")
    cls, config = tiny("llama", width=64, heads=4, kv_heads=2, layers=2)
    torch.manual_seed(0)
    cls(config).to(torch.bfloat16).save_pretrained(root / "small", max_shard_size="100KB")
    grow(root / "small", 128, out=root / "grown", max_shard_size="200KB")
    return root


@pytest.fixture
def copy(pair, tmp_path):
    """A private copy of the pair (its record still finds the copied source)."""
    shutil.copytree(pair, tmp_path / "pair")
    return tmp_path / "pair"


def run_verify(out: Path, *args: str) -> tuple[int, list[str]]:
    res = CliRunner().invoke(main, ["verify", str(out), *args])
    assert "Traceback" not in res.output
    return res.exit_code, res.output.splitlines()


def assert_corrupt(out: Path, kind: str, file: str) -> None:
    code, lines = run_verify(out)
    assert code == 1, lines
    assert any(line.startswith(f"{kind}: {file}") for line in lines), lines
    assert lines[-1].startswith("FAILED: the output is corrupt"), lines


def shards(out: Path) -> list[Path]:
    return sorted(out.glob("model-*.safetensors"))


def edit_header(path: Path, old: bytes, new: bytes) -> None:
    """Replace `old` (once, same length) inside the header of a shard."""
    assert len(old) == len(new)
    data = bytearray(path.read_bytes())
    end = 8 + int.from_bytes(data[:8], "little")
    at = data.index(old, 8, end)
    data[at:at + len(old)] = new
    path.write_bytes(bytes(data))


def test_a_fresh_output_verifies(copy):
    code, lines = run_verify(copy / "grown")
    assert code == 0 and lines[-1].startswith("ok: every file matches"), lines
    assert len(lines) == 1


def test_a_changed_format_value_in_a_header(copy):
    shard = shards(copy / "grown")[1]
    edit_header(shard, b'"format":"pt"', b'"format":"np"')
    assert_corrupt(copy / "grown", "differs", shard.name)


def test_changed_padding_in_a_header(copy):
    padded = [s for s in shards(copy / "grown") if s.read_bytes()[:8 + int.from_bytes(s.read_bytes()[:8], "little")]
              .endswith(b" ")]
    assert padded, "some shard header is padded"
    data = bytearray(padded[0].read_bytes())
    end = 8 + int.from_bytes(data[:8], "little")
    data[end - 1:end] = b"\t"  # still valid JSON: readers accept it
    padded[0].write_bytes(bytes(data))
    read_header(padded[0])
    assert_corrupt(copy / "grown", "differs", padded[0].name)


def test_a_changed_provenance_copy_in_a_header(copy):
    shard = shards(copy / "grown")[0]
    edit_header(shard, b'\\"seed\\":0', b'\\"seed\\":7')
    assert_corrupt(copy / "grown", "differs", shard.name)
    code, lines = run_verify(copy / "grown")
    assert f"differs: ws_convert.json: disagrees on 'options' with the copy in the header of {shard.name}" in lines


def test_an_edited_index_total_size(copy):
    index = copy / "grown" / INDEX_NAME
    data = json.loads(index.read_text())
    data["metadata"]["total_size"] += 2
    index.write_text(json.dumps(data, indent=2) + "\n")
    assert_corrupt(copy / "grown", "differs", INDEX_NAME)


@pytest.mark.parametrize("name", ["config.json", "base_shapes.bsh"])
def test_an_edited_or_deleted_side_file(copy, name):
    path = copy / "grown" / name
    path.write_text(path.read_text().replace("128", "129", 1))
    assert_corrupt(copy / "grown", "differs", name)
    path.unlink()
    assert_corrupt(copy / "grown", "missing", name)


def test_an_extra_file(copy):
    (copy / "grown" / "notes.txt").write_text("hello")
    assert_corrupt(copy / "grown", "unexpected", "notes.txt")


@pytest.mark.parametrize("key,value", [("version", "0.0.1"), ("tool", "ws-convort")])
def test_an_edited_record_field(copy, key, value):
    path = copy / "grown" / "ws_convert.json"
    rec = json.loads(path.read_text())
    rec[key] = value
    path.write_text(json.dumps(rec, indent=2, sort_keys=True) + "\n")
    assert_corrupt(copy / "grown", "differs", "ws_convert.json")
    if key == "version":
        assert f"note: made by ws-convert 0.0.1; this is {__version__}" in run_verify(copy / "grown")[1]


def test_reformatted_record(copy):
    path = copy / "grown" / "ws_convert.json"
    path.write_text(json.dumps(json.loads(path.read_text()), sort_keys=True))
    assert_corrupt(copy / "grown", "differs", "ws_convert.json")


def test_another_version_is_reported_not_failed(copy, monkeypatch):
    monkeypatch.setattr(cli, "__version__", "9.0.0")
    code, lines = run_verify(copy / "grown")
    assert code == 0 and lines[0].startswith(f"note: made by ws-convert {__version__}; this is 9.0.0"), lines


def test_the_record_holds_every_source_tensor_hash_and_the_shards_the_rest(pair):
    rec = json.loads((pair / "grown" / "ws_convert.json").read_text())
    assert set(rec[HASHES]["tensors"]) == set(open_checkpoint(pair / "small").tensors)
    assert rec["source"]["relative_path"] == "../small/model.safetensors.index.json"
    for shard in shards(pair / "grown"):
        copy = json.loads(read_header(shard)[1]["ws_convert"])
        assert copy == {k: v for k, v in rec.items() if k != HASHES}


def flip_source_tensor(src: Path, name: str) -> None:
    info = open_checkpoint(src).info(name)
    data = bytearray(info.file.read_bytes())
    data[info.start + 3] ^= 0x40
    info.file.write_bytes(bytes(data))


def test_a_changed_source_is_not_called_corruption(copy):
    flip_source_tensor(copy / "small", "model.layers.0.mlp.up_proj.weight")
    code, lines = run_verify(copy / "grown")
    assert code == 1, lines
    assert "the source changed since: tensor model.layers.0.mlp.up_proj.weight" in lines
    assert any(line.startswith("stale: model.layers.0.mlp.up_proj.weight") for line in lines), lines
    assert not any(line.startswith("differs:") for line in lines), lines
    assert lines[-1].startswith("FAILED: the source changed since the output was made"), lines


def test_corruption_beside_a_changed_source_is_still_corruption(copy):
    flip_source_tensor(copy / "small", "model.layers.0.mlp.up_proj.weight")
    flip_source_tensor(copy / "grown", "model.layers.1.mlp.down_proj.weight")
    code, lines = run_verify(copy / "grown")
    assert code == 1 and "differs: model.layers.1.mlp.down_proj.weight" in lines, lines
    assert lines[-1].startswith("FAILED: the output is corrupt"), lines


def test_source_and_output_moved_together_or_apart(pair, tmp_path):
    shutil.copytree(pair / "small", tmp_path / "here" / "small")
    grow(tmp_path / "here" / "small", 128, out=tmp_path / "here" / "grown")
    moved = tmp_path / "elsewhere"
    (tmp_path / "here").rename(moved)  # both, to a new parent
    code, lines = run_verify(moved / "grown")
    assert code == 0, lines
    (moved / "small").rename(tmp_path / "small")  # the source alone
    code, lines = run_verify(moved / "grown")
    assert code == 2 and len(lines) == 1, lines
    assert "the source" in lines[0] and "is gone" in lines[0] and "--source" in lines[0], lines
    code, lines = run_verify(moved / "grown", "--source", str(tmp_path / "small"))
    assert code == 0 and lines[-1].startswith("ok:"), lines


def rewrite_record(out: Path, edit) -> None:
    path = out / "ws_convert.json"
    rec = json.loads(path.read_text())
    edit(rec)
    path.write_text(json.dumps(rec))


@pytest.mark.parametrize("edit,text", [
    (lambda r: r["options"].update(to_width=128.0), "'options.to_width' must be an integer or null, not 128.0"),
    (lambda r: r["options"].update(to_width="128"), "'options.to_width' must be an integer"),
    (lambda r: r["options"].update(shrink=True), "'options.shrink' must be a number"),
    (lambda r: r["options"].update(to_depth=0), "'options.to_depth' must be at least 1"),
    (lambda r: r["options"].update(seed=-1), "'options.seed' must be in"),
    (lambda r: r.update(source=[]), "source must be a JSON object"),
    (lambda r: r["source"].update(files={}), "'source.files' must be a list"),
    (lambda r: r[HASHES].update(tensors=[1]), f"'{HASHES}.tensors' must be a JSON object"),
    (lambda r: r[HASHES]["tensors"].update(x=1), f"'{HASHES}.tensors['x']' must be a string"),
    (lambda r: r.pop("arch"), "has no field 'arch'"),
    (lambda r: r["options"].pop("seed"), "options has no field 'seed'"),
    (lambda r: r.update(extra={}), "unknown field 'extra'"),
    (lambda r: r.update(max_shard_size=0), "'max_shard_size' must be at least 1"),
])
def test_a_bad_record_is_one_line(copy, edit, text):
    rewrite_record(copy / "grown", edit)
    code, lines = run_verify(copy / "grown")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("ws-convert: error: ") and "ws_convert.json" in lines[0] and text in lines[0], lines


@pytest.mark.parametrize("content,text", [
    ("[" * 100_000 + "]" * 100_000, "nested more than"),
    ('{"a": ' * 100_000 + "1" + "}" * 100_000, "nested more than"),
    ("{not json", "is not valid UTF-8 JSON"),
    ("[]", "the record must be a JSON object"),
    (None, "missing"),
], ids=["deep-list", "deep-object", "not-json", "not-an-object", "deleted"])
def test_an_unreadable_record_is_one_line(copy, content, text):
    path = copy / "grown" / "ws_convert.json"
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    code, lines = run_verify(copy / "grown")
    assert code == 2 and len(lines) == 1 and text in lines[0] and "ws_convert.json" in lines[0], lines


def test_a_pickle_source_is_opened_only_when_allowed(tmp_path):
    cls, config = tiny("llama", width=64, heads=4, kv_heads=2, layers=1)
    torch.manual_seed(0)
    cls(config).save_pretrained(tmp_path / "small", safe_serialization=False)
    runner = CliRunner()
    res = runner.invoke(main, ["grow", str(tmp_path / "small"), "--to-width", "128", "--allow-pickle", "-q",
                               "-o", str(tmp_path / "grown")])
    assert res.exit_code == 0, res.output
    code, lines = run_verify(tmp_path / "grown")
    assert code == 2 and len(lines) == 1 and "--allow-pickle" in lines[0], lines
    code, lines = run_verify(tmp_path / "grown", "--allow-pickle")
    assert code == 0, lines


def test_the_hasher_refuses_a_source_that_shrinks(copy):
    with open_checkpoint(copy / "small") as ckpt:
        last = max(ckpt.tensors.values(), key=lambda i: (i.file.name, i.start))
        with open(last.file, "r+b") as f:
            f.truncate(last.start + 1)
        with SourceHasher(ckpt) as hasher, pytest.raises(CheckpointError, match="truncated while it was read"):
            hasher.result()


def test_a_source_rewritten_with_the_same_tensors_verifies(copy, tmp_path):
    from safetensors.torch import save_file

    src = open_checkpoint(copy / "small")
    (tmp_path / "one").mkdir()
    save_file({n: src.tensor(n).clone() for n in src.tensors}, tmp_path / "one" / "model.safetensors",
              metadata={"format": "pt"})
    for name in ("config.json", "generation_config.json"):
        shutil.copy(copy / "small" / name, tmp_path / "one")
    code, lines = run_verify(copy / "grown", "--source", str(tmp_path / "one"))
    assert code == 0 and lines[0].startswith("note: the source's files were rewritten since"), lines
    assert lines[-1].startswith("ok:"), lines


def test_a_changed_source_config_is_not_called_corruption(copy):
    path = copy / "small" / "config.json"
    config = json.loads(path.read_text())
    config["rms_norm_eps"] = 1e-3
    path.write_text(json.dumps(config))
    code, lines = run_verify(copy / "grown")
    assert code == 1 and "the source changed since: its config" in lines, lines
    assert any(line.startswith("differs: config.json") for line in lines), lines
    assert lines[-1].startswith("FAILED: the source changed since the output was made"), lines
