"""grow under torchrun: two CPU processes (gloo) split the tensors by bytes
and write them into the same planned shards; the output is byte for byte
the one process's, and a failure on any rank leaves no output."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from helpers import torchrun
from models import family_model, perturbed

pytest.importorskip("torch.distributed")




@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    cls, config = family_model("qwen3")
    path = tmp_path_factory.mktemp("ranks") / "src"
    perturbed(cls(config)).save_pretrained(path)
    return path


def test_two_processes_write_the_bytes_of_one(source, tmp_path):
    from click.testing import CliRunner

    from ws_convert.cli import main

    args = ["grow", str(source), "--to-width", "64", "--to-depth", "4", "--max-shard-size", "40KB"]
    assert CliRunner().invoke(main, [*args, "-o", str(tmp_path / "one"), "-q"]).exit_code == 0
    done = torchrun("-m", "ws_convert.cli", *args, "-o", str(tmp_path / "two"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("wrote ") == 1  # the first process speaks for both
    files = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert len([f for f in files if f.endswith(".safetensors")]) > 2
    assert files == sorted(p.name for p in (tmp_path / "two").iterdir())
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "one", tmp_path / "two", files, shallow=False)
    assert not mismatch and not errors
    assert CliRunner().invoke(main, ["verify", str(tmp_path / "two")]).exit_code == 0


def test_a_failure_on_any_rank_leaves_no_output(source, tmp_path):
    script = tmp_path / "fail.py"
    script.write_text(f"""
import os
import ws_convert.engine as engine
run = engine.execute
def failing(plan, *a, **kw):
    if os.environ["RANK"] == "1":
        raise RuntimeError("rank 1 fails")
    return run(plan, *a, **kw)
engine.execute = failing
engine.grow({str(source)!r}, 64, out={str(tmp_path / 'out')!r})
""")
    done = torchrun(str(script))
    assert done.returncode != 0
    assert "rank 1 fails" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fail.py"]  # no output, no temporary directory
