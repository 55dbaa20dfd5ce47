"""Every natively grown family, on a tiny model of its own transformers class
with every parameter random: inspect and plan read it; growth at 2x width,
2x depth and both loads back into that class with no missing, unexpected or
mismatched keys; zero-padding (shrink 1, no noise) keeps the logits exactly
where the family's function allows it; verify passes. Adding a family is a
data file in ws_convert/families/ and a case in models.FAMILY_CASES."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from models import FAMILY_CASES, family_model, perturbed
from ws_convert.cli import main

W, TO = 32, 64
# Families whose function zero-padding cannot keep by their nature, and what plan says about it.
CAVEATS = {"bloom": "ALiBi slopes", "olmo2": "over all heads at once", "olmoe": "over all heads at once",
           "gemma": "sqrt(hidden_size)",
           "gemma2": "sqrt(hidden_size)", "gemma3_text": "sqrt(hidden_size)"}
MULTI_QUERY = {"falcon-mq", "gpt_bigcode"}
MIXTURES = {"mixtral", "olmoe", "qwen2_moe", "qwen3_moe"}


def cli(*args: object) -> str:
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, (res.output, res.exception)
    return res.output


@pytest.fixture(scope="module", params=list(FAMILY_CASES))
def source(request, tmp_path_factory) -> tuple[str, Path]:
    case = request.param
    cls, config = family_model(case)
    path = tmp_path_factory.mktemp(case) / "src"
    perturbed(cls(config)).save_pretrained(path)
    return case, path


def load(case: str, directory: Path, **kw):
    """The family's model from `directory` in float64; every key must match."""
    cls = family_model(case)[0]
    if case in MIXTURES:  # the grouped kernels take no float64
        kw["experts_implementation"] = "eager"
    model, info = cls.from_pretrained(directory, output_loading_info=True, dtype=torch.float64, **kw)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return model.eval()


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(ids).logits
    assert torch.isfinite(out).all()
    return out


def no_norms(model):
    """The model with every norm the identity: zero-padding keeps the function of
    everything else, while an RMS over a wider axis would not."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if "norm" in type(child).__name__.lower():
                setattr(module, name, torch.nn.Identity())
    return model


def ids(config) -> torch.Tensor:
    return torch.randint(3, config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(1))


def test_inspect_and_plan(source):
    case, path = source
    info = json.loads(cli("inspect", path, "--json"))
    assert info["arch"] == {"qwen3": "llama"}.get(case, case.split("-")[0]) and info["width"] == W and info["heads"] == 4
    plan = json.loads(cli("plan", path, "--to-width", TO, "--json"))
    assert plan["target"]["width"] == TO
    warnings = " ".join(plan["warnings"])
    if case in CAVEATS:
        assert CAVEATS[case] in warnings
    if case in MULTI_QUERY:
        assert plan["target"]["kv_heads"] == 1 and "multi-query" in warnings
        assert plan["config"].get("num_kv_heads", plan["config"].get("num_key_value_heads")) == 1
    else:
        assert plan["target"]["kv_heads"] == 2 * plan["source"]["kv_heads"]


def test_zero_padding_keeps_the_logits(source, tmp_path):
    """2x width by adding heads, shrink 1 and no noise: old head h stays head h,
    every fused segment and per-head block in place, so with norms as the
    identity the grown model computes the source's logits (float64)."""
    case, path = source
    out = tmp_path / "wide"
    cli("grow", path, "--to-width", TO, "--shrink", 1, "--perturb", 0, "-o", out, "-q")
    before, after = load(case, path), load(case, out)
    assert after.config.vocab_size == before.config.vocab_size
    if case.startswith("gemma"):  # its embedding scale follows the width; put the source's back
        after.model.embed_tokens.embed_scale.copy_(before.model.embed_tokens.embed_scale)
    x = ids(before.config)
    same = torch.allclose(logits(no_norms(after), x), logits(no_norms(before), x), rtol=1e-10, atol=1e-10)
    assert same == (case not in ("bloom",)), case  # ALiBi slopes change with the head count


NOT_CLONABLE = {"bloom": "ALiBi", "gemma": "sqrt(hidden_size)", "gemma2": "sqrt(hidden_size)",
                "gemma3_text": "sqrt(hidden_size)"}


def test_hyperclone_keeps_the_logits(source, tmp_path):
    """--method hyperclone at 2x width and 2x depth (identity blocks): every
    tensor tiled, fan-in divided, so with norms as the identity the logits
    are the source's to float64 rounding. Real norms compute in float32
    inside transformers, so there the match is to float32 rounding, and so
    it is with the function-keeping noise (paired +/- along the fan-in)."""
    case, path = source
    args = ["--to-width", TO, "--to-depth", 4, "--depth-policy", "identity", "--method", "hyperclone"]
    if case in NOT_CLONABLE:
        res = CliRunner().invoke(main, ["grow", str(path), *map(str, args), "-o", str(tmp_path / "x")])
        assert res.exit_code == 2 and NOT_CLONABLE[case] in res.output, res.output
        return
    cli("grow", path, *args, "--perturb", 0, "-o", tmp_path / "exact", "-q")
    cli("grow", path, *args, "-o", tmp_path / "noisy", "-q")
    cli("verify", tmp_path / "noisy")
    before, exact, noisy = load(case, path), load(case, tmp_path / "exact"), load(case, tmp_path / "noisy")
    x = ids(before.config)
    want = logits(before, x)
    scale = want.abs().max()
    assert (logits(exact, x) - want).abs().max() < 2e-6 * scale, case
    assert (logits(noisy, x) - want).abs().max() < 2e-5 * scale, case
    assert any(not torch.equal(a, b) for a, b in zip(exact.parameters(), noisy.parameters())), "no noise"
    # a tied readout is the embedding, so the final norm divides in its place: gone with the norms
    copies = 2 if getattr(before.config, "tie_word_embeddings", False) else 1
    assert torch.allclose(logits(no_norms(exact), x), copies * logits(no_norms(before), x), rtol=1e-10,
                          atol=1e-10), case


class GainOnly(torch.nn.Module):
    """A norm without its normalization: x * gain (+ bias)."""

    def __init__(self, norm: torch.nn.Module):
        super().__init__()
        self.weight, self.bias = norm.weight, getattr(norm, "bias", None)

    def forward(self, x):
        return x * self.weight if self.bias is None else x * self.weight + self.bias


def test_net2net_new_units_copy_old_ones(source, tmp_path):
    """--method net2net, no noise: old units stay, every new unit is a copy
    of an old one (the embedding's new columns are old columns), and the
    fan-in split among the copies keeps the logits with every norm the
    identity, to the float32 rounding of the split weights. A tied readout
    is the embedding and cannot split, so the final norm's gain does: there
    the final norm keeps its gain."""
    case, path = source
    args = ["--to-width", TO, "--method", "net2net", "--perturb", 0]
    refused = {**NOT_CLONABLE, "opt": "behind a projection"}  # its tied readout reads word_embed_proj_dim
    if case in refused:
        res = CliRunner().invoke(main, ["grow", str(path), *map(str, args), "-o", str(tmp_path / "x")])
        assert res.exit_code == 2 and refused[case] in res.output, res.output
        return
    out = tmp_path / "wide"
    cli("grow", path, *args, "-o", out, "-q")
    cli("verify", out)
    plan = json.loads(cli("plan", path, *args, "--json"))
    embedding = next(t["name"] for t in plan["tensors"] if t["role"] == "input")
    with safe_open(path / "model.safetensors", "pt") as f:
        old = f.get_tensor(embedding)
    with safe_open(out / "model.safetensors", "pt") as f:
        new = f.get_tensor(embedding)
    assert torch.equal(new[:, :old.shape[1]], old)
    assert all(any(torch.equal(new[:, j], old[:, i]) for i in range(old.shape[1])) for j in range(new.shape[1]))
    assert not torch.equal(new[:, old.shape[1]:], new[:, :new.shape[1] - old.shape[1]])  # random, not tiled
    before, after = load(case, path), load(case, out)
    if getattr(before.config, "tie_word_embeddings", False):
        final = next(t["name"] for t in plan["tensors"] if t["role"] == "norm_gain" and ".layers." not in t["name"]
                     and ".h." not in t["name"]).removesuffix(".weight")
        parent, _, leaf = final.rpartition(".")
        for m in (before, after):
            holder = m.get_submodule(parent)
            setattr(holder, leaf, GainOnly(getattr(holder, leaf)))
    x = ids(before.config)
    want = logits(no_norms(before), x)
    # a unit copied 3 times holds f32(w / 3) three times: float32 rounding, as the weights are float32,
    # grown through layers without norms (and a router's top-k)
    assert (logits(no_norms(after), x) - want).abs().max() <= 1e-4 * want.abs().max(), case


@pytest.mark.parametrize("depth", [3, 4])
def test_identity_blocks_keep_the_logits(source, tmp_path, depth):
    """--depth-policy identity, shrink 1, no noise: the copied blocks start with
    their output projections zero, so the deeper model computes the source's
    logits, real norms and all; and each copy sits after the layer it copies."""
    case, path = source
    out = tmp_path / "deep"
    cli("grow", path, "--to-depth", depth, "--depth-policy", "identity", "--shrink", 1, "--perturb", 0, "-o", out,
        "-q")
    before, after = load(case, path), load(case, out)
    assert after.config.num_hidden_layers == depth
    x = ids(before.config)
    assert torch.allclose(logits(after, x), logits(before, x), rtol=1e-12, atol=1e-12), case
    plan = json.loads(cli("plan", path, "--to-depth", depth, "--depth-policy", "identity", "--json"))
    assert plan["layer_sources"] == {3: [0, 1, 1], 4: [0, 0, 1, 1]}[depth]


@pytest.mark.parametrize("args", [("--to-depth", 4), ("--to-width", TO, "--to-depth", 4),
                                  ("--to-width", TO, "--head-policy", "head-dim")],
                         ids=["depth", "width-and-depth", "head-dim"])
def test_grown_model_loads_and_verifies(source, tmp_path, args):
    case, path = source
    out = tmp_path / "grown"
    cli("grow", path, *args, "-o", out, "-q")
    model = load(case, out)
    logits(model, ids(model.config))
    cli("verify", out)
    config = json.loads((out / "config.json").read_text())
    layers = 4 if "--to-depth" in args else 2
    assert model.config.num_hidden_layers == layers
    for key, value in json.loads((path / "config.json").read_text()).items():  # per-layer lists follow the layers
        if isinstance(value, list) and len(value) == 2 and key not in ("architectures", "eos_token_id"):
            assert len(config[key]) == layers, key
    with safe_open(out / "model.safetensors", "pt") as f:
        names = set(f.keys())
    with safe_open(path / "model.safetensors", "pt") as f:
        assert ("lm_head.weight" in names) == ("lm_head.weight" in set(f.keys()))  # tied stays tied


SCALES = ("scaling", "inv_norm_factor", "scale_attn", "norm_factor")  # what attention modules call 1/sqrt(head_dim)


def with_source_positions(after, before):
    """The widened-head model given the source's attention scale and rotary
    frequencies (on its first pairs, where the old pairs land): what widening
    changes by its nature, put back so the layout alone is compared."""
    for (_, a), (_, b) in zip(after.named_modules(), before.named_modules(), strict=True):
        for attr in SCALES:
            if isinstance(getattr(b, attr, None), (int, float)):
                setattr(a, attr, getattr(b, attr))
        # pairs no old pair lands on get frequencies of their own, so a pair put there would show
        for name, freq in b.named_buffers(recurse=False):
            if name.endswith("inv_freq"):
                grown = getattr(a, name)
                grown.copy_(torch.linspace(0.37, 2.9, grown.numel()))
                grown[: freq.numel()] = freq
        if isinstance(getattr(b, "embed_positions", None), torch.Tensor) and b.embed_positions.dim() == 2:
            half, half2 = b.embed_positions.shape[-1] // 2, a.embed_positions.shape[-1] // 2  # GPT-J: [sin | cos]
            a.embed_positions.copy_(torch.rand(a.embed_positions.shape, generator=torch.Generator().manual_seed(3)))
            a.embed_positions[:, :half] = b.embed_positions[:, :half]
            a.embed_positions[:, half2: half2 + half] = b.embed_positions[:, half:]
    return after


def test_widened_heads_keep_every_pair(source, tmp_path, monkeypatch):
    """2x width by widening each head, shrink 1 and no noise: every old head
    dim lands where the family's own code pairs it (rotate-half halves,
    interleaved pairs, partial rotary, fused and per-head blocks), shown by
    equal logits once the source's attention scale and rotary frequencies
    are put back."""
    case, path = source
    out = tmp_path / "widened"
    cli("grow", path, "--to-width", TO, "--head-policy", "head-dim", "--shrink", 1, "--perturb", 0, "-o", out, "-q")
    before, after = load(case, path, attn_implementation="eager"), load(case, out, attn_implementation="eager")
    assert after.config.num_attention_heads == before.config.num_attention_heads
    if case.startswith("falcon"):  # it divides by math.sqrt(self.head_dim), the widened one
        from transformers.models.falcon import modeling_falcon
        hd, hd2 = W // 4, TO // 4
        monkeypatch.setattr(modeling_falcon, "math", type("math", (), {
            "sqrt": staticmethod(lambda x: modeling_falcon.torch.tensor(float(hd if x == hd2 else x)).sqrt().item())}))
    if case.startswith("gemma"):
        after.model.embed_tokens.embed_scale.copy_(before.model.embed_tokens.embed_scale)
    x = ids(before.config)
    with torch.no_grad():
        after = with_source_positions(no_norms(after), no_norms(before))
    torch.testing.assert_close(logits(after, x), logits(no_norms(before), x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("args,old,new", [
    ((), lambda w: 0.4 * (1 + w), 0.0),  # the operator on the gain 1 + w; new units at gain 1
    (("--norms", "copy"), lambda w: w, 0.0),  # the effective gain kept
    (("--perturb", "0.5"), lambda w: 0.4 * (1 + w) + 0.5 - 1, 0.5 - 1),
], ids=["shrink", "copy", "half-perturb"])
def test_gains_stored_as_an_offset_grow_as_gains(tmp_path, args, old, new):
    """Gemma stores a norm gain g as w = g - 1: the operator acts on g, and
    "gain init 1" is stored as 0."""
    cls, config = family_model("gemma")
    perturbed(cls(config)).save_pretrained(tmp_path / "src")
    cli("grow", tmp_path / "src", "--to-width", TO, "-o", tmp_path / "out", "-q", *args)
    with safe_open(tmp_path / "src" / "model.safetensors", "pt") as f, \
            safe_open(tmp_path / "out" / "model.safetensors", "pt") as g:
        for name in ("model.norm.weight", "model.layers.1.post_attention_layernorm.weight"):
            w, grown = f.get_tensor(name), g.get_tensor(name)
            torch.testing.assert_close(grown[:W], old(w).float(), rtol=0, atol=1e-6)
            assert torch.all(grown[W:] == new)


def saved(tmp_path: Path, case: str, **edits) -> Path:
    """A tiny model of `case` saved, its config.json then given `edits`."""
    cls, config = family_model(case)
    path = tmp_path / case
    perturbed(cls(config)).save_pretrained(path)
    data = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**data, **edits}))
    return path


@pytest.mark.parametrize("case,edits,args,needles", [
    ("stablelm", dict(qk_layernorm=True), ("--to-width", TO), ("qk_layernorm True", "only with qk_layernorm False")),
    ("bloom", {}, ("--to-width", TO, "--to-ffn", 200), ("always 4 x width", "256")),
    ("gptj", dict(rotary_dim=6), ("--to-width", 48, "--head-policy", "head-dim"), ("9 rotary dims", "6 of 8")),
    ("gpt_neox", dict(num_attention_heads=3), ("--to-width", TO), ("3 heads", "do not divide the width 32")),
    ("falcon", dict(alibi=True), ("--to-width", TO), ()),  # grows, saying the slopes change
])
def test_what_a_family_cannot_take_is_one_line(tmp_path, case, edits, args, needles):
    from test_plan_input import refused
    path = saved(tmp_path, case, **edits)
    if needles:
        refused(["plan", path, *args], *needles)
    else:
        assert "ALiBi slopes" in cli("plan", path, *args)


def test_an_unknown_model_type_names_what_to_give(tmp_path):
    from test_plan_input import refused
    path = saved(tmp_path, "llama", model_type="llama9")
    refused(["plan", path, "--to-width", TO], "model_type 'llama9'", "--arch generic")


@pytest.mark.parametrize("case", sorted(MIXTURES))
def test_every_expert_grows_with_its_own_noise(tmp_path, case):
    """The router grows along the width only and keeps its experts; the
    expert count and top-k stay; every expert draws its own noise."""
    cls, config = family_model(case)
    perturbed(cls(config)).save_pretrained(tmp_path / "src")
    cli("grow", tmp_path / "src", "--to-width", TO, "--shrink", 0, "-o", tmp_path / "out", "-q")
    grown = json.loads((tmp_path / "out" / "config.json").read_text())
    experts_key = next(k for k in ("num_local_experts", "num_experts") if k in grown)
    assert grown[experts_key] == 3 and grown["num_experts_per_tok"] == 2
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as f:
        names = sorted(n for n in f.keys() if ".layers.0." in n and ".experts." in n)
        assert len(names) == 3 * 3
        experts = [torch.cat([f.get_tensor(n).flatten() for n in names if f".experts.{e}." in n]) for e in range(3)]
        router = next(f.get_tensor(n) for n in f.keys() if ".layers.0." in n and n.endswith("gate.weight")
                      and ".experts." not in n)
    assert router.shape == (3, TO)
    for a in range(3):
        for b in range(a + 1, 3):
            assert not torch.equal(experts[a], experts[b])


@pytest.mark.parametrize("policy,dense", [("stack", [1, 3]), ("interleave", [2, 3]), ("init", [1])])
def test_dense_layers_of_a_mixture_follow_their_source_layers(tmp_path, policy, dense):
    """Qwen2-MoE's layer 1 is a dense MLP: grown deeper, the layers filled
    from it are dense too (new layers of pure init take layer 0's form)."""
    cls, config = family_model("qwen2_moe")
    perturbed(cls(config)).save_pretrained(tmp_path / "src")
    cli("grow", tmp_path / "src", "--to-depth", 4, "--depth-policy", policy, "-o", tmp_path / "out", "-q")
    grown = json.loads((tmp_path / "out" / "config.json").read_text())
    assert grown["mlp_only_layers"] == dense and grown["decoder_sparse_step"] == 1
    load("qwen2_moe", tmp_path / "out")


def test_deepseek_v3_is_refused_saying_why(tmp_path):
    from test_plan_input import refused
    path = saved(tmp_path, "llama", model_type="deepseek_v3")
    refused(["plan", path, "--to-width", TO], "multi-head latent attention", "not grown")


@pytest.mark.parametrize("case", sorted(MIXTURES))
def test_a_mixture_has_the_same_bytes_for_any_threads_chunks_and_shards(tmp_path, case):
    """Thousands of expert tensors share slots, batches and reads; how they
    are cut and spread must not change a byte."""
    from ws_convert import grow

    cls, config = family_model(case)
    perturbed(cls(config)).save_pretrained(tmp_path / "src")
    runs = {"default": {}, "one-thread-small-chunks-shards": dict(threads=1, chunk_bytes=512, max_shard_size="40KB"),
            "two-threads-odd-chunks": dict(threads=2, chunk_bytes=3000)}
    grown = {}
    for name, kw in runs.items():
        grow(tmp_path / "src", TO, out=tmp_path / name, **kw)
        tensors = {}
        for f in sorted((tmp_path / name).glob("*.safetensors")):
            with safe_open(f, "pt") as g:
                tensors.update({n: g.get_tensor(n).numpy().tobytes() for n in g.keys()})
        grown[name] = tensors
    assert len(list((tmp_path / "one-thread-small-chunks-shards").glob("*.safetensors"))) > 1
    assert grown["default"] == grown["one-thread-small-chunks-shards"] == grown["two-threads-odd-chunks"]
    cli("verify", tmp_path / "one-thread-small-chunks-shards")
