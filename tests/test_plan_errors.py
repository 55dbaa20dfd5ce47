"""Every invalid target is refused before anything is written, with the reason."""

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from models import tiny
from ws_convert.cli import main
from ws_convert.engine import grow_state_dict
from ws_convert.errors import PlanError
from ws_convert.plan import GrowthOptions, Source, make_plan
from ws_convert.torch_dtypes import NAMES


def source(kind="llama", config=True, **kw):
    cls, cfg = tiny(kind, **kw)
    torch.manual_seed(0)
    state = cls(cfg).state_dict()
    return Source("tiny", {n: (NAMES[v.dtype], tuple(v.shape)) for n, v in state.items()},
                  cfg.to_dict() if config else None), state


@pytest.mark.parametrize("heads,kv,options,message", [
    (4, 2, dict(to_width=64), "nothing to grow"),
    (4, 2, dict(to_width=32), "smaller than the source width"),
    (4, 2, dict(to_width=72), "4.5 heads, not a whole number"),
    (8, 2, dict(to_width=80), "2.5 kv-heads, which breaks the GQA group size"),
    (4, 2, dict(to_width=66, head_policy="head-dim"), "head_dim 16.5"),
    (4, 2, dict(to_width=68, head_policy="head-dim"), "head_dim 17, which is not a whole even"),
    (4, 2, dict(to_width=128, to_ffn=64), "smaller than the source ffn"),
    (4, 2, dict(to_width=128, to_depth=1), "smaller than the source depth"),
    (4, 2, dict(to_width=128, to_depth=3), "multiple of 2"),
    (4, 2, dict(to_width=128, to_depth=3, depth_policy="interleave"), "multiple of 2"),
    (4, 2, dict(to_width=128, arch="gpt2"), "model_type 'llama', which --arch gpt2 does not describe"),
    (4, 2, dict(to_width=128, readout_init="ones"), "readout-init"),
])
def test_refused_targets(heads, kv, options, message):
    src, _ = source(heads=heads, kv_heads=kv)
    with pytest.raises(PlanError, match=message):
        make_plan(src, GrowthOptions(**options))


def test_init_policy_fills_any_depth():
    src, _ = source()
    plan = make_plan(src, GrowthOptions(to_width=128, to_depth=3, depth_policy="init"))
    assert plan.layer_sources == [0, 1, None]


def test_bare_file_needs_head_count(tmp_path):
    src, state = source("gpt2", config=False)
    with pytest.raises(PlanError, match="--num-heads"):
        make_plan(src, GrowthOptions(to_width=128))
    with pytest.raises(PlanError, match="not a llama checkpoint"):  # no model_type: the names decide
        make_plan(src, GrowthOptions(to_width=128, arch="llama"))
    plan = make_plan(src, GrowthOptions(to_width=128, num_heads=4))
    assert plan.target.heads == 8 and plan.config is None
    with pytest.raises(PlanError, match="4.5 heads"):  # width 72 has no whole head count
        make_plan(src, GrowthOptions(to_width=72, num_heads=4))
    with pytest.raises(PlanError, match=r"--num-heads gives 3 heads, which do not divide the width 64"):
        make_plan(src, GrowthOptions(to_width=96, num_heads=3))


def test_unknown_architecture_and_tensors(tmp_path):
    save_file({"encoder.w": torch.zeros(4, 4)}, tmp_path / "m.safetensors")
    result = CliRunner().invoke(main, ["plan", str(tmp_path / "m.safetensors"), "--to-width", "8"])
    assert result.exit_code == 2 and "give --arch" in result.output
    src, _ = source()
    extra = Source("tiny", {**src.tensors, "model.extra.weight": ("F32", (3,))}, src.config)
    with pytest.raises(PlanError, match="'model.extra.weight' is not part of a llama model"):
        make_plan(extra, GrowthOptions(to_width=128))
    with pytest.raises(PlanError, match="unknown --arch"):
        make_plan(src, GrowthOptions(to_width=128, arch="bert"))


def test_generic_fallback_pads_and_warns():
    tensors = {"embed.weight": torch.randn(10, 8), "block.w": torch.randn(16, 8), "block.norm.weight": torch.ones(8),
               "head.weight": torch.randn(10, 8)}
    config = {"hidden_size": 8, "intermediate_size": 16, "num_attention_heads": 2}
    grown, plan = grow_state_dict(tensors, 16, config=config, arch="generic", shrink=1.0, perturb=0.0)
    assert grown["block.w"].shape == (32, 16) and torch.equal(grown["block.w"][:16, :8], tensors["block.w"])
    assert {t.name: t.role.value for t in plan.tensors} == {
        "embed.weight": "input", "block.w": "hidden", "block.norm.weight": "norm_gain", "head.weight": "output"}
    assert plan.warnings and "generic" in plan.warnings[0]
    with pytest.raises(PlanError, match="fused heads"):
        grow_state_dict({"qkv": torch.randn(24, 8)}, 16, config={"hidden_size": 8, "num_attention_heads": 2},
                        arch="generic")
    with pytest.raises(PlanError, match="needs the width"):
        grow_state_dict({"w": torch.randn(8, 8)}, 16, arch="generic")


def test_plan_and_inspect_commands(tmp_path):
    cls, cfg = tiny("qwen2")
    cls(cfg).save_pretrained(tmp_path / "small")
    runner = CliRunner()
    res = runner.invoke(main, ["inspect", str(tmp_path / "small")])
    assert res.exit_code == 0, res.output
    for line in ("width      64", "heads      4", "kv_heads   2", "ffn        128", "vocab      97"):
        assert line in res.output
    res = runner.invoke(main, ["plan", str(tmp_path / "small"), "--to-width", "256", "--to-depth", "4"])
    assert res.exit_code == 0, res.output
    assert "width 64 -> 256" in res.output and "model.layers.3.self_attn.q_proj.bias" in res.output
    assert "warning: growth factor 8" in res.output  # 4x width and 2x depth is far past 2.5
    res = runner.invoke(main, ["plan", str(tmp_path / "small"), "--to-width", "128", "--json"])
    data = json.loads(res.output)
    assert data["target"]["width"] == 128 and data["config"]["hidden_size"] == 128
    assert {t["name"] for t in data["tensors"]} >= {"lm_head.weight", "model.norm.weight"}
    res = runner.invoke(main, ["plan", str(tmp_path / "small"), "--to-width", "72"])
    assert res.exit_code == 2 and res.output.startswith("ws-convert: error:") and len(res.output.splitlines()) == 1
