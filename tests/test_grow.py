"""`ws-convert grow` end to end: same bytes however it runs, real consumers
load the result, `verify` catches changes, bad input fails cleanly."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from models import tiny
from ws_convert import _ext
from ws_convert.cli import main
from ws_convert.engine import grow, grow_state_dict
from ws_convert.reader import open_checkpoint
from ws_convert.verify import verify


def files_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def shard_data(directory: Path) -> dict[str, bytes]:
    """Tensor bytes by name, whatever the sharding."""
    ckpt = open_checkpoint(directory)
    return {n: bytes(ckpt.tensor(n).reshape(-1).contiguous().view(torch.uint8).tolist()) for n in ckpt.tensors}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A tiny Llama with GQA, saved in two shards with its config."""
    root = tmp_path_factory.mktemp("src")
    cls, config = tiny("llama", width=64, heads=4, kv_heads=2, layers=2)
    torch.manual_seed(0)
    model = cls(config).to(torch.bfloat16)
    model.save_pretrained(root / "small", max_shard_size="100KB")
    return root / "small", cls, config


@pytest.mark.parametrize("method", ["szp", "hyperclone", "net2net"])
def test_same_bytes_for_threads_shards_and_chunks(small, tmp_path, method):
    src, _, _ = small
    ref = grow(src, 128, out=tmp_path / "ref", threads=1, method=method)
    ref_files = files_bytes(ref.out)
    for i, kw in enumerate([dict(threads=2), dict(chunk_bytes=1000), dict(threads=2, chunk_bytes=4096)]):
        assert files_bytes(grow(src, 128, out=tmp_path / f"v{i}", method=method, **kw).out) == ref_files, kw
    sharded = grow(src, 128, out=tmp_path / "sharded", max_shard_size="60KB", method=method)
    assert (sharded.out / "model.safetensors.index.json").is_file()
    assert shard_data(sharded.out) == shard_data(ref.out)


def test_native_torch_and_writeback_paths_agree(small, tmp_path, monkeypatch):
    """The torch-free CPU stream, the PyTorch reference stream (no extension)
    and writing with writeback left to the final fsync give the same bytes."""
    from ws_convert import writer

    src, _, _ = small
    ref = files_bytes(grow(src, 128, out=tmp_path / "native", chunk_bytes=3000, seed=9).out)
    monkeypatch.setattr(writer, "WRITEBACK_EARLY", False)
    assert files_bytes(grow(src, 128, out=tmp_path / "late", chunk_bytes=3000, seed=9).out) == ref
    monkeypatch.setattr(_ext, "cpu", None)
    assert files_bytes(grow(src, 128, out=tmp_path / "torch", chunk_bytes=3000, seed=9).out) == ref
    assert verify(tmp_path / "native", chunk_bytes=3000).ok  # verify through the reference stream too


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_cpu_grow_never_imports_torch(small, tmp_path, device):
    if device == "auto" and _ext.cuda is not None and _ext.cuda.device_count():
        pytest.skip("auto picks the GPU here, which runs through torch")
    code = ("import sys; from ws_convert.cli import main; sys.argv[0] = 'ws-convert'\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code, "grow", str(small[0]), "--to-width", "128", "-q", "--device",
                    device, "-o", str(tmp_path / "g")], check=True)
    assert (tmp_path / "g" / "model.safetensors").is_file()


def test_grown_checkpoint_loads_in_transformers(small, tmp_path):
    src, cls, config = small
    report = grow(src, 128, out=tmp_path / "big", to_depth=4, shrink=1.0, perturb=0.0)
    model = cls.from_pretrained(report.out).eval()
    assert model.config.hidden_size == 128 and model.config.num_hidden_layers == 4
    assert model.config.num_attention_heads == 8 and model.config.num_key_value_heads == 4
    logits = model(torch.randint(0, 97, (1, 7))).logits
    assert torch.isfinite(logits).all()
    meta = open_checkpoint(report.out).metadata
    assert meta["format"] == "pt" and json.loads(meta["ws_convert"])["options"]["to_width"] == 128


@pytest.mark.parametrize("norms", ["shrink", "copy"])
def test_file_and_memory_paths_agree(small, tmp_path, norms):
    src, cls, config = small
    state = {n: open_checkpoint(src).tensor(n).clone() for n in open_checkpoint(src).tensors}
    grown, _ = grow_state_dict(state, 128, config=config.to_dict(), seed=5, norms=norms)
    report = grow(src, 128, out=tmp_path / "g", seed=5, norms=norms)
    on_disk = open_checkpoint(report.out)
    for name, t in grown.items():
        assert torch.equal(on_disk.tensor(name).view(torch.int16), t.view(torch.int16)), name


def test_single_file_without_config(tmp_path):
    cls, config = tiny("gpt2", width=64, heads=4)
    torch.manual_seed(0)
    state = {k: v for k, v in cls(config).state_dict().items() if k != "lm_head.weight"}
    save_file(state, tmp_path / "gpt2.safetensors")
    runner = CliRunner()
    res = runner.invoke(main, ["grow", str(tmp_path / "gpt2.safetensors"), "--to-width", "128", "-q"])
    assert res.exit_code == 2 and "--num-heads" in res.output
    res = runner.invoke(main, ["grow", str(tmp_path / "gpt2.safetensors"), "--to-width", "128", "--num-heads", "4"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "gpt2-w128"
    assert "wrote" in res.output and str(out) in res.output
    assert not (out / "config.json").exists()
    assert open_checkpoint(out).tensor("transformer.h.0.attn.c_attn.weight").shape == (128, 384)


def test_verify_passes_then_names_a_flipped_tensor(small, tmp_path):
    src, _, _ = small
    out = grow(src, 128, out=tmp_path / "g", max_shard_size="200KB").out
    runner = CliRunner()
    res = runner.invoke(main, ["verify", str(out)])
    assert res.exit_code == 0 and res.output.startswith("ok:"), res.output
    ckpt = open_checkpoint(out)
    info = ckpt.info("model.layers.1.mlp.up_proj.weight")
    data = bytearray(info.file.read_bytes())
    data[info.start + 1001] ^= 0x10
    info.file.write_bytes(bytes(data))
    res = runner.invoke(main, ["verify", str(out)])
    assert res.exit_code == 1
    assert "differs: model.layers.1.mlp.up_proj.weight" in res.output
    assert res.output.count("differs:") == 1


def test_bad_input_fails_cleanly(small, tmp_path):
    src, _, _ = small
    runner = CliRunner()

    def check(args, code, text):
        res = runner.invoke(main, ["grow", *map(str, args)])
        assert res.exit_code == code, res.output
        lines = [l for l in res.output.splitlines() if not l.startswith("warning:")]
        assert len(lines) == 1 and text in lines[0], res.output

    broken = tmp_path / "broken"
    broken.mkdir()
    for f in src.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    shard = sorted(broken.glob("model-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-10])  # truncated
    check([broken, "--to-width", "128"], 2, "tensors cover")
    shard.unlink()  # missing
    check([broken, "--to-width", "128"], 2, "is missing")
    check([src, "--to-width", "72"], 2, "4.5 heads")
    check([src, "--to-width", "128", "-o", src / "inside"], 2, "source")
    check([src, "--to-width", "128", "-o", src, "--overwrite"], 2, "source")
    existing = tmp_path / "exists"
    existing.mkdir()
    check([src, "--to-width", "128", "-o", existing], 2, "already exists")
    res = runner.invoke(main, ["grow", str(src), "--to-width", "128", "--max-shard-size", "lots"])
    assert res.exit_code == 2 and "Invalid value for --max-shard-size" in res.output  # click's usage error
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


INTERRUPT = """
import sys, torch
from safetensors.torch import save_file
save_file({"w": torch.randn(4096, 4096)}, sys.argv[1] + "/w.safetensors")
open(sys.argv[1] + "/config.json", "w").write('{"hidden_size": 4096, "num_attention_heads": 1}')
"""


def test_ctrl_c_leaves_nothing(tmp_path):
    subprocess.run([sys.executable, "-c", INTERRUPT, str(tmp_path)], check=True)
    out = tmp_path / "big"
    # a shell's background job inherits SIGINT ignored; the user's Ctrl-C is what is tested here
    child = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); from ws_convert.cli import main; main()"
    proc = subprocess.Popen([sys.executable, "-c", child, "grow",
                             str(tmp_path / "w.safetensors"), "--to-width", "8192", "--arch", "generic", "-o",
                             str(out), "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not any(p.name.startswith(".big.partial") for p in tmp_path.iterdir()):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "interrupted" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "w.safetensors"]
