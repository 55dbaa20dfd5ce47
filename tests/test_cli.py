"""The command line: the demo runs end to end; bad usage exits with 2."""

import re

from click.testing import CliRunner

from ws_convert.cli import main


def test_demo_runs_and_checks_itself():
    result = CliRunner().invoke(main, ["demo", "--width", "96"])
    assert result.exit_code == 0, result.output
    assert "equals the zero-padded source: True" in result.output
    assert "same command, same bytes:                     True" in result.output
    std = float(re.search(r"new block std .*?([0-9.]+)\n", result.output).group(1))
    assert abs(std - 0.02) < 0.002


def test_bad_usage_exits_2():
    assert CliRunner().invoke(main, ["demo", "--width", "1"]).exit_code == 2
    assert CliRunner().invoke(main, ["no-such-command"]).exit_code == 2
