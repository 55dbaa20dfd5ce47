"""Never lose or half-write data: existing outputs, the source, crashes and
full disks."""

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file

from ws_convert.errors import OutputError
from ws_convert.writer import CheckpointWriter, OutputTensor

PLAN = [OutputTensor("w", "F32", (64, 64))]


def write_ok(out, value=1.0, **kw):
    kw.setdefault("provenance", {"tool": "ws-convert"})  # what makes a directory an output --overwrite may replace
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


# -- which targets may be replaced ---------------------------------------------

def test_empty_output_name_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("mine")
    for name in ("", "   ", "\t\n"):
        with pytest.raises(OutputError, match="output directory is empty"):
            write_ok(name, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_overwrite_replaces_only_an_empty_directory_or_an_output(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    for name in ("notes.txt", "b.txt", "c.txt", "d.txt"):
        (user / name).write_text(name)
    with pytest.raises(OutputError, match=r"holds 4 entries that are not part of a ws-convert output "
                                          r"\(b\.txt, c\.txt, d\.txt, \.\.\.\)"):
        write_ok(user, overwrite=True)
    assert len(list(user.iterdir())) == 4

    output = tmp_path / "output"  # an earlier output, and a file the user put into it since
    write_ok(output)
    (output / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"holds 1 entry that is not part of a ws-convert output \(notes\.txt\)"):
        write_ok(output, 2.0, overwrite=True)
    (output / "notes.txt").unlink()
    write_ok(output, 2.0, overwrite=True)

    unrecorded = tmp_path / "unrecorded"  # shards, but no ws_convert.json: not known to be ours
    write_ok(unrecorded, provenance=None)
    with pytest.raises(OutputError, match=r"holds 1 entry that is not part of a ws-convert output"):
        write_ok(unrecorded, overwrite=True)

    empty = tmp_path / "empty"
    empty.mkdir()
    write_ok(empty, overwrite=True)
    assert (empty / "model.safetensors").is_file()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_odd_target_paths_are_one_line_errors(tmp_path, monkeypatch):
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "file").write_text("x")
    cases = {tmp_path / "loop" / "out": "symbolic link",
             tmp_path / ("x" * 300): "too long",
             tmp_path / ("x" * 240): "too long",  # fits, but its temporary name does not
             tmp_path / "file" / "out": "Not a directory",
             tmp_path / "missing" / "out": "does not exist"}
    for target, reason in cases.items():
        with pytest.raises(OutputError, match=reason) as err:
            write_ok(target)
        assert "\n" not in str(err.value)
    real = os.lstat
    monkeypatch.setattr(os, "lstat", lambda p, *a, **k: (_ for _ in ()).throw(PermissionError(
        errno.EACCES, "Permission denied", str(p))) if "locked" in str(p) else real(p, *a, **k))
    with pytest.raises(OutputError, match="Permission denied"):
        write_ok(tmp_path / "locked" / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "loop"]


# -- committing: never replace what another run wrote, survive a kill mid-swap --

RACE = textwrap.dedent("""
    import sys, time
    from ws_convert.errors import OutputError
    from ws_convert.writer import CheckpointWriter, OutputTensor
    root, me, start, n = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    plan = [OutputTensor("w", "U8", (64 << 10,))]
    for i in range(n):
        time.sleep(max(0.0, start + i * 0.02 - time.time()))  # both processes start target i together
        try:
            with CheckpointWriter(f"{root}/out{i}", plan) as w:
                time.sleep(0.005)  # both are past the first check before either commits
                w.write("w", memoryview(bytes([me]) * (64 << 10)))
            print(i, "won", flush=True)
        except OutputError as exc:
            print(i, "lost" if "already exists" in str(exc) else f"failed: {exc}", flush=True)
""")


@pytest.mark.parametrize("renameat2", [True, False])
def test_an_output_committed_meanwhile_is_never_replaced(tmp_path, monkeypatch, renameat2):
    import ws_convert.writer as writer

    if not renameat2:
        monkeypatch.setattr(writer, "_RENAMEAT2", None)
    out = tmp_path / "out"
    first, second = CheckpointWriter(out, PLAN), CheckpointWriter(out, PLAN)
    for w, value in ((first, 1.0), (second, 2.0)):
        w.__enter__()
        w.write("w", torch.full((64, 64), value))
    checked = second.check_target

    def then_the_other_commits():  # the other run commits between the last check and the rename
        checked()
        first.__exit__(None, None, None)

    second.check_target = then_the_other_commits
    with pytest.raises(OutputError, match="already exists"):
        second.__exit__(None, None, None)
    assert torch.equal(load_file(out / "model.safetensors")["w"], torch.full((64, 64), 1.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_two_runs_into_one_new_target_exactly_one_wins(tmp_path):
    n = 100
    start = time.time() + 1.0  # after both have imported
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(tmp_path), str(me), str(start), str(n)],
                              stdout=subprocess.PIPE, text=True) for me in (1, 2)]
    results = [dict(line.split(" ", 1) for line in p.communicate(timeout=60)[0].splitlines()) for p in procs]
    for i in range(n):
        outcome = sorted(r[str(i)] for r in results)
        assert outcome == ["lost", "won"], (i, outcome)
        winner = 1 + [r[str(i)] for r in results].index("won")
        assert (tmp_path / f"out{i}" / "model.safetensors").read_bytes()[-1] == winner, i
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"out{i}" for i in range(n))


KILLED_SWAP = textwrap.dedent("""
    import os, sys
    from ws_convert import writer
    out, where = sys.argv[1], sys.argv[2]
    if where.startswith("fallback"):
        writer._RENAMEAT2 = None  # as on a system without renameat2
    if where == "fallback, between the renames":
        real = os.rename
        os.rename = lambda a, b: (real(a, b), os._exit(9) if ".replaced-" in str(b) else None)
    else:  # after the swap, before the old output is removed
        writer._remove = lambda path: os._exit(9)
    with writer.CheckpointWriter(out, [writer.OutputTensor("w", "F32", (4,))], overwrite=True,
                                 provenance={"tool": "ws-convert"}) as w:
        w.write("w", memoryview(bytes([2]) * 16))
""")

WHERE = ["exchange, before removing the old output", "fallback, between the renames",
         "fallback, before removing the old output"]


@pytest.mark.parametrize("where", WHERE)
def test_a_swap_killed_midway_is_recovered_by_the_next_run(tmp_path, where):
    out = tmp_path / "out"
    small = [OutputTensor("w", "F32", (4,))]
    with CheckpointWriter(out, small, provenance={"tool": "ws-convert"}) as w:
        w.write("w", memoryview(bytes([1]) * 16))
    proc = subprocess.run([sys.executable, "-c", KILLED_SWAP, str(out), where])
    assert proc.returncode == 9
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers, "the kill came too late to leave anything"
    committed = out.exists()
    expected = 2 if committed else 1  # the new output if it got to the target, else the old one
    with pytest.raises(OutputError, match="already exists"):  # a later run, without --overwrite
        with CheckpointWriter(out, small) as w:
            w.write("w", memoryview(bytes(16)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (out / "model.safetensors").read_bytes()[-1] == expected


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_leftovers_that_are_symlinks_are_unlinked_never_followed(tmp_path):
    out = tmp_path / "out"
    write_ok(out)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("mine")
    pid = dead_pid()
    for name in (f".out.replaced-{pid}", f".out.replaced-{pid}-0badcafe", f".out.partial-{pid}-0badcafe"):
        (tmp_path / name).symlink_to(elsewhere)
    write_ok(tmp_path / "out2")  # leftovers of another target are not this run's business
    assert len(list(tmp_path.glob(".out.*"))) == 3
    with pytest.raises(OutputError, match="already exists"):
        write_ok(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "out", "out2"]
    assert (elsewhere / "precious.txt").read_text() == "mine"


def test_a_symlink_leftover_is_never_restored_as_the_target(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / f".out.replaced-{dead_pid()}").symlink_to(elsewhere)
    write_ok(tmp_path / "out")
    assert not (tmp_path / "out").is_symlink() and (tmp_path / "out" / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "out"]


# -- resources ------------------------------------------------------------------

MANY_SHARDS = textwrap.dedent("""
    import random, resource, sys
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    from ws_convert.writer import CheckpointWriter, OutputTensor
    plan = [OutputTensor(f"t{i}", "U8", (2, 8)) for i in range(400)]
    rows = [(i, r) for i in range(400) for r in range(2)]
    random.Random(0).shuffle(rows)  # every shard is opened, left and opened again
    with CheckpointWriter(sys.argv[1], plan, max_shard_size=16) as w:
        for i, r in rows:
            w.write(f"t{i}", memoryview(bytes([i % 256, r]) * 4), row_start=r)
""")


def test_open_descriptors_stay_bounded_whatever_the_shard_count(tmp_path):
    from ws_convert.reader import open_checkpoint

    out = tmp_path / "out"
    subprocess.run([sys.executable, "-c", MANY_SHARDS, str(out)], check=True)
    assert len(list(out.glob("model-*-of-00400.safetensors"))) == 400
    ckpt = open_checkpoint(out)
    for i in (0, 1, 255, 399):
        assert ckpt.tensor(f"t{i}").view(torch.uint8).tolist() == [[i % 256, 0] * 4, [i % 256, 1] * 4]


def test_every_shard_is_synced_before_the_commit(tmp_path, monkeypatch):
    import ws_convert.writer as writer

    synced = set()
    real = os.fsync
    monkeypatch.setattr(writer, "MAX_OPEN", 2)
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.add(os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real(fd))[1])
    plan = [OutputTensor(f"t{i}", "F32", (4,)) for i in range(9)]
    with CheckpointWriter(tmp_path / "out", plan, max_shard_size=16) as w:
        for t in plan:
            w.write(t.name, torch.full((4,), 1.0))
    assert {p.name for p in (tmp_path / "out").iterdir()} <= synced


def test_total_size_is_computed_once(monkeypatch):
    calls = []
    real = OutputTensor.nbytes
    monkeypatch.setattr(OutputTensor, "nbytes", property(lambda t: (calls.append(1), real.func(t))[1]))
    w = CheckpointWriter("unused", [OutputTensor(f"t{i}", "F32", (4,)) for i in range(100)], max_shard_size=64)
    size = w.total_size
    calls.clear()
    assert [w.total_size for _ in range(1000)] == [size] * 1000 and size == 1600
    assert calls == []


def test_add_file_sets_or_replaces_a_side_file(tmp_path):
    out = tmp_path / "out"
    with CheckpointWriter(out, PLAN, provenance={"tool": "ws-convert"}) as w:
        w.write("w", torch.zeros(64, 64))
        w.add_file("ws_convert.json", '{"tool": "ws-convert", "hashes": {}}\n')
        w.add_file("notes.txt", "later\n")
        for bad in ("", ".", "..", "a/b", "model.safetensors", "model.safetensors.index.json"):
            with pytest.raises(OutputError, match="side file"):
                w.add_file(bad, "x")
    assert (out / "ws_convert.json").read_text() == '{"tool": "ws-convert", "hashes": {}}\n'
    assert (out / "notes.txt").read_text() == "later\n"
