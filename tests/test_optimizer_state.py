"""Growing the optimizer state: with HyperCloning and the grown AdamW state,
one MuAdamW step keeps the grown model's function equal to the small
model's after its own step; the trainer writes the state by parameter name,
grow grows it beside the weights (verify checks it) and the trainer resumes
it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("mup")

from mup import MuAdamW  # noqa: E402

from ws_convert import grow  # noqa: E402
from ws_convert.errors import CheckpointError  # noqa: E402
from ws_convert.model import GPTConfig, build, load, save  # noqa: E402
from ws_convert.optimizer_state import load_into, read_state  # noqa: E402
from ws_convert.train import TrainConfig, train  # noqa: E402
from ws_convert.verify import verify  # noqa: E402

LR, BETAS = 1e-2, (0.9, 0.95)


def step(model, optimizer, x, y) -> None:
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
    optimizer.step()


def names_of(model) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


@pytest.fixture
def trained(tmp_path):
    """A small μP GPT (width 64 over a base of 32) after 3 MuAdamW steps, saved
    with its optimizer state as the trainer writes it."""
    torch.manual_seed(0)
    model = build(GPTConfig(width=64, depth=2, heads=4, base_width=32, zero_query=False, zero_readout=False,
                            vocab_size=61, context=16))
    optimizer = MuAdamW(model.parameters(), lr=LR, betas=BETAS)
    for _ in range(3):
        x = torch.randint(0, 61, (4, 16))
        step(model, optimizer, x, torch.roll(x, -1, 1))
    (tmp_path / "small").mkdir()
    save(model, tmp_path / "small" / "model.safetensors")
    names = names_of(model)
    torch.save({"optimizer": optimizer.state_dict(), "step": 3, "train": {},
                "param_names": [names[id(p)] for g in optimizer.param_groups for p in g["params"]]},
               tmp_path / "small" / "optimizer.pt")
    return model, optimizer


@pytest.mark.parametrize("grown_state", [True, False], ids=["grown-state", "fresh-optimizer"])
def test_hyperclone_with_the_grown_state_takes_the_small_model_s_step(trained, tmp_path, grown_state):
    model, optimizer = trained
    report = grow(tmp_path / "small", 128, method="hyperclone", perturb=0.0, out=tmp_path / "big",
                  optimizer_state=tmp_path / "small" / "optimizer.pt")
    assert verify(report.out).ok
    big = load(report.out)
    big_optimizer = MuAdamW(big.parameters(), lr=LR, betas=BETAS)
    if grown_state:
        load_into(big_optimizer, big, report.out / "optimizer.pt")
    x = torch.randint(0, 61, (4, 16))
    with torch.no_grad():
        assert torch.allclose(big(x), model(x), rtol=1e-5, atol=1e-5)  # the same function before the step
    step(model, optimizer, x, torch.roll(x, -1, 1))
    step(big, big_optimizer, x, torch.roll(x, -1, 1))
    with torch.no_grad():
        want, got = model(x), big(x)
    error = ((got - want).abs().max() / want.abs().max()).item()
    if grown_state:
        assert error < 1e-4, error
    else:  # Adam's first step from an empty state is another step: the functions part
        assert error > 1e-2, error


def test_moments_follow_their_weights(trained, tmp_path):
    """Tiled like the weight, without the fan-in division, the first moment
    divided by the output's copies and the second by their square."""
    _, optimizer = trained
    report = grow(tmp_path / "small", 128, method="hyperclone", out=tmp_path / "big",
                  optimizer_state=tmp_path / "small" / "optimizer.pt")
    _, small = read_state(tmp_path / "small" / "optimizer.pt")
    _, big = read_state(report.out / "optimizer.pt")
    fc, fc2 = small["blocks.0.fc.weight"], big["blocks.0.fc.weight"]  # [ffn, width]: output ffn, fan-in width
    for key, power in (("exp_avg", 1), ("exp_avg_sq", 2)):
        want = fc[key].repeat(2, 2) / 2 ** power
        assert torch.equal(fc2[key], want), key
    assert float(fc2["step"]) == float(fc["step"]) == 3


def test_the_trainer_resumes_a_grown_state(tmp_path):
    """trainer -> grow --optimizer-state -> train --resume-optimizer."""
    import sysconfig
    from pathlib import Path

    data = tmp_path / "data"
    data.mkdir()
    data.joinpath("a.py").write_bytes((Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_bytes())
    tiny = dict(width=32, depth=2, heads=2, batch_size=4, context=32, eval_every=5, eval_batches=2, data=str(data))
    train(TrainConfig(**tiny, steps=3, out=str(tmp_path / "small")))
    state = tmp_path / "small" / "checkpoint-3" / "optimizer.pt"
    record, by_name = read_state(state)
    assert set(by_name) == set(record["param_names"]) and "lm_head.weight" in by_name
    grown = grow(tmp_path / "small" / "model.safetensors", 64, method="hyperclone", out=tmp_path / "big",
                 optimizer_state=state)
    result = train(TrainConfig(**tiny, steps=2, init_from=str(grown.out), resume_optimizer=True,
                               out=str(tmp_path / "warm")))
    assert torch.isfinite(torch.tensor([r["loss"] for r in result["log"]])).all()
    again = grow(tmp_path / "small" / "model.safetensors", 64, method="hyperclone", out=tmp_path / "big",
                 optimizer_state=state, overwrite=True)  # an earlier output with its grown state is replaced
    assert verify(again.out).ok
    (grown.out / "optimizer.pt").write_bytes(b"not a state")
    assert [(p.kind, p.file) for p in verify(grown.out).files] == [("differs", "optimizer.pt")]


def test_a_trainer_state_without_names_is_refused(trained, tmp_path):
    _, optimizer = trained
    torch.save({"optimizer": optimizer.state_dict(), "step": 3, "train": {}}, tmp_path / "anonymous.pt")
    with pytest.raises(CheckpointError, match="not an optimizer state"):
        grow(tmp_path / "small", 128, out=tmp_path / "big", optimizer_state=tmp_path / "anonymous.pt")
    assert not (tmp_path / "big").exists()


def test_a_pytorch_state_beside_a_hugging_face_model(tmp_path):
    """AdamW(model.parameters()).state_dict() saved beside a transformers
    model: matched to its parameters through its config, grown, and written
    in the grown model's parameter order, so AdamW of the grown model loads it."""
    transformers = pytest.importorskip("transformers")
    from models import tiny

    cls, config = tiny("llama", width=32, heads=4, kv_heads=2)
    torch.manual_seed(0)
    model = cls(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        x = torch.randint(0, 97, (2, 8))
        optimizer.zero_grad()
        model(x, labels=x).loss.backward()
        optimizer.step()
    model.save_pretrained(tmp_path / "small")
    torch.save(optimizer.state_dict(), tmp_path / "small" / "optimizer.pt")
    report = grow(tmp_path / "small", 64, to_depth=3, depth_policy="identity", method="hyperclone",
                  out=tmp_path / "big", optimizer_state=tmp_path / "small" / "optimizer.pt")
    assert verify(report.out).ok
    big = transformers.AutoModelForCausalLM.from_pretrained(report.out)
    big_optimizer = torch.optim.AdamW(big.parameters(), lr=1e-3)
    big_optimizer.load_state_dict(torch.load(report.out / "optimizer.pt", weights_only=True))
    names = [n for n, _ in big.named_parameters()]
    state = big_optimizer.state_dict()["state"]
    small = optimizer.state_dict()["state"]
    small_names = [n for n, _ in model.named_parameters()]
    down = small[small_names.index("model.layers.0.mlp.down_proj.weight")]  # [width, ffn]: output width
    grown = state[names.index("model.layers.0.mlp.down_proj.weight")]
    assert torch.equal(grown["exp_avg"], down["exp_avg"].repeat(2, 2) / 2)
    assert torch.equal(grown["exp_avg_sq"], down["exp_avg_sq"].repeat(2, 2) / 4)
    new_layer = state[names.index("model.layers.2.self_attn.o_proj.weight")]  # the identity block's zero output
    assert not new_layer["exp_avg"].any()
    x = torch.randint(0, 97, (2, 8))
    big(x, labels=x).loss.backward()
    big_optimizer.step()


def test_several_unnamed_parameter_groups_are_refused(tmp_path):
    pytest.importorskip("transformers")
    from models import tiny

    cls, config = tiny("llama", width=32, heads=4, kv_heads=2)
    model = cls(config)
    params = list(model.parameters())
    optimizer = torch.optim.AdamW([{"params": params[:3]}, {"params": params[3:], "weight_decay": 0.0}])
    model.save_pretrained(tmp_path / "small")
    torch.save(optimizer.state_dict(), tmp_path / "small" / "optimizer.pt")
    with pytest.raises(CheckpointError, match="2 parameter groups"):
        grow(tmp_path / "small", 64, out=tmp_path / "big", optimizer_state=tmp_path / "small" / "optimizer.pt")
