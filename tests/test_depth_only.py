"""Depth-only growth: `--to-depth` at the source width (`--to-width` left out
or equal to it) stacks the layers; neither growing is refused."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from models import tiny
from ws_convert.cli import main

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    cls, config = tiny("llama", layers=4)
    path = tmp_path_factory.mktemp("depth") / "llama"
    torch.manual_seed(0)
    model = cls(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.rand_like(p))  # nothing trivially 0 or 1
    model.save_pretrained(path)
    return path


def _run(*args: object):
    return CliRunner().invoke(main, [*map(str, args)])


@pytest.mark.parametrize("width", [[], ["--to-width", "64"]], ids=["width-omitted", "same-width"])
def test_four_layers_stack_to_eight_at_the_same_width(source, tmp_path, width):
    out = tmp_path / "out"
    res = _run("grow", source, "-o", out, "--to-depth", "8", "--shrink", "1", "--perturb", "0", *width)
    assert res.exit_code == 0, res.output
    model, info = transformers.LlamaForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    assert model.config.num_hidden_layers == 8 and model.config.hidden_size == 64
    src, grown = load_file(source / "model.safetensors"), load_file(out / "model.safetensors")
    for name, value in grown.items():
        if ".layers." in name:
            i = int(name.split(".")[2])
            want = src[name.replace(f".layers.{i}.", f".layers.{i % 4}.", 1)]
        else:
            want = src[name]
        assert torch.equal(value, want), name
    res = _run("verify", out)
    assert res.exit_code == 0 and "ok:" in res.output, res.output


def test_the_default_output_is_named_after_the_depth(source, tmp_path):
    import shutil

    src = tmp_path / "llama"
    shutil.copytree(source, src)
    res = _run("grow", src, "--to-depth", "8", "-q")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "llama-d8" / "model.safetensors").is_file()


@pytest.mark.parametrize("args", [["--to-width", "64"], ["--to-width", "64", "--to-depth", "4"]])
def test_nothing_to_grow_is_one_line(source, args):
    res = _run("plan", source, *args)
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        "ws-convert: error: nothing to grow: the target has the source's width 64 and depth 4; give a larger "
        "--to-width or --to-depth"]


def test_neither_target_given_is_refused(source):
    res = _run("plan", source)
    assert res.exit_code == 2 and "give --to-width, --to-depth, --to-experts or several" in res.output, res.output


def test_a_smaller_width_is_refused(source):
    res = _run("plan", source, "--to-width", "32", "--to-depth", "8")
    assert res.exit_code == 2 and "--to-width 32 is smaller than the source width 64" in res.output, res.output
