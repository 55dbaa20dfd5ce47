"""The trainer on Hugging Face families: a small μP model of a family built
from scratch is a Hugging Face directory that transformers loads and grow
takes as is; a grown one continues under μP (mup's base shapes, a μP
readout, MuAdamW, μP's attention scale for widened heads); text goes through
the model's tokenizer; runs resume exactly."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

pytest.importorskip("mup")
transformers = pytest.importorskip("transformers")

from helpers import stopped_then_resumed, torchrun  # noqa: E402
from test_side_files import _tokenizer  # noqa: E402
from ws_convert import grow, hf_model  # noqa: E402
from ws_convert.errors import WsConvertError  # noqa: E402
from ws_convert.train import TrainConfig, train  # noqa: E402

TINY = dict(width=32, depth=2, heads=4, batch_size=4, context=16, lr=1e-2, eval_every=2, eval_batches=2)


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("words")
    words = ["hello", "world", "<s>", "</s>"]
    gen = torch.Generator().manual_seed(0)
    for i in range(6):
        ids = torch.randint(0, 2, (400,), generator=gen).tolist()
        (root / f"doc{i}.txt").write_text(" ".join(words[j] for j in ids))
    return str(root)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok")
    _tokenizer().save_pretrained(path)
    return path


def load_hf(directory: Path):
    """The directory in its family's own transformers class; every key must match."""
    model, info = transformers.AutoModelForCausalLM.from_pretrained(directory, output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return model


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gpt2", "olmo2", "gemma"])
def test_a_family_trains_from_scratch_into_a_hugging_face_directory(tmp_path, text, tokenizer, arch):
    out = tmp_path / "run"
    result = train(TrainConfig(**TINY, arch=arch, kv_heads=2 if arch != "gpt2" else 0, base_width=16, steps=4,
                               data=text, tokenizer=str(tokenizer), out=str(out)))
    assert math.isfinite(result["final_eval_loss"])
    model = load_hf(out)
    assert model.config.model_type == arch and model.config.vocab_size == 5
    assert transformers.AutoTokenizer.from_pretrained(out)("hello world")["input_ids"] == [3, 4]
    # mup takes the written base shapes as they are, without re-initialising
    from mup import set_base_shapes
    set_base_shapes(model, str(out / "base_shapes.bsh"), rescale_params=False, do_assert=False)
    emb = model.get_input_embeddings().weight.infshape
    assert emb.width_mult() == 2  # width 32 over base 16


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_the_init_is_mups(arch):
    """Zero readout, zero query where the family has its own, hidden matrices
    at init_std * sqrt(base_fan_in / fan_in), embeddings at init_std."""
    model = hf_model.build(arch, width=256, depth=2, heads=4, kv_heads=None, ffn=None, vocab=300, context=64,
                           base_width=64, init_std=0.02, seed=0)
    hf = model.hf
    assert not hf.get_output_embeddings().weight.any() or arch == "gpt2"  # gpt2's readout is its embedding
    assert isinstance(hf.get_output_embeddings(), __import__("mup").MuReadout)
    if arch == "llama":
        layer = hf.model.layers[0]
        assert not layer.self_attn.q_proj.weight.any()
        std = layer.mlp.up_proj.weight.std().item()
        assert std == pytest.approx(0.02 * math.sqrt(64 / 256), rel=0.05)
        assert hf.model.embed_tokens.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert json.loads(hf.config.to_json_string())["zero_query"] is True
    else:
        fc = hf.transformer.h[0].mlp.c_fc.weight  # Conv1D, [in, out]: fan-in is axis 0
        assert fc.std().item() == pytest.approx(0.02 * math.sqrt(64 / 256), rel=0.05)


def test_a_grown_family_continues_under_mup(tmp_path, text, tokenizer):
    """Train a small Llama, grow it 2x, continue: MuAdamW gives the hidden
    matrices lr / width_mult, and the run's checkpoints keep loading."""
    small = tmp_path / "small"
    train(TrainConfig(**TINY, arch="llama", kv_heads=2, steps=4, data=text, tokenizer=str(tokenizer), out=str(small)))
    grown = grow(small, 64, out=tmp_path / "grown").out
    assert (Path(grown) / "tokenizer.json").is_file()
    model = hf_model.load(grown)
    up = model.hf.model.layers[0].mlp.up_proj.weight
    assert up.infshape.width_mult() == 2 and model.hf.get_output_embeddings().weight.infshape.width_mult() == 2
    from mup import MuAdamW
    groups = MuAdamW(model.parameters(), lr=1.0).param_groups
    assert any(g["lr"] == 0.5 and any(p is up for p in g["params"]) for g in groups)
    assert (Path(grown) / "log.jsonl").is_file()  # the small run's log, which grow copied beside the weights
    result = train(TrainConfig(**TINY, steps=3, data=text, init_from=str(grown), out=str(tmp_path / "warm")))
    assert math.isfinite(result["final_eval_loss"])
    assert len((tmp_path / "warm" / "log.jsonl").read_text().splitlines()) == 3  # this run's, not the source's
    assert load_hf(tmp_path / "warm").config.hidden_size == 64
    assert (tmp_path / "warm" / "tokenizer.json").is_file()  # the tokenizer came with the grown model


def test_widened_heads_get_mups_attention_scale(tmp_path, text, tokenizer):
    small = tmp_path / "small"
    train(TrainConfig(**TINY, arch="qwen3", kv_heads=2, steps=2, data=text, tokenizer=str(tokenizer),
                      out=str(small)))
    added = hf_model.load(grow(small, 64, out=tmp_path / "heads").out)
    widened = hf_model.load(grow(small, 64, head_policy="head-dim", out=tmp_path / "widened").out)
    assert added.hf.model.layers[0].self_attn.scaling == pytest.approx(8 ** -0.5)  # head_dim 8 kept
    # head_dim 8 -> 16: the base's 1/sqrt(8), times 8/16
    assert widened.hf.model.layers[0].self_attn.scaling == pytest.approx(8 ** -0.5 * 8 / 16)
    train(TrainConfig(**TINY, steps=2, data=text, init_from=str(tmp_path / "widened"), out=str(tmp_path / "w")))
    again = hf_model.load(tmp_path / "w")  # the base head_dim travels with the run's config
    assert again.hf.model.layers[0].self_attn.scaling == pytest.approx(8 ** -0.5 * 8 / 16)


def test_a_family_run_resumes_exactly(tmp_path, text, tokenizer):
    cfg = TrainConfig(**TINY, arch="llama", kv_heads=2, steps=6, checkpoint_every=3, data=text,
                      tokenizer=str(tokenizer), out=str(tmp_path / "a"))
    whole = train(cfg)["log"]

    resumed = stopped_then_resumed(train, replace(cfg, out=str(tmp_path / "b")), at=4)
    assert [r["loss"] for r in resumed] == [r["loss"] for r in whole]


def test_what_cannot_train_is_one_line(tmp_path, text, tokenizer):
    small = tmp_path / "small"
    train(TrainConfig(**TINY, arch="falcon", steps=2, data=text, tokenizer=str(tokenizer), out=str(small)))
    widened = grow(small, 64, head_policy="head-dim", out=tmp_path / "widened").out
    with pytest.raises(WsConvertError, match="FalconAttention computes its attention scale from head_dim"):
        train(TrainConfig(**TINY, steps=2, data=text, init_from=str(widened), out=str(tmp_path / "w")))
    # text as bytes suits only a byte-level vocabulary: a 5-word model without its tokenizer is refused
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (Path(widened) / name).unlink(missing_ok=True)
    heads = grow(small, 64, out=tmp_path / "heads").out
    for p in Path(heads).glob("tokenizer*"):
        p.unlink()
    with pytest.raises(WsConvertError, match="tokenizer"):
        train(TrainConfig(**TINY, steps=2, data=text, init_from=str(heads), out=str(tmp_path / "h")))




FSDP_RUN = dict(TINY, arch="llama", kv_heads=2, steps=6, checkpoint_every=3)


def cli_args(settings: dict) -> list[str]:
    """The command line of `settings` (--fsdp given apart)."""
    return [f"--{k.replace('_', '-')}={v}" for k, v in settings.items() if k != "fsdp"]


def test_fsdp_over_two_processes_matches_one(tmp_path, text, tokenizer):
    """Sharded with FSDP2 across two processes, the run follows the single
    process's losses (MuAdamW's per-parameter learning rates intact) and its
    checkpoint is gathered into the same Hugging Face directory."""
    settings = dict(FSDP_RUN, data=text, tokenizer=str(tokenizer))
    single = train(TrainConfig(**settings, out=str(tmp_path / "one")))["log"]
    done = torchrun("-m", "ws_convert.cli", "train", *cli_args(settings), "--fsdp", "--out", str(tmp_path / "two"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("done:") == 1
    two = [json.loads(line) for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in single], rel=1e-5)
    a, b = load_hf(tmp_path / "one"), load_hf(tmp_path / "two")
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=name)
    assert (tmp_path / "two" / "base_shapes.bsh").read_text() == (tmp_path / "one" / "base_shapes.bsh").read_text()


def test_fsdp_run_resumes_exactly(tmp_path, text, tokenizer):
    """Stopped on every rank after its step-3 checkpoint, then resumed: the
    sharded optimizer state comes back and the losses are the uninterrupted
    run's."""
    settings = dict(FSDP_RUN, data=text, tokenizer=str(tokenizer), fsdp=True)
    stop = tmp_path / "stop.py"
    stop.write_text(f"""
import ws_convert.data as data
from ws_convert.train import TrainConfig, train
batch = data.batch
def stopping(*args, **kw):
    if kw.get("step", args[4] if len(args) > 4 else None) == 4:
        raise SystemExit(3)
    return batch(*args, **kw)
data.batch = stopping
train(TrainConfig(**{settings!r}, out={str(tmp_path / 'b')!r}))
""")
    assert torchrun(str(stop)).returncode != 0
    assert (tmp_path / "b" / "checkpoint-3").is_dir()
    resumed = torchrun("-m", "ws_convert.cli", "train", *cli_args(settings), "--fsdp", "--out", str(tmp_path / "b"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole = torchrun("-m", "ws_convert.cli", "train", *cli_args(settings), "--fsdp", "--out", str(tmp_path / "a"))
    assert whole.returncode == 0, whole.stderr[-2000:]
    losses = [[json.loads(line)["loss"] for line in (tmp_path / d / "log.jsonl").read_text().splitlines()]
              for d in ("a", "b")]
    assert losses[0] == losses[1] and len(losses[0]) == 6


def test_fsdp_needs_torchrun(tmp_path, text):
    with pytest.raises(WsConvertError, match="--fsdp shards across the processes of torchrun"):
        train(TrainConfig(**TINY, data=text, fsdp=True, out=str(tmp_path / "run")))


# Families whose attention takes its scale from head_dim itself (no `scaling` to set): widened heads are refused.
FIXED_SCALE = {"gpt_neo", "falcon", "falcon-mq", "falcon-mha", "bloom"}


@pytest.mark.parametrize("policy", ["heads", "head-dim"])
@pytest.mark.parametrize("case", list(__import__("models").FAMILY_CASES))
def test_every_grown_family_continues_or_is_refused_in_one_line(tmp_path, text, tokenizer, case, policy):
    from click.testing import CliRunner

    from models import family_model, perturbed
    from ws_convert.cli import main

    cls, config = family_model(case)
    perturbed(cls(config)).save_pretrained(tmp_path / "src")
    grow(tmp_path / "src", 64, head_policy=policy, out=tmp_path / "grown")
    res = CliRunner().invoke(main, ["train", "--init-from", str(tmp_path / "grown"), "--tokenizer", str(tokenizer),
                                    "--data", text, "--steps", "2", "--batch-size", "2", "--context", "8",
                                    "--out", str(tmp_path / "run")])
    if case in ("mixtral", "olmoe", "qwen2_moe", "qwen3_moe"):
        assert res.exit_code == 2 and "a mixture of experts, which ws-convert grows but does not train" in res.output
        return
    if policy == "head-dim" and case in FIXED_SCALE:
        assert res.exit_code == 2 and "computes its attention scale from head_dim" in res.output, res.output
        assert len(res.output.splitlines()) == 1
        return
    assert res.exit_code == 0, (res.output, res.exception)
    load_hf(tmp_path / "run")


def test_a_family_model_is_really_mup():
    """mup's coordinate check on a Llama built by the trainer: after a few
    steps at one learning rate, the last MLP's output does not grow with
    width under MuAdamW, while plain AdamW (the control) lets it grow
    hundreds of times over the same widths."""
    from mup import MuAdamW

    from ws_convert.data import batch

    tokens = torch.randint(0, 256, (20000,), generator=torch.Generator().manual_seed(0))

    def mlp_size(width: int, optimizer) -> float:
        model = hf_model.build("llama", width=width, depth=2, heads=width // 16, kv_heads=None, ffn=None, vocab=256,
                               context=32, base_width=32, init_std=0.02, seed=0)
        with torch.no_grad():  # a readout that is not zero, so every layer learns from the first step
            model.hf.get_output_embeddings().weight.normal_(0, 0.02)
        out = {}
        model.hf.model.layers[-1].mlp.register_forward_hook(lambda m, i, o: out.__setitem__("mlp", o))
        opt = optimizer(model.parameters(), lr=3e-2, betas=(0.9, 0.95))
        for step in range(8):
            x, y = batch(tokens, 8, 32, seed=0, step=step)
            loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            model(batch(tokens, 8, 32, seed=0, step=99)[0])
        return out["mlp"].abs().mean().item()

    widths = (32, 128, 512)
    mu = [mlp_size(w, MuAdamW) for w in widths]
    sp = [mlp_size(w, torch.optim.AdamW) for w in widths]
    assert max(mu) / mu[0] < 2.0, mu  # 16x the width, no growth
    assert sp[-1] / sp[0] > 50, sp


def test_an_out_holding_another_models_tokenizer_is_refused(tmp_path, text, tokenizer):
    out = tmp_path / "run"
    out.mkdir()
    (out / "tokenizer.json").write_text("{}")  # someone else's
    with pytest.raises(WsConvertError, match="holds tokenizer.json but no training checkpoint"):
        train(TrainConfig(**TINY, arch="llama", steps=1, data=text, tokenizer=str(tokenizer), out=str(out)))
    assert (out / "tokenizer.json").read_text() == "{}"
