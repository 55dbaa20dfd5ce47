"""Hostile or broken sources: each is one line of ours naming the file (and
tensor), exit code 2, nothing left behind; never a hang, a crash, a
traceback or a message spread over several lines."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from ws_convert.cli import main

CLI = "import sys; from ws_convert.cli import main; sys.argv[0] = 'ws-convert'; main()"


def one_line_error(args: list, *expected: str) -> str:
    """Run the CLI; it must exit 2 with one line naming everything expected."""
    res = CliRunner().invoke(main, [str(a) for a in args])
    lines = res.output.splitlines()
    assert res.exit_code == 2 and len(lines) == 1, (res.exit_code, res.output, res.exception)
    assert lines[0].startswith("ws-convert: error: "), lines
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def tiny_source(directory: Path, config: str | None = '{"hidden_size": 2, "num_attention_heads": 1}',
                **tensors) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors or {"w": torch.ones(2, 2)}, directory / "model.safetensors")
    if config is not None:
        (directory / "config.json").write_text(config)
    return directory


def raw_safetensors(path: Path, header_text: str, data: bytes) -> Path:
    text = header_text.encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    return path


DEEP = "[" * 100_000 + "]" * 100_000  # past the JSON parser's recursion limit
ALMOST = '{"a": ' * 990 + "1" + "}" * 990  # parses, then breaks whatever recurses into it


@pytest.mark.parametrize("nested", [DEEP, ALMOST], ids=["deep", "almost"])
def test_deeply_nested_config(tmp_path, nested):
    src = tiny_source(tmp_path / "src", config=f'{{"hidden_size": 2, "num_attention_heads": 1, "x": {nested}}}')
    one_line_error(["grow", src, "--to-width", "4", "--arch", "generic", "-o", tmp_path / "out"],
                   str(src / "config.json"), "nested more than")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_deeply_nested_index_and_metadata_config(tmp_path):
    src = tiny_source(tmp_path / "src", config=None)
    index = src / "model.safetensors.index.json"
    index.write_text(f'{{"metadata": {DEEP}, "weight_map": {{"w": "model.safetensors"}}}}')
    one_line_error(["inspect", src], str(index), "nested more than")
    index.unlink()
    header = {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
              "__metadata__": {"config": '{"hidden_size": 1, "x": ' + ALMOST + "}"}}
    shard = raw_safetensors(src / "model.safetensors", json.dumps(header), b"\0" * 4)
    one_line_error(["grow", src, "--to-width", "2", "--arch", "generic", "-o", tmp_path / "out"],
                   str(shard), "__metadata__ config", "nested more than")


@pytest.mark.parametrize("where", ["model.safetensors", "model.safetensors.index.json", "shard", "config.json"])
def test_fifo_is_refused_not_read(tmp_path, where):
    """Opening a FIFO for reading blocks until a writer comes; reading one
    never ends. Run in a child with a timeout, so that a regression fails."""
    src = tiny_source(tmp_path / "src")
    if where == "shard":
        (src / "model.safetensors").rename(src / "a.safetensors")
        (src / "model.safetensors.index.json").write_text(
            json.dumps({"weight_map": {"w": "a.safetensors", "v": "b.safetensors"}}))
        where = "b.safetensors"
    else:
        (src / where).unlink(missing_ok=True)
    os.mkfifo(src / where)
    done = subprocess.run([sys.executable, "-c", CLI, "inspect", str(src)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"{src / where}: is a FIFO, not a regular file" in done.stderr


def test_character_device_is_refused(tmp_path):
    (tmp_path / "model.safetensors").symlink_to("/dev/zero")  # reading it never ends
    one_line_error(["inspect", tmp_path], "model.safetensors: is a character device, not a regular file")


def test_empty_weight_map(tmp_path):
    src = tiny_source(tmp_path / "src")
    (src / "model.safetensors.index.json").write_text('{"metadata": {}, "weight_map": {}}')
    one_line_error(["grow", src, "--to-width", "4", "--arch", "generic", "-o", tmp_path / "out"],
                   "model.safetensors.index.json: index lists no tensors")
    assert not (tmp_path / "out").exists()


def test_lone_surrogate_tensor_name(tmp_path):
    header = '{"a\\udc80b": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}'
    src = tmp_path / "src"
    src.mkdir()
    raw_safetensors(src / "model.safetensors", header, b"\0" * 16)
    (src / "config.json").write_text('{"hidden_size": 2, "num_attention_heads": 1}')
    one_line_error(["grow", src, "--to-width", "4", "--arch", "generic", "-o", tmp_path / "out"],
                   "tensor 'a\\udc80b'", "lone surrogate")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_control_characters_in_names_stay_on_one_line(tmp_path):
    src = tmp_path / "bad\nname\x1b[2J"
    src.mkdir()
    header = {"evil\n\x00\x1b]0;title\x07": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}}
    raw_safetensors(src / "model.safetensors", json.dumps(header), b"\0" * 4)
    line = one_line_error(["inspect", src], "bad\\nname\\x1b[2J", "tensor 'evil\\n\\x00\\x1b]0;title\\x07'",
                          "unknown or unsupported dtype")
    assert "\x1b" not in line and "\x00" not in line and "\x07" not in line


@pytest.mark.filterwarnings("ignore")  # torch warns that sparse and quantized tensors are beta or deprecated
@pytest.mark.parametrize("kind,make", [
    ("sparse_coo", lambda: torch.eye(3).to_sparse()),
    ("sparse_csr", lambda: torch.eye(3).to_sparse_csr()),
    ("meta", lambda: torch.empty(3, 3, device="meta")),
    ("quantized", lambda: torch.quantize_per_tensor(torch.randn(3, 3), 0.1, 0, torch.qint8)),
])
def test_pickle_with_unusual_tensors(tmp_path, kind, make):
    torch.save({"w": make()}, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text('{"hidden_size": 3, "num_attention_heads": 1}')
    one_line_error(["grow", tmp_path, "--to-width", "6", "--arch", "generic", "--allow-pickle", "-o",
                    tmp_path / "out"], "pytorch_model.bin: tensor 'w'",
                   f"not a plain weights-only state dict: a {kind} tensor")


class Runs:
    def __reduce__(self):
        return (print, ("code ran",))


def test_pickle_refusal_is_ours_not_torchs(tmp_path):
    torch.save({"w": torch.ones(2, 2), "x": Runs()}, tmp_path / "pytorch_model.bin")
    line = one_line_error(["inspect", tmp_path, "--allow-pickle"], "pytorch_model.bin",
                          "not a plain weights-only state dict (it refers to print)")
    assert "weights_only" not in line and "code ran" not in line


TRUNCATE_SOURCE = """
import sys, torch
from safetensors.torch import save_file
save_file({"w": torch.randn(16001, 1024)}, sys.argv[1] + "/model.safetensors")
open(sys.argv[1] + "/config.json", "w").write('{"hidden_size": 1024, "num_attention_heads": 1}')
"""


def test_source_truncated_while_growing(tmp_path):
    """The source shrinks under a running grow: read through a map, that
    killed the process with SIGBUS and no word; now it is one line."""
    src = tmp_path / "src"
    src.mkdir()
    subprocess.run([sys.executable, "-c", TRUNCATE_SOURCE, str(src)], check=True)
    shard = src / "model.safetensors"
    proc = subprocess.Popen([sys.executable, "-c", CLI, "grow", str(src), "--to-width", "2048", "--arch", "generic",
                             "-o", str(tmp_path / "out"), "--threads", "1", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not any(p.name.startswith(".out.partial") for p in tmp_path.iterdir()):
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.002)
    os.truncate(shard, shard.stat().st_size // 8)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != -signal.SIGBUS, "killed by SIGBUS"
    errors = [line for line in err.splitlines() if not line.startswith("warning:")]  # said before the work
    assert proc.returncode == 2 and len(errors) == 1, (proc.returncode, err)
    assert f"{shard}: tensor 'w': " in err and "while it was read" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
