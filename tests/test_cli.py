"""The command line: the demo runs every stage end to end; bad usage exits with 2."""

import json

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
    assert [r["step"] for r in summary["eval"]] == [1, 5, 10, 15, 20]
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    for run in ("grown", "warm", "scratch"):
        assert (out / run / "model.safetensors").is_file()
    # the warm start begins far below a fresh model's ~ln(256) = 5.5
    assert summary["eval"][0]["warm"] < summary["eval"][0]["scratch"] - 1.0


def test_bad_usage_exits_2():
    assert CliRunner().invoke(main, ["demo", "--steps", "1"]).exit_code == 2
    assert CliRunner().invoke(main, ["no-such-command"]).exit_code == 2
