"""`ws-convert grow` never destroys what is at its output path or claims an
output it did not write: blank -o, --overwrite of a directory that is not an
output, odd paths, --dry-run, SIGTERM."""

import json
import os
import signal
import struct
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from ws_convert.cli import main
from ws_convert.engine import grow
from ws_convert.errors import OutputError


@pytest.fixture
def src(tmp_path):
    """A one-tensor checkpoint with its config, grown with --arch generic."""
    root = tmp_path / "src"
    root.mkdir()
    save_file({"w": torch.randn(8, 8)}, root / "model.safetensors")
    (root / "config.json").write_text('{"hidden_size": 8, "num_attention_heads": 1}')
    return root


def run_grow(src, *args):
    """(exit code, output lines other than warnings) of `ws-convert grow SRC --to-width 16 ...`."""
    res = CliRunner().invoke(main, ["grow", str(src), "--to-width", "16", "--arch", "generic", *map(str, args)])
    return res.exit_code, [line for line in res.output.splitlines() if not line.startswith("warning:")]


def listing(directory):
    return sorted(p.name for p in directory.iterdir())


def test_blank_output_is_refused_not_the_current_directory(src, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "thesis.tex").write_text("years of work")
    monkeypatch.chdir(work)
    for out in ("", "  "):
        for extra in (["--overwrite"], ["--overwrite", "--dry-run"]):
            code, lines = run_grow(src, "-o", out, *extra)
            assert code == 2 and len(lines) == 1 and "output directory is empty" in lines[0], lines
        with pytest.raises(OutputError, match="output directory is empty"):
            grow(src, 16, out=out, overwrite=True, arch="generic")
    assert listing(work) == ["thesis.tex"]


def test_overwrite_refuses_a_directory_that_is_not_an_output(src, tmp_path):
    target = tmp_path / "results"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    code, lines = run_grow(src, "-o", target, "--overwrite")
    assert code == 2 and len(lines) == 1, lines
    assert "holds 1 entry that is not part of a ws-convert output (notes.txt)" in lines[0]
    assert listing(target) == ["notes.txt"]
    grown = tmp_path / "grown"
    assert run_grow(src, "-o", grown)[0] == 0
    before = (grown / "model.safetensors").read_bytes()
    assert run_grow(src, "-o", grown, "--overwrite", "--seed", "1")[0] == 0  # an earlier output is replaced
    assert (grown / "model.safetensors").read_bytes() != before
    assert listing(tmp_path) == ["grown", "results", "src"]


def test_output_through_a_symlink_loop_is_one_line(src, tmp_path):
    (tmp_path / "loop").symlink_to("loop")
    for extra in ([], ["--dry-run"]):
        code, lines = run_grow(src, "-o", tmp_path / "loop" / "out", *extra)
        assert code == 2 and len(lines) == 1 and "symbolic links" in lines[0], lines


def test_dry_run_checks_the_target_like_a_real_run(src, tmp_path, monkeypatch):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    refused = {(existing,): "already exists", (existing, "--overwrite"): "not part of a ws-convert output",
               (src / "inside",): "source", (src, "--overwrite"): "source"}
    for args, reason in refused.items():
        code, lines = run_grow(src, "--dry-run", "-o", *args)
        assert code == 2 and len(lines) == 1 and reason in lines[0], (args, lines)
        assert run_grow(src, "-o", *args) == (code, lines)  # word for word what a real run says
    code, lines = run_grow(src, "--dry-run", "-o", tmp_path / "new")
    assert code == 0 and f"dry run: target {tmp_path / 'new'} checked" in lines[-1], lines
    real = os.statvfs
    monkeypatch.setattr(os, "statvfs", lambda path: os.statvfs_result((*real(path)[:3], 0, 0, *real(path)[5:])))
    code, lines = run_grow(src, "--dry-run", "-o", tmp_path / "new")  # a full disk
    assert code == 2 and len(lines) == 1 and "no space left" in lines[0], lines
    assert listing(tmp_path) == ["existing", "src"]


def test_sigterm_handler_is_restored(src, tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    assert run_grow(src, "-o", tmp_path / "out")[0] == 0
    assert signal.getsignal(signal.SIGTERM) is before


def sparse_source(directory, rows=4096):
    """A `rows` x `rows` F32 checkpoint of zeros, made without writing its data."""
    size = rows * rows * 4
    header = json.dumps({"w": {"dtype": "F32", "shape": [rows, rows], "data_offsets": [0, size]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(directory / "w.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + size)
    (directory / "config.json").write_text(json.dumps({"hidden_size": rows, "num_attention_heads": 1}))


def test_sigterm_leaves_nothing_like_ctrl_c(tmp_path):
    sparse_source(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", "from ws_convert.cli import main; main()", "grow",
                             str(tmp_path / "w.safetensors"), "--to-width", "8192", "--arch", "generic", "-o",
                             str(tmp_path / "big"), "--threads", "1"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not any(p.name.startswith(".big.partial") for p in tmp_path.iterdir()):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.01)
    proc.terminate()  # what timeout, Slurm and docker stop send
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "terminated; nothing was written" in err
    assert listing(tmp_path) == ["config.json", "w.safetensors"]
