"""`--arch generic` on real families with the model_type hidden: it grows
only where old head h provably stays head h (the grown model loads, every
old head's rows and columns sit where that head is, and zero-padding keeps
the logits), and refuses everything else in one line. A named --arch
refuses a checkpoint whose model_type it does not describe."""

import json

import pytest
import torch
from click.testing import CliRunner

from models import FAMILY_CASES, family_model, perturbed, transformers
from test_plan_input import refused
from ws_convert.cli import main
from ws_convert.errors import PlanError
from ws_convert.families import ALL
from ws_convert.plan import GrowthOptions, Source, make_plan

W, TO = 16, 32  # 4 heads of 4; ffn, vocab and context sizes chosen apart from the width
SIZES = dict(vocab_size=37, max_position_embeddings=24)


def family(kind: str, **extra):
    """(model class, config) of a tiny model."""
    llama_like = dict(hidden_size=W, intermediate_size=40, num_attention_heads=4, num_hidden_layers=2, **SIZES)
    if kind == "phi":
        return transformers.PhiForCausalLM, transformers.PhiConfig(**{**llama_like, **extra})
    if kind == "olmo":
        return transformers.OlmoForCausalLM, transformers.OlmoConfig(**{**llama_like, **extra})
    if kind == "olmo2":
        return transformers.Olmo2ForCausalLM, transformers.Olmo2Config(**{**llama_like, **extra})
    if kind == "llama":
        return transformers.LlamaForCausalLM, transformers.LlamaConfig(**{**llama_like, **extra})
    if kind == "gpt_neo":
        return transformers.GPTNeoForCausalLM, transformers.GPTNeoConfig(
            hidden_size=W, intermediate_size=40, num_heads=4, num_layers=2, attention_types=[[["global"], 2]],
            **{**SIZES, **extra})
    if kind == "gptj":
        return transformers.GPTJForCausalLM, transformers.GPTJConfig(
            **{**dict(n_embd=W, n_inner=40, n_head=4, n_layer=2, rotary_dim=2, vocab_size=37, n_positions=24),
               **extra})
    raise ValueError(kind)


def save_model(tmp_path, model, model_type: str | None = None, drop: tuple[str, ...] = ()):
    """`model` saved with its config's model_type replaced (None: removed)
    and the `drop` keys left out."""
    src = tmp_path / "src"
    model.save_pretrained(src)
    data = json.loads((src / "config.json").read_text())
    for key in ("model_type", *drop):
        data.pop(key, None)
    if model_type:
        data["model_type"] = model_type
    (src / "config.json").write_text(json.dumps(data))
    return src


def save(tmp_path, kind: str, model_type: str | None = None, drop: tuple[str, ...] = (), **extra):
    """A tiny checkpoint of `kind` with every parameter random (see save_model)."""
    cls, config = family(kind, **extra)
    torch.manual_seed(0)
    model = cls(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return save_model(tmp_path, model, model_type, drop), cls


def run_generic(src, out, to_width: int = TO):
    return CliRunner().invoke(main, ["grow", str(src), "--to-width", str(to_width), "--arch", "generic", "--shrink",
                                     "1", "--perturb", "0", "-o", str(out), "-q"])


def grow_generic(src, out) -> None:
    res = run_generic(src, out)
    assert res.exit_code == 0, (res.output, res.exception)


def load(cls, directory, model_type: str):
    """The family's model from `directory`, float64, refusing any key that is
    missing, unexpected or of the wrong shape."""
    config_file = directory / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "model_type": model_type}))
    model, info = cls.from_pretrained(directory, output_loading_info=True, dtype=torch.float64)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return model.eval()


OUTPUTS = ("o_proj", "dense", "out_proj")  # the attention's output projection, by family


def attention(model):
    """Each layer's head_dim and (q, k, v, output) projections, where the
    model keeps them apart."""
    found = []
    for module in model.modules():
        out = next((n for n in OUTPUTS if hasattr(module, n)), None)
        if out and hasattr(module, "head_dim") and all(hasattr(module, n) for n in ("q_proj", "k_proj", "v_proj")):
            found.append((module.head_dim, [getattr(module, n) for n in ("q_proj", "k_proj", "v_proj", out)]))
    return found


def no_norms(model):
    """The model with every norm the identity, so zero-padding keeps its function."""
    for _, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if "norm" in type(child).__name__.lower():
                setattr(module, child_name, torch.nn.Identity())
    return model


CASES = [("phi", {}), ("olmo", {}), ("olmo2", {}), ("gpt_neo", {}), ("gptj", {}), ("gptj", dict(n_inner=4 * W)),
         ("llama", dict(vocab_size=3 * W))]


def check_grown(cls, src, out, model_type: str) -> None:
    """The grown model at `out` loads in `cls` with every key in place; old
    head h is head h of it (same head_dim, its rows of q/k/v and columns of
    the output projection unchanged); and with norms as the identity its
    logits are the source's. Every family generic grows keeps q, k and v
    apart; one that did not would need a logits-only check here."""
    before, after = load(cls, src, model_type), load(cls, out, model_type)
    assert attention(before)
    for (hd, old), (hd2, new) in zip(attention(before), attention(after), strict=True):
        width, to_width = old[0].weight.shape[1], new[0].weight.shape[1]
        assert hd2 == hd and new[0].weight.shape[0] == to_width > width
        for h in range(width // hd):
            rows, cols = slice(h * hd, (h + 1) * hd), slice(0, width)
            for a, b in zip(old[:3], new[:3]):
                torch.testing.assert_close(b.weight[rows, cols], a.weight[rows], rtol=0, atol=0)
            torch.testing.assert_close(new[3].weight[cols, rows], old[3].weight[:, rows], rtol=0, atol=0)
    ids = torch.randint(0, before.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(no_norms(after)(ids).logits, no_norms(before)(ids).logits, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind,extra", CASES, ids=[f"{k}-{'-'.join(e) or 'plain'}" for k, e in CASES])
def test_generic_keeps_every_head_in_place(tmp_path, kind, extra):
    """Grown at 2x width with shrink 1 and no noise, the model is the source's
    with every head in place (check_grown)."""
    src, cls = save(tmp_path, kind, **extra)
    grow_generic(src, tmp_path / "out")
    check_grown(cls, src, tmp_path / "out", kind)


GROWS = "grows"
# What --arch generic does with every natively grown family, model_type hidden: as FAMILY_CASES gives it (most
# with grouped kv heads) and with whole heads (as many kv heads as heads, and the ffn size in the config where
# the family has a key for it), which gets past the kv-head refusal to each family's own layout. A refusal is
# the config key or tensor its line must name.
WHOLE_HEADS = {**{case: dict(num_key_value_heads=4) for case, (_, _, kw) in FAMILY_CASES.items()
                  if kw.get("num_key_value_heads")},
               "gpt_neo": dict(intermediate_size=48), "gptj": dict(n_inner=48),
               "falcon": dict(num_kv_heads=4, ffn_hidden_size=48), "falcon-mq": dict(ffn_hidden_size=48),
               "falcon-mha": dict(ffn_hidden_size=48), "gpt_bigcode": dict(n_inner=48),
               "gpt_bigcode-mha": dict(n_inner=48)}
KV = "'num_key_value_heads' is 2"
GEMMA = "'architectures' names {}"
FUSED = "tensor '{}.query_key_value.bias': axis of size 96 = 3 x width"
EXPECTED = {  # case: (as given, with whole heads)
    "llama": (KV, GROWS),
    "qwen3": (KV, GROWS),
    "granite": (KV, GROWS),
    "smollm3": (KV, GROWS),
    "gemma": (GEMMA.format("GemmaForCausalLM"),) * 2,  # gains stored as 1 + w
    "gemma2": (GEMMA.format("Gemma2ForCausalLM"),) * 2,
    "gemma3_text": (GEMMA.format("Gemma3ForCausalLM"),) * 2,
    "olmo": (KV, GROWS),
    "olmo2": (KV, GROWS),
    "phi": (KV, GROWS),
    "phi3": (KV, "tensor 'model.layers.0.mlp.gate_up_proj.weight'"),  # [gate | up], and [q | k | v]
    "stablelm": (KV, GROWS),
    "starcoder2": (KV, GROWS),
    "cohere": (KV, "tensor 'model.layers.0.self_attn.k_norm.weight' [4, 8]"),  # a norm per head
    "gpt_neox": (FUSED.format("gpt_neox.layers.0.attention"),) * 2,
    "gpt_neo": ("tensor 'transformer.h.0.mlp.c_fc.bias': axis of size 128 = 4 x width", GROWS),  # ffn not given
    "gptj": ("tensor 'transformer.h.0.mlp.fc_in.bias': axis of size 128", GROWS),
    "falcon": ("'multi_query' is True",) * 2,  # saved by the new decoder too, whose query_key_value is fused
    "falcon-mq": ("'multi_query' is True",) * 2,
    "falcon-mha": (FUSED.format("transformer.h.0.self_attention"),) * 2,
    "gpt_bigcode": ("'multi_query' is True",) * 2,
    "gpt_bigcode-mha": ("tensor 'transformer.h.0.attn.c_attn.bias'",) * 2,
    "opt": ("tensor 'model.decoder.embed_positions.weight' [26, 32]",) * 2,  # 2 rows past the context
    "bloom": ("tensor 'transformer.h.0.mlp.dense_4h_to_h.weight'",) * 2,  # 4 x width, and fused heads
    "mixtral": (KV, "tensor 'model.layers.0.block_sparse_moe.gate.weight' [3, 32]"),  # a router
    "olmoe": (KV, "tensor 'model.layers.0.mlp.gate.weight' [3, 32]"),
    "qwen2_moe": (KV, "tensor 'model.layers.0.mlp.gate.weight' [3, 32]"),
    "qwen3_moe": (KV, "tensor 'model.layers.0.mlp.gate.weight' [3, 32]"),
}


def native_name(cls) -> str:
    return next(a.name for a in ALL if cls.__name__ in a.classes)


@pytest.mark.parametrize("whole_heads", [False, True], ids=["as-given", "whole-heads"])
@pytest.mark.parametrize("case", list(FAMILY_CASES))
def test_generic_grows_a_family_only_where_it_can_prove_the_layout(tmp_path, case, whole_heads):
    """Every native family, its model_type hidden, grown by --arch generic
    to 2x width: it either grows into a model that passes check_grown, or is
    refused in one line that names the tensor or config key and the --arch
    that grows it; which one is recorded in EXPECTED."""
    cls, config = family_model(case, **(WHOLE_HEADS.get(case, {}) if whole_heads else {}))
    src = save_model(tmp_path, perturbed(cls(config)))
    res = run_generic(src, tmp_path / "out", 2 * config.hidden_size)
    expected = EXPECTED[case][whole_heads]
    if expected == GROWS:
        assert res.exit_code == 0, (res.output, res.exception)
        check_grown(cls, src, tmp_path / "out", config.model_type)
    else:
        assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
        assert not (tmp_path / "out").exists()
        lines = res.output.splitlines()
        assert len(lines) == 1 and lines[0].startswith("ws-convert: error: "), res.output
        assert expected in lines[0] and f"--arch {native_name(cls)}" in lines[0], lines[0]


def test_generic_refuses_what_it_cannot_prove(tmp_path):
    src, _ = save(tmp_path, "phi", model_type="something_new")
    args = ["--to-width", TO, "--arch", "generic"]
    refused(["plan", src, *args, "--head-policy", "head-dim"], "--head-policy head-dim", "--arch generic")
    refused(["plan", src, "--to-width", 18, "--arch", "generic"], "--to-width 18", "head_dim 4")
    (tmp_path / "no_heads").mkdir()
    for name in ("model.safetensors", "config.json"):
        (tmp_path / "no_heads" / name).write_bytes((src / name).read_bytes())
    config = json.loads((src / "config.json").read_text())
    del config["num_attention_heads"]
    (tmp_path / "no_heads" / "config.json").write_text(json.dumps(config))
    refused(["plan", tmp_path / "no_heads", *args], "num_attention_heads", "--arch")


@pytest.mark.parametrize("key", ["vocab_size", "max_position_embeddings"])
def test_generic_refuses_a_vocabulary_or_context_the_size_of_the_width(tmp_path, key):
    """The embedding [vocab, width] or a position table [context, width]
    would have both axes padded."""
    src, _ = save(tmp_path, "llama", model_type="something_new", **{key: W})
    refused(["plan", src, "--to-width", TO, "--arch", "generic"], f"'{key}' 16", "--arch llama")


def test_generic_refuses_an_ffn_the_size_of_fused_qkv(tmp_path):
    """GPT-2's c_attn is [q | k | v] side by side: with an ffn of 3 x width
    it would pass for an ffn axis, be padded top-left, and put old k rows in
    the new q (the model loads, its logits differ)."""
    config = transformers.GPT2Config(n_embd=W, n_head=4, n_layer=1, n_inner=3 * W, vocab_size=37, n_positions=24)
    src = save_model(tmp_path, perturbed(transformers.GPT2LMHeadModel(config)))
    refused(["plan", src, "--to-width", TO, "--arch", "generic"], "'n_inner' 48 is 3 x width", "--arch gpt2")


def test_generic_places_every_matrix_beside_the_vocabulary_or_context():
    """A matrix with one growing axis must have the vocabulary or context
    size on the other; without vocab_size the first such matrix gives it."""
    tensors = {"embed.weight": ("F32", (10, W)), "pos.weight": ("F32", (7, W)), "block.w": ("F32", (W, W))}
    config = {"hidden_size": W, "num_attention_heads": 4}
    options = GrowthOptions(to_width=TO, arch="generic")
    with pytest.raises(PlanError, match=r"'pos.weight' \[7, 16\].*\(10, as tensor 'embed.weight' has it\)"):
        make_plan(Source("m", tensors, config), options)
    with pytest.raises(PlanError, match=r"'embed.weight' \[10, 16\].*\(12, 'vocab_size'\)"):
        make_plan(Source("m", tensors, {**config, "vocab_size": 12, "max_position_embeddings": 7}), options)
    plan = make_plan(Source("m", tensors, {**config, "max_position_embeddings": 7}), options)
    assert {t.name: t.shape for t in plan.tensors} == {"embed.weight": (10, TO), "pos.weight": (7, TO),
                                                       "block.w": (TO, TO)}


def test_generic_refuses_an_ffn_it_is_not_told(tmp_path):
    """GPT-J's default n_inner (null: 4 x width) leaves the MLP's axis looking
    like fused heads; generic refuses and says what to give."""
    src, _ = save(tmp_path, "gptj", n_inner=None)
    refused(["plan", src, "--to-width", TO, "--arch", "generic"], "'transformer.h.0.mlp.fc_in.",
            "n_inner")


def test_named_arch_refuses_another_model_type(tmp_path):
    """Gemma stores norm gains as 1 + w: grown as llama, every gain would be about 2."""
    src = tmp_path / "gemma"
    config = transformers.GemmaConfig(hidden_size=W, intermediate_size=40, num_attention_heads=4,
                                      num_key_value_heads=2, head_dim=4, num_hidden_layers=1, **SIZES)
    transformers.GemmaForCausalLM(config).save_pretrained(src)
    refused(["plan", src, "--to-width", TO, "--arch", "llama"], "model_type 'gemma'", "--arch llama",
            "llama, mistral, qwen2, qwen3")


@pytest.mark.parametrize("kind", ["mistral", "qwen2"])
def test_named_arch_still_grows_its_own_model_types(tmp_path, kind):
    from models import tiny
    cls, config = tiny(kind, width=W, heads=4, kv_heads=2, layers=1)
    cls(config).save_pretrained(tmp_path / "src")
    res = CliRunner().invoke(main, ["grow", str(tmp_path / "src"), "--to-width", str(TO), "--arch", "llama",
                                    "-o", str(tmp_path / "out"), "-q"])
    assert res.exit_code == 0, res.output
    _, info = cls.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
