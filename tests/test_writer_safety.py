"""Never lose or half-write data: existing outputs, the source, crashes and
full disks."""

import errno
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from ws_convert.errors import OutputError
from ws_convert.writer import CheckpointWriter, OutputTensor

PLAN = [OutputTensor("w", "F32", (64, 64))]


def write_ok(out, value=1.0, **kw):
    with CheckpointWriter(out, PLAN, **kw) as w:
        w.write("w", torch.full((64, 64), value))


def test_existing_output_needs_overwrite(tmp_path):
    out = tmp_path / "out"
    write_ok(out)
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(OutputError, match="already exists"):
        write_ok(out, 2.0)
    assert (out / "model.safetensors").read_bytes() == before
    with pytest.raises(RuntimeError):  # a failure half-way keeps the old output whole
        with CheckpointWriter(out, PLAN, overwrite=True) as w:
            w.write("w", torch.full((32, 64), 3.0))
            raise RuntimeError("interrupted")
    assert (out / "model.safetensors").read_bytes() == before
    write_ok(out, 2.0, overwrite=True)
    assert (out / "model.safetensors").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left


def test_refuses_to_touch_the_source(tmp_path):
    src_dir = tmp_path / "small"
    src_dir.mkdir()
    src_file = src_dir / "model.safetensors"
    src_file.write_bytes(b"source")
    for target in (src_dir, src_dir / "inside", tmp_path):
        with pytest.raises(OutputError, match="source"):
            write_ok(target, overwrite=True, protect=[src_dir, src_file])
    with pytest.raises(OutputError, match="source"):
        write_ok(tmp_path, overwrite=True, protect=[src_file])
    assert src_file.read_bytes() == b"source"
    write_ok(tmp_path / "grown", protect=[src_dir, src_file])  # beside it is fine


SLOW_WRITER = textwrap.dedent("""
    import sys, time, torch
    from ws_convert.writer import CheckpointWriter, OutputTensor
    plan = [OutputTensor("w", "F32", (1000, 256))]
    with CheckpointWriter(sys.argv[1], plan) as w:
        for r in range(1000):
            w.write("w", torch.full((1, 256), float(r)), row_start=r)
            if r == 10:
                print("writing", flush=True)
            time.sleep(0.01 if sys.argv[2] == "slow" else 0)
""")


def test_killed_writer_leaves_no_output_and_next_run_succeeds(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(out), "slow"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".out.partial-")  # hidden, never the target
    subprocess.run([sys.executable, "-c", SLOW_WRITER, str(out), "fast"], check=True, stdout=subprocess.DEVNULL)
    assert (out / "model.safetensors").stat().st_size > 1000 * 256 * 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the dead run's temporary is gone


def test_full_disk_simulated(tmp_path, monkeypatch):
    real = os.statvfs

    def full(path):  # the disk looks full before anything is written
        st = real(path)
        return os.statvfs_result((st.f_bsize, st.f_frsize, st.f_blocks, 0, 0, *st[5:]))

    monkeypatch.setattr(os, "statvfs", full)
    with pytest.raises(OutputError, match="no space left"):
        write_ok(tmp_path / "out")
    assert sorted(tmp_path.iterdir()) == []
    monkeypatch.undo()

    def no_space(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    # the disk fills up half-way through the data
    monkeypatch.setattr(os, "pwrite", lambda fd, data, offset: no_space() if len(data) > 64 else len(data))
    with pytest.raises(OutputError, match="no space left"):
        write_ok(tmp_path / "out")
    assert sorted(tmp_path.iterdir()) == []


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_full_disk_real(tiny_tmpfs):
    write_ok(tiny_tmpfs / "out")  # 16 KiB fits in 64 KiB; 256 KiB does not
    with pytest.raises(OutputError, match="no space left"):
        with CheckpointWriter(tiny_tmpfs / "big", [OutputTensor("w", "F32", (256, 256))]) as w:
            w.write("w", torch.zeros(256, 256))
    assert [p.name for p in tiny_tmpfs.iterdir()] == ["out"]
