"""The bundled μP GPT as a growth source: its config rides in the
safetensors metadata, and a grown checkpoint is again a μP GPT."""

import os

import pytest
import torch

pytest.importorskip("mup")

from ws_convert import grow, grow_state_dict  # noqa: E402
from ws_convert.model import GPTConfig, base_shapes, build, load, save  # noqa: E402

EXACT = dict(shrink=1.0, perturb=0.0)


def small(width=64, depth=2, heads=4, base_width=32):
    torch.manual_seed(0)
    model = build(GPTConfig(width=width, depth=depth, heads=heads, base_width=base_width, zero_query=False))
    return model, {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("policy", ["heads", "head-dim"])
def test_grown_gpt_loads_and_runs(policy):
    model, state = small()
    grown, plan = grow_state_dict(state, 128, config=model.config.to_dict(), head_policy=policy, **EXACT)
    big = build(GPTConfig.from_dict(plan.config), init=False)
    missing, unexpected = big.load_state_dict(grown, strict=False)
    assert not missing and not unexpected
    assert torch.isfinite(big(torch.randint(0, 256, (2, 12)))).all()
    assert plan.base_shapes == base_shapes(big.config)  # the planner's μP base shapes are the model's own
    hd, hd2 = 16, 16 if policy == "heads" else 32
    q, q2 = state["blocks.0.attn.q.weight"], grown["blocks.0.attn.q.weight"]
    for h in range(4):
        if policy == "heads":
            assert torch.equal(q2[h * hd:(h + 1) * hd, :64], q[h * hd:(h + 1) * hd])
        else:  # rotary halves land at the start of the new halves
            assert torch.equal(q2[h * hd2: h * hd2 + 8, :64], q[h * hd: h * hd + 8])
            assert torch.equal(q2[h * hd2 + 16: h * hd2 + 24, :64], q[h * hd + 8: (h + 1) * hd])


def test_checkpoint_needs_no_side_files(tmp_path):
    model, _ = small()
    save(model, tmp_path / "model.safetensors")
    os.remove(tmp_path / "config.json")  # the config is in the metadata too
    report = grow(tmp_path / "model.safetensors", 128, to_depth=4, depth_policy="interleave", out=tmp_path / "big")
    big = load(report.out)
    assert (big.config.width, big.config.depth, big.config.heads, big.config.base_width) == (128, 4, 8, 32)
    assert report.plan.layer_sources == [0, 0, 1, 1]
    assert torch.isfinite(big(torch.randint(0, 256, (1, 8)))).all()
    # μP noise scale at the target: init_std * sqrt(base_fan_in / fan_in) = 0.02 * sqrt(32 / 128)
    fc = next(t for t in report.plan.tensors if t.name == "blocks.0.fc.weight")
    assert fc.init.std == pytest.approx(0.01)


def test_load_refuses_other_architectures(tmp_path):
    from safetensors.torch import save_file

    from ws_convert.errors import CheckpointError

    save_file({"w": torch.zeros(2)}, tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="not a ws_convert_gpt checkpoint"):
        load(tmp_path / "x.safetensors")


def test_norms_copy_keeps_old_gains_and_starts_new_units_at_one():
    model, state = small()
    with torch.no_grad():
        for name, t in state.items():
            if "ln" in name:
                t.uniform_(0.5, 1.5)  # trained-looking gains, not all ones
    shrunk, _ = grow_state_dict(state, 128, config=model.config.to_dict())
    copied, plan = grow_state_dict(state, 128, config=model.config.to_dict(), norms="copy")
    gains = [t for t in plan.tensors if t.role.value == "norm_gain"]
    assert gains and all(t.shrink == 1.0 and "copied" in t.note for t in gains)
    for t in gains:
        old = state[t.name]
        assert torch.equal(copied[t.name][:64], old)
        assert torch.equal(copied[t.name][64:], torch.ones(64))
        assert torch.equal(shrunk[t.name][:64], 0.4 * old + 1)
    for name in copied:  # every other tensor: the same bytes as the default
        if name not in {t.name for t in gains}:
            assert torch.equal(copied[name], shrunk[name]), name


@pytest.mark.parametrize("zero_query", [True, False])
def test_growth_adds_no_noise_where_the_model_starts_at_zero(zero_query):
    """The bundled GPT starts its query projection at zero (zero_query) and
    its readout at zero: there the operator shrinks the old weights and adds
    nothing, as the target model's own init would."""
    torch.manual_seed(0)
    model = build(GPTConfig(width=64, depth=2, heads=4, base_width=32, zero_query=zero_query))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    grown, plan = grow_state_dict(state, 128, config=model.config.to_dict())
    q = next(t for t in plan.tensors if t.name == "blocks.1.attn.q.weight")
    assert (q.noise_std == 0) == zero_query and ("zero at init" in q.note) == zero_query
    old, new = state["blocks.1.attn.q.weight"], grown["blocks.1.attn.q.weight"]
    shrunk = (torch.tensor(0.4) * old).float()
    assert torch.equal(new[:64, :64], shrunk) == zero_query
    assert (not new[64:].any() and not new[:, 64:].any()) == zero_query
    readout = next(t for t in plan.tensors if t.name == "lm_head.weight")
    assert readout.noise_std == 0 and torch.equal(grown["lm_head.weight"][:, :64], torch.tensor(0.4) * state["lm_head.weight"])


def test_identity_blocks_keep_the_gpt_logits():
    """--depth-policy identity on the bundled GPT: the two copied blocks start
    with zero output projections, so the 4-layer model is the 2-layer one."""
    model, state = small()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # a trained model: no zero query, no zero readout
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    grown, plan = grow_state_dict(state, to_depth=4, depth_policy="identity", config=model.config.to_dict(), **EXACT)
    assert plan.layer_sources == [0, 0, 1, 1]
    big = build(GPTConfig.from_dict(plan.config), init=False)
    big.load_state_dict(grown)
    x = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        assert torch.allclose(big(x), model(x), rtol=1e-6, atol=1e-6)


def test_hyperclone_keeps_the_gpt_logits():
    """--method hyperclone on the bundled GPT: every tensor tiled and its
    fan-in divided, but the readout not: μP's readout divides by the width
    multiplier itself. Its noise, paired along the fan-in, keeps the logits."""
    model, _ = small()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x = torch.randint(0, 256, (2, 12))
    for perturb in (0.0, 1.0):
        grown, plan = grow_state_dict(state, 128, to_depth=4, depth_policy="identity", method="hyperclone",
                                      perturb=perturb, config=model.config.to_dict())
        big = build(GPTConfig.from_dict(plan.config), init=False)
        big.load_state_dict(grown)
        assert big.config.heads == 8 and big.config.width == 128
        with torch.no_grad():
            assert torch.allclose(big(x), model(x), rtol=1e-5, atol=1e-5), perturb


def test_net2net_keeps_the_gpt_logits_without_norms():
    """--method net2net on the bundled GPT, no noise: with its RMS norms made
    the identity (gains kept: x * g), the copies' split fan-in keeps the
    logits; μP's readout divides by the width multiplier, so the readout
    takes it back."""
    model, _ = small()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    grown, plan = grow_state_dict(state, 128, method="net2net", perturb=0.0, config=model.config.to_dict())
    big = build(GPTConfig.from_dict(plan.config), init=False)
    big.load_state_dict(grown)
    assert not torch.equal(grown["wte.weight"][:, 64:], grown["wte.weight"][:, :64])  # random picks, not tiles
    for m in (model, big):
        for module in m.modules():
            if isinstance(module, torch.nn.RMSNorm):
                module.forward = lambda x, g=module.weight: x * g
    x = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        want = model(x)
        assert (big(x) - want).abs().max() <= 1e-4 * want.abs().max()
