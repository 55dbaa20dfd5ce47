"""Upcycling a dense model into its family's mixture of experts
(`grow --to-experts N`): the output loads in the mixture's transformers
class; with shrink 1, no noise and the router at its zero init, every
expert is the dense MLP and the mixture computes the dense model's logits;
with the defaults every expert draws its own noise; verify passes and the
bytes do not depend on threads or shards."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from models import family_model, perturbed, tiny, transformers
from ws_convert.cli import main

MIXTURE = {"llama": "mixtral", "mistral": "mixtral", "qwen2": "qwen2_moe", "qwen3": "qwen3_moe"}


def cli(*args: object) -> str:
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, (res.output, res.exception)
    return res.output


def dense(tmp_path: Path, kind: str) -> Path:
    cls, config = family_model(kind) if kind in ("llama", "qwen3") else tiny(kind, width=32, heads=4, kv_heads=2)
    perturbed(cls(config)).save_pretrained(tmp_path / kind)
    return tmp_path / kind


def load(directory: Path):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        directory, output_loading_info=True, dtype=torch.float64, experts_implementation="eager")
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return model.eval()


def logits(model, vocab: int) -> torch.Tensor:
    ids = torch.randint(3, vocab, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(ids).logits


def no_norms(model):
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if "norm" in type(child).__name__.lower():
                setattr(module, name, torch.nn.Identity())
    return model


@pytest.mark.parametrize("kind", sorted(MIXTURE))
@pytest.mark.parametrize("width", [None, 64], ids=["same-width", "2x-width"])
def test_every_expert_is_the_dense_mlp(tmp_path, kind, width):
    src = dense(tmp_path, kind)
    out = tmp_path / "moe"
    cli("grow", src, "--to-experts", 4, *(("--to-width", width) if width else ()), "--shrink", 1, "--perturb", 0,
        "-o", out, "-q")
    moe, base = load(out), load(src)
    assert moe.config.model_type == MIXTURE[kind] and moe.config.num_experts_per_tok == 2
    if width:
        moe, base = no_norms(moe), no_norms(base)
    torch.testing.assert_close(logits(moe, base.config.vocab_size), logits(base, base.config.vocab_size),
                               rtol=1e-10, atol=1e-10)
    cli("verify", out)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_experts_differ_and_bytes_do_not_depend_on_threads_or_shards(tmp_path, kind):
    src = dense(tmp_path, kind)
    cli("grow", src, "--to-experts", 3, "--experts-top-k", 1, "--to-width", 64, "-o", tmp_path / "a", "-q")
    cli("grow", src, "--to-experts", 3, "--experts-top-k", 1, "--to-width", 64, "--threads", 1,
        "--max-shard-size", "40KB", "-o", tmp_path / "b", "-q")
    from safetensors import safe_open

    def tensors(directory: Path) -> dict[str, bytes]:
        out = {}
        for f in sorted(directory.glob("*.safetensors")):
            with safe_open(f, "pt") as g:
                out.update({n: g.get_tensor(n).numpy().tobytes() for n in g.keys()})
        return out
    a, b = tensors(tmp_path / "a"), tensors(tmp_path / "b")
    assert len(list((tmp_path / "b").glob("*.safetensors"))) > 1 and a == b
    experts = [hashlib.sha256(b"".join(v for n, v in sorted(a.items()) if f".experts.{e}." in n)).digest()
               for e in range(3)]
    assert len(set(experts)) == 3  # each expert its own noise
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["num_experts_per_tok"] == 1
    load(tmp_path / "a")


def test_what_has_no_mixture_is_one_line(tmp_path):
    from test_plan_input import refused

    cls, config = family_model("phi")
    perturbed(cls(config)).save_pretrained(tmp_path / "phi")
    refused(["plan", tmp_path / "phi", "--to-experts", 4], "no mixture-of-experts counterpart", "llama")
    refused(["plan", dense(tmp_path, "llama"), "--to-experts", 4, "--experts-top-k", 5], "--experts-top-k 5")
    cls, config = family_model("llama", mlp_bias=True)  # mixtral's experts have no biases to hold them
    perturbed(cls(config)).save_pretrained(tmp_path / "biased")
    refused(["plan", tmp_path / "biased", "--to-experts", 4], "mlp.down_proj.bias' has no place in a mixtral model")
