"""`--arch generic` on real families with the model_type hidden: it grows
only where old head h provably stays head h (the grown model loads, every
old head's rows and columns sit where that head is, and zero-padding keeps
the logits), and refuses everything else in one line. A named --arch
refuses a checkpoint whose model_type it does not describe."""

import json

import pytest
import torch
from click.testing import CliRunner

from models import transformers
from test_plan_input import refused
from ws_convert.cli import main

W, TO = 16, 32  # 4 heads of 4; ffn, vocab and context sizes chosen apart from the width
SIZES = dict(vocab_size=37, max_position_embeddings=24)


def family(kind: str, **extra):
    """(model class, config, (q, k, v, o) names in a layer's attention) of a tiny model."""
    llama_like = dict(hidden_size=W, intermediate_size=40, num_attention_heads=4, num_hidden_layers=2, **SIZES)
    qkvo = ("q_proj", "k_proj", "v_proj", "o_proj")
    if kind == "phi":
        return transformers.PhiForCausalLM, transformers.PhiConfig(**{**llama_like, **extra}), \
            ("q_proj", "k_proj", "v_proj", "dense")
    if kind == "olmo":
        return transformers.OlmoForCausalLM, transformers.OlmoConfig(**{**llama_like, **extra}), qkvo
    if kind == "olmo2":
        return transformers.Olmo2ForCausalLM, transformers.Olmo2Config(**{**llama_like, **extra}), qkvo
    if kind == "llama":
        return transformers.LlamaForCausalLM, transformers.LlamaConfig(**{**llama_like, **extra}), qkvo
    neo_like = ("q_proj", "k_proj", "v_proj", "out_proj")
    if kind == "gpt_neo":
        return transformers.GPTNeoForCausalLM, transformers.GPTNeoConfig(
            hidden_size=W, intermediate_size=40, num_heads=4, num_layers=2, attention_types=[[["global"], 2]],
            **{**SIZES, **extra}), neo_like
    if kind == "gptj":
        return transformers.GPTJForCausalLM, transformers.GPTJConfig(
            **{**dict(n_embd=W, n_inner=40, n_head=4, n_layer=2, rotary_dim=2, vocab_size=37, n_positions=24),
               **extra}), neo_like
    raise ValueError(kind)


def save(tmp_path, kind: str, model_type: str | None = None, drop: tuple[str, ...] = (), **extra):
    """A tiny checkpoint of `kind` with every parameter random, its config's
    model_type replaced (None: removed) and the `drop` keys left out."""
    cls, config, names = family(kind, **extra)
    torch.manual_seed(0)
    model = cls(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    src = tmp_path / "src"
    model.save_pretrained(src)
    data = json.loads((src / "config.json").read_text())
    for key in ("model_type", *drop):
        data.pop(key, None)
    if model_type:
        data["model_type"] = model_type
    (src / "config.json").write_text(json.dumps(data))
    return src, cls, names


def grow_generic(src, out, *args) -> None:
    res = CliRunner().invoke(main, ["grow", str(src), "--to-width", str(TO), "--arch", "generic", "--shrink", "1",
                                    "--perturb", "0", "-o", str(out), "-q", *map(str, args)])
    assert res.exit_code == 0, (res.output, res.exception)


def load(cls, directory, model_type: str):
    """The family's model from `directory`, float64, refusing any key that is
    missing, unexpected or of the wrong shape."""
    config_file = directory / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "model_type": model_type}))
    model, info = cls.from_pretrained(directory, output_loading_info=True, dtype=torch.float64)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return model.eval()


def attention(model, names):
    """Each layer's (q, k, v, o) modules and the head_dim the model uses."""
    found = []
    for _, module in model.named_modules():
        if all(hasattr(module, n) for n in names) and hasattr(module, "head_dim"):
            found.append((module.head_dim, [getattr(module, n) for n in names]))
    assert found
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


@pytest.mark.parametrize("kind,extra", CASES, ids=[f"{k}-{'-'.join(e) or 'plain'}" for k, e in CASES])
def test_generic_keeps_every_head_in_place(tmp_path, kind, extra):
    """Grown at 2x width with shrink 1 and no noise: old head h is head h of
    the grown model (same head_dim, its rows of q/k/v and columns of the
    output projection unchanged) and, with norms as the identity, the logits
    are the source's."""
    src, cls, names = save(tmp_path, kind, **extra)
    grow_generic(src, tmp_path / "out")
    before, after = load(cls, src, kind), load(cls, tmp_path / "out", kind)
    for (hd, old), (hd2, new) in zip(attention(before, names), attention(after, names), strict=True):
        assert hd2 == hd
        assert new[0].weight.shape[0] == TO
        for h in range(W // hd):
            rows, cols = slice(h * hd, (h + 1) * hd), slice(0, W)
            for a, b in zip(old[:3], new[:3]):
                torch.testing.assert_close(b.weight[rows, cols], a.weight[rows], rtol=0, atol=0)
            torch.testing.assert_close(new[3].weight[cols, rows], old[3].weight[:, rows], rtol=0, atol=0)
    ids = torch.randint(0, before.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(no_norms(after)(ids).logits, no_norms(before)(ids).logits, rtol=1e-12, atol=1e-12)


def test_generic_refuses_what_it_cannot_prove(tmp_path):
    src, _, _ = save(tmp_path, "phi", model_type="something_new")
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


def test_generic_refuses_a_vocabulary_the_size_of_the_width(tmp_path):
    """The embedding [vocab, width] would have both axes padded."""
    src, _, _ = save(tmp_path, "llama", model_type="something_new", vocab_size=W)
    refused(["plan", src, "--to-width", TO, "--arch", "generic"], "'vocab_size' 16")


def test_generic_refuses_an_ffn_it_is_not_told(tmp_path):
    """GPT-J's default n_inner (null: 4 x width) leaves the MLP's axis looking
    like fused heads; generic refuses and says what to give."""
    src, _, _ = save(tmp_path, "gptj", n_inner=None)
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
