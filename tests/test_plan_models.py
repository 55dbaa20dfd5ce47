"""Grown checkpoints are right for real model code: tiny Hugging Face models
of every supported family, grown and loaded back into their own classes."""

import math
import random

import pytest
import torch

from models import FAMILIES, tiny
from ws_convert.engine import grow_state_dict
from ws_convert.errors import PlanError
from ws_convert.plan import GrowthOptions, Source, make_plan
from ws_convert.torch_dtypes import NAMES

EXACT = dict(shrink=1.0, perturb=0.0)


def build(kind, **kw):
    cls, config = tiny(kind, **kw)
    torch.manual_seed(0)
    model = cls(config).eval()
    return cls, config, {k: v.detach().clone() for k, v in model.state_dict().items()}


def load_grown(cls, config, grown, plan):
    new_config = type(config).from_dict(plan.config)
    model = cls(new_config).eval()
    result = model.load_state_dict(grown, strict=False)
    assert not result.missing_keys and not result.unexpected_keys, result
    logits = model(torch.randint(0, 97, (2, 9))).logits
    assert torch.isfinite(logits).all()
    return model


@pytest.mark.parametrize("kind", FAMILIES)
@pytest.mark.parametrize("policy", ["heads", "head-dim"])
def test_grown_model_loads_and_runs(kind, policy):
    cls, config, state = build(kind)
    grown, plan = grow_state_dict(state, 128, config=config.to_dict(), head_policy=policy, **EXACT)
    load_grown(cls, config, grown, plan)
    assert plan.target.width == 128
    if policy == "heads":
        assert (plan.target.heads, plan.target.kv_heads, plan.target.head_dim) == (8, 4 if kind != "gpt2" else 8, 16)
    else:
        assert (plan.target.heads, plan.target.head_dim) == (4, 32)


def head_blocks(w, n_heads, hd, axis):
    return [w.narrow(axis, h * hd, hd) for h in range(n_heads)]


@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2", "qwen3"])
def test_heads_keep_their_place(kind):
    cls, config, state = build(kind)
    grown, plan = grow_state_dict(state, 128, config=config.to_dict(), **EXACT)
    hd, W = 16, 64
    pre = "model.layers.1.self_attn."
    for proj, heads, new_heads in (("q_proj", 4, 8), ("k_proj", 2, 4), ("v_proj", 2, 4)):
        src, out = state[pre + proj + ".weight"], grown[pre + proj + ".weight"]
        for h, (s, o) in enumerate(zip(head_blocks(src, heads, hd, 0), head_blocks(out, new_heads, hd, 0))):
            assert torch.equal(o[:, :W], s) and not o[:, W:].any(), (proj, h)
        assert not out[heads * hd:].any()  # new heads start at zero
        if pre + proj + ".bias" in state:
            assert torch.equal(grown[pre + proj + ".bias"][: heads * hd], state[pre + proj + ".bias"])
    o_src, o_out = state[pre + "o_proj.weight"], grown[pre + "o_proj.weight"]
    assert torch.equal(o_out[:W, : 4 * hd], o_src) and not o_out[:, 4 * hd:].any()
    if kind == "qwen3":
        assert torch.equal(grown[pre + "q_norm.weight"], state[pre + "q_norm.weight"])


def test_gpt2_fused_qkv_keeps_segments():
    cls, config, state = build("gpt2")
    grown, plan = grow_state_dict(state, 128, config=config.to_dict(), **EXACT)
    W, W2 = 64, 128
    src, out = state["transformer.h.0.attn.c_attn.weight"], grown["transformer.h.0.attn.c_attn.weight"]
    assert out.shape == (W2, 3 * W2)
    for seg in range(3):  # q, k, v each padded on its own
        assert torch.equal(out[:W, seg * W2: seg * W2 + W], src[:, seg * W: (seg + 1) * W])
        assert not out[:, seg * W2 + W: (seg + 1) * W2].any()
    b_src, b_out = state["transformer.h.0.attn.c_attn.bias"], grown["transformer.h.0.attn.c_attn.bias"]
    for seg in range(3):
        assert torch.equal(b_out[seg * W2: seg * W2 + W], b_src[seg * W: (seg + 1) * W])
    assert grown["lm_head.weight"].data_ptr() != grown["transformer.wte.weight"].data_ptr()
    assert torch.equal(grown["lm_head.weight"], grown["transformer.wte.weight"])  # still tied


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_head_dim_policy_splits_rotary_halves(kind):
    cls, config, state = build(kind)
    grown, plan = grow_state_dict(state, 128, config=config.to_dict(), head_policy="head-dim", **EXACT)
    hd, hd2, W = 16, 32, 64
    for proj, heads in (("q_proj", 4), ("k_proj", 2)):
        src = state[f"model.layers.0.self_attn.{proj}.weight"]
        out = grown[f"model.layers.0.self_attn.{proj}.weight"]
        for h in range(heads):
            s, o = src[h * hd:(h + 1) * hd], out[h * hd2:(h + 1) * hd2]
            assert torch.equal(o[: hd // 2, :W], s[: hd // 2])  # first half at the start of the new first half
            assert torch.equal(o[hd2 // 2: hd2 // 2 + hd // 2, :W], s[hd // 2:])  # second half likewise
            assert not o[hd // 2: hd2 // 2].any() and not o[hd2 // 2 + hd // 2:].any()
    if kind == "qwen3":
        n_src, n_out = state["model.layers.0.self_attn.q_norm.weight"], grown["model.layers.0.self_attn.q_norm.weight"]
        assert torch.equal(n_out[: hd // 2], n_src[: hd // 2]) and torch.equal(n_out[hd2 // 2: hd2 // 2 + hd // 2], n_src[hd // 2:])


@pytest.mark.parametrize("policy,expected", [("stack", [0, 1, 2, 0, 1, 2]), ("interleave", [0, 0, 1, 1, 2, 2]),
                                             ("init", [0, 1, 2, None, None, None])])
def test_depth_policies(policy, expected):
    cls, config, state = build("llama", layers=3)
    grown, plan = grow_state_dict(state, 128, config=config.to_dict(), to_depth=6, depth_policy=policy, **EXACT)
    load_grown(cls, config, grown, plan)
    assert plan.layer_sources == expected
    for j, s in enumerate(expected):
        out = grown[f"model.layers.{j}.mlp.down_proj.weight"]
        if s is None:
            assert not out.any()  # perturb 0: pure init scaled to nothing
        else:
            assert torch.equal(out[:64, :128], state[f"model.layers.{s}.mlp.down_proj.weight"])


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_noise_matches_plan(kind):
    cls, config, state = build(kind, width=128, heads=4, kv_heads=2)
    state = {k: v.float() for k, v in state.items()}
    grown, plan = grow_state_dict(state, 256, config=config.to_dict(), seed=3)
    for t in plan.tensors:
        out = grown[t.name]
        src = state[t.source]
        if t.role.value == "output":  # μP zero readout: no noise, only the shrunk source
            padded = torch.zeros(t.shape)
            padded[: src.shape[0], : src.shape[1]] = 0.4 * src
            assert torch.equal(out, padded), t.name
            continue
        if t.noise_std == 0:
            continue
        covered = torch.ones((), dtype=torch.bool)
        for axis, (segs, size) in enumerate(zip(t.maps, t.shape)):
            has = torch.zeros(size, dtype=torch.bool)
            for dst, _, length, *_ in segs:
                has[dst: dst + length] = True
            covered = covered.unsqueeze(-1) & has
        region = out[~covered]  # where nothing lands: noise alone
        n = region.numel()
        if n < 1000:
            continue
        assert abs(region.std().item() / t.noise_std - 1) < 6 / math.sqrt(2 * n) + 0.01, t.name


def test_plan_is_deterministic_and_order_free():
    cls, config, state = build("qwen2")
    tensors = {n: (NAMES[v.dtype], tuple(v.shape)) for n, v in state.items()}
    shuffled = list(tensors.items())
    random.Random(1).shuffle(shuffled)
    opts = GrowthOptions(to_width=128, to_depth=4)
    a = make_plan(Source("a", tensors, config.to_dict()), opts).to_json()
    b = make_plan(Source("a", dict(shuffled), config.to_dict()), opts).to_json()
    assert a == b


def test_grown_base_shapes_work_with_mup(tmp_path):
    mup = pytest.importorskip("mup")
    from ws_convert.plan import write_base_shapes

    cls, config, state = build("llama")
    grown, plan = grow_state_dict(state, 128, config=config.to_dict(), **EXACT)
    bsh = tmp_path / "base_shapes.bsh"
    bsh.write_text(write_base_shapes(plan.base_shapes))
    model = load_grown(cls, config, grown, plan)
    readout = mup.MuReadout(128, 97, bias=False)  # what a μP user puts in place of lm_head
    readout.weight.data.copy_(model.lm_head.weight.data)
    model.lm_head = readout
    mup.set_base_shapes(model, str(bsh), rescale_params=False)
    assert torch.equal(model.lm_head.weight, grown["lm_head.weight"])  # rescale_params=False: untouched
    q = model.model.layers[0].self_attn.q_proj.weight
    assert q.infshape.width_mult() == 2 and q.infshape.ninf() == 2
    emb = model.model.embed_tokens.weight
    assert emb.infshape.ninf() == 1


def test_base_shapes_file_overrides_the_source(tmp_path):
    from ws_convert.plan import write_base_shapes

    cls, config, state = build("llama")
    _, default = grow_state_dict(state, 128, config=config.to_dict(), **EXACT)
    base = {k: [d // 2 if d is not None else None for d in v] for k, v in default.base_shapes.items()}
    bsh = tmp_path / "half.bsh"
    bsh.write_text(write_base_shapes(base))  # as if the small model had been tuned at half its width
    _, plan = grow_state_dict(state, 128, config=config.to_dict(), base_shapes=str(bsh), **EXACT)
    q = {t.name: t for t in plan.tensors}["model.layers.0.self_attn.q_proj.weight"]
    q0 = {t.name: t for t in default.tensors}["model.layers.0.self_attn.q_proj.weight"]
    assert q0.init.std == pytest.approx(0.02 * math.sqrt(64 / 128))
    assert q.init.std == pytest.approx(0.02 * math.sqrt(32 / 128))
    assert plan.base_shapes == base
    bsh.write_text("model.norm.weight: [32]\n")
    with pytest.raises(PlanError, match="no base shape for"):
        grow_state_dict(state, 128, config=config.to_dict(), base_shapes=str(bsh))
