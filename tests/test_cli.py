"""The command line: the demo runs every stage end to end; bad usage exits with 2."""

import json

import pytest
from click.testing import CliRunner

from ws_convert.cli import main


def test_short_demo_runs_every_stage(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--out", str(out), "--steps", "20", "--eval-every", "5"])
    assert result.exit_code == 0, result.output
    for stage in ("1/3 grow", "2/3 continue training", "3/3 train the same architecture from scratch"):
        assert stage in result.output
    assert "steps to reach scratch's final loss" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["width"] == 2 * summary["base_width"]
    for key in ("scratch_final_eval_loss", "warm_final_eval_loss", "warm_steps_to_scratch_final"):
        assert key in summary
    assert [r["step"] for r in summary["eval"]] == [0, 1, 5, 10, 15, 20]  # 0: before the first update
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    for run in ("grown", "warm", "scratch"):
        assert (out / run / "model.safetensors").is_file()
    # the warm start begins far below a fresh model's ~ln(256) = 5.5: at step 0, the grown model itself
    start = summary["eval"][0]
    assert start["warm"] < start["scratch"] - 1.0 and start["scratch"] == pytest.approx(5.55, abs=0.05)


def test_demo_replaces_an_earlier_one_only_when_asked(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--steps", "2", "--eval-every", "1"]
    assert CliRunner().invoke(main, args).exit_code == 0
    (out / "notes.txt").write_text("mine")
    before = (out / "summary.json").read_bytes()
    again = CliRunner().invoke(main, [*args, "--seed", "1"])
    assert again.exit_code == 2
    assert again.output.strip().splitlines() == [
        f"ws-convert: error: {out}: holds an earlier demo (grown, warm, scratch, loss.png, summary.json); "
        "pass --overwrite to replace it, or choose another --out"]
    assert (out / "summary.json").read_bytes() == before
    replaced = CliRunner().invoke(main, [*args, "--seed", "1", "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert json.loads((out / "summary.json").read_bytes())["eval"] != json.loads(before)["eval"]  # a new run
    assert (out / "notes.txt").read_text() == "mine"
    inside = CliRunner().invoke(main, [*args, "--base", str(out / "warm"), "--overwrite"])
    assert inside.exit_code == 2 and "the base lies in the earlier demo" in inside.output
    assert (out / "warm" / "model.safetensors").is_file()


def test_bad_usage_exits_2():
    assert CliRunner().invoke(main, ["demo", "--steps", "1"]).exit_code == 2
    assert CliRunner().invoke(main, ["no-such-command"]).exit_code == 2
