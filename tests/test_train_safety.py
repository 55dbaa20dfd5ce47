"""The trainer never destroys data: it keeps out of other models' files and
of its own source, its checkpoints appear whole or not at all, and a
checkpoint whose files disagree on the step is refused. `demo --base` of
something that is not a base run is one line and exit 2."""

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch

pytest.importorskip("mup")

from click.testing import CliRunner  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from ws_convert import grow  # noqa: E402
from ws_convert.cli import main  # noqa: E402
from ws_convert.errors import WsConvertError  # noqa: E402
from ws_convert.train import TrainConfig, train  # noqa: E402

TINY = dict(width=32, depth=2, heads=2, batch_size=4, context=16, lr=1e-2, eval_every=10, eval_batches=1)


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> str:
    """A tiny corpus, so a run takes a fraction of a second."""
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text("".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(400)))
    return str(path)


def cli(*args: str):
    """(exit code, output lines) of one ws-convert command."""
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output.strip().splitlines()


def train_args(text: str, out: Path, *extra: str) -> list[str]:
    return ["train", "--width=32", "--depth=2", "--heads=2", "--batch-size=4", "--context=16", "--steps=2",
            f"--data={text}", "--out", str(out), *extra]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_out_holding_another_models_files_is_refused_unless_overwrite(tmp_path, text):
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"someone's weights")
    (out / "config.json").write_text('{"mine": 1}')
    (out / "notes.txt").write_text("keep")
    before = snapshot(out)
    code, lines = cli(*train_args(text, out))
    assert code == 2
    assert lines == [f"ws-convert: error: {out}: holds config.json, model.safetensors but no training checkpoint "
                     "of this trainer (checkpoint-N/); pass --overwrite to replace them, or choose another --out"]
    assert snapshot(out) == before
    code, lines = cli(*train_args(text, out, "--overwrite"))
    assert code == 0, lines
    assert (out / "notes.txt").read_text() == "keep"
    assert json.loads((out / "config.json").read_text())["width"] == 32
    # --overwrite is no setting of the run: resuming without it finds the finished run
    assert cli(*train_args(text, out))[0] == 0


def test_training_into_its_own_source_is_refused(tmp_path, text):
    run = tmp_path / "run"
    assert cli(*train_args(text, run))[0] == 0
    grown = grow(run / "model.safetensors", 64, out=tmp_path / "grown").out
    before = snapshot(grown)
    for init_from, out in ((grown, grown), (grown, grown / "warm"), (grown / "model.safetensors", grown),
                           (run / "checkpoint-2", run)):
        code, lines = cli(*train_args(text, out, "--init-from", str(init_from), "--overwrite"))
        assert code == 2, (init_from, out, lines)
        assert lines == [f"ws-convert: error: refusing to train into {out}: it would overwrite or sit inside "
                         f"the source {init_from}"]
    assert snapshot(grown) == before and not (grown / "warm").exists()


def test_a_crash_between_checkpoint_files_never_mixes_steps(tmp_path, text, monkeypatch):
    cfg = TrainConfig(**TINY, steps=8, data=text, checkpoint_every=4, out=str(tmp_path / "whole"))
    whole = train(cfg)["log"]
    crashed = replace(cfg, out=str(tmp_path / "crashed"))
    real_save, calls = torch.save, []

    def save_then_crash(*args, **kwargs):  # the optimizer of the second checkpoint, after its weights
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk gone")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(torch, "save", save_then_crash)
    with pytest.raises(OSError, match="disk gone"):
        train(crashed)
    monkeypatch.setattr(torch, "save", real_save)
    out = Path(crashed.out)
    after_crash = sorted(p.name for p in out.iterdir())
    dead = subprocess.Popen(["true"])
    dead.wait()
    killed = out / f".checkpoint-8.partial-{dead.pid}"  # what a writer killed mid-checkpoint leaves
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"half")
    resumed = train(crashed)["log"]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in whole]
    assert after_crash == ["checkpoint-4", "config.json", "log.jsonl", "model.safetensors"]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-8", "config.json", "log.jsonl", "loss.png",
                                                     "model.safetensors"]
    mine, theirs = load_file(out / "model.safetensors"), load_file(tmp_path / "whole" / "model.safetensors")
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_a_checkpoint_whose_files_disagree_on_the_step_is_refused(tmp_path, text):

    cfg = TrainConfig(**TINY, steps=4, data=text, out=str(tmp_path / "run"))
    train(cfg)
    ckpt = tmp_path / "run" / "checkpoint-4"
    optimizer = torch.load(ckpt / "optimizer.pt", weights_only=True)
    assert optimizer["step"] == 4
    with safe_open(ckpt / "model.safetensors", "pt") as f:
        metadata = f.metadata()
    assert metadata["step"] == "4"
    save_file(load_file(ckpt / "model.safetensors"), ckpt / "model.safetensors", metadata={**metadata, "step": "2"})
    code, lines = cli(*train_args(text, tmp_path / "run"))  # settings differ, but the pair is checked first
    assert code == 2
    assert lines == [f"ws-convert: error: {ckpt}: a checkpoint of step 4 whose files record model.safetensors "
                     "step 2, optimizer.pt step 4; refusing to resume from it"]
    with pytest.raises(WsConvertError, match=r"model.safetensors step 2, optimizer.pt step 4"):
        train(cfg)
    (ckpt / "optimizer.pt").unlink()
    with pytest.raises(WsConvertError, match=f"{ckpt}: incomplete training checkpoint: no optimizer.pt"):
        train(cfg)


def test_demo_refuses_a_base_that_is_not_a_base_run(tmp_path):
    from models import tiny

    empty = tmp_path / "empty"
    empty.mkdir()
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "model.safetensors").write_bytes(b"\x00" * 40)
    (junk / "config.json").write_text("[1, 2")
    cls, config = tiny("llama")
    torch.manual_seed(0)
    cls(config).save_pretrained(tmp_path / "llama")
    other = grow(tmp_path / "llama", 128, out=tmp_path / "llama-grown").out
    unlogged = tmp_path / "unlogged"  # its training steps are part of every contender's compute
    train(TrainConfig(**TINY, steps=2, out=str(unlogged)))
    (unlogged / "log.jsonl").unlink()
    out = tmp_path / "demo"
    for base in (empty, junk, other, unlogged):
        code, lines = cli("demo", "--out", str(out), "--steps", "2", "--base", str(base))
        assert code == 2 and len(lines) == 1, (base, lines)
        assert lines[0].startswith(f"ws-convert: error: {base}: not a base run"), lines
    assert "no log.jsonl" in lines[0]
    assert not out.exists()


def test_a_log_that_is_not_a_runs_is_never_emptied(tmp_path, text):
    out = tmp_path / "out"
    out.mkdir()
    (out / "log.jsonl").write_text('{"theirs": 1}\n')
    with pytest.raises(WsConvertError, match="log.jsonl"):
        train(TrainConfig(**TINY, steps=2, data=text, out=str(out)))
    assert (out / "log.jsonl").read_text() == '{"theirs": 1}\n'


def test_a_run_of_the_earlier_layout_is_named_and_kept(tmp_path, text):
    out = tmp_path / "old"
    out.mkdir()
    for name in ("model.safetensors", "optimizer.pt", "config.json"):
        (out / name).write_bytes(b"trained")
    with pytest.raises(WsConvertError, match="before 0.2.0.*--init-from"):
        train(TrainConfig(**TINY, steps=2, data=text, out=str(out)))
    assert all((out / n).read_bytes() == b"trained" for n in ("model.safetensors", "optimizer.pt", "config.json"))
