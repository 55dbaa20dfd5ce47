"""The reference μP trainer: it learns, it is really μP, it resumes exactly,
it continues from grown checkpoints, and it runs under torchrun."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

pytest.importorskip("mup")

from helpers import stopped_then_resumed, torchrun  # noqa: E402
from ws_convert import grow  # noqa: E402
from ws_convert.data import DataError, batch, load  # noqa: E402
from ws_convert.errors import WsConvertError  # noqa: E402
from ws_convert.model import GPTConfig, build  # noqa: E402
from ws_convert.train import TrainConfig, train  # noqa: E402

TINY = dict(width=32, depth=2, heads=2, batch_size=8, context=32, lr=1e-2, eval_every=10, eval_batches=4)


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> str:
    """A small text corpus: a few stdlib modules, copied so the test reads less."""
    import sysconfig

    root = tmp_path_factory.mktemp("text")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in ("textwrap.py", "string.py", "fnmatch.py", "glob.py", "shlex.py"):
        (root / name).write_bytes((stdlib / name).read_bytes())
    return str(root)


def test_training_on_stdlib_lowers_held_out_loss(tmp_path):
    result = train(TrainConfig(**TINY, steps=40, out=str(tmp_path / "run")))
    evals = [r["eval_loss"] for r in result["log"] if "eval_loss" in r]
    assert evals[0] > 5.0 and evals[-1] < evals[0] - 1.5  # from ~ln(256) to well below
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["checkpoint-40", "config.json", "log.jsonl", "loss.png", "model.safetensors"]
    checkpoint = sorted(p.name for p in (tmp_path / "run" / "checkpoint-40").iterdir())
    assert checkpoint == ["config.json", "model.safetensors", "optimizer.pt"]  # a model directory, and its optimizer
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "run" / name).samefile(tmp_path / "run" / "checkpoint-40" / name)
    lines = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(40)) and "eval_loss" in lines[-1]


def test_resume_continues_the_same_trajectory(tmp_path, text):
    cfg = TrainConfig(**TINY, steps=20, data=text, checkpoint_every=10, out=str(tmp_path / "a"))
    whole = train(cfg)["log"]

    resumed = stopped_then_resumed(train, replace(cfg, out=str(tmp_path / "b")), at=13)
    assert [r["step"] for r in resumed] == list(range(20))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in whole]
    on_disk = [json.loads(l)["step"] for l in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert on_disk == list(range(20))


def test_resume_refuses_other_settings(tmp_path, text):
    cfg = TrainConfig(**TINY, steps=4, data=text, out=str(tmp_path / "run"))
    first = train(cfg)["log"]
    for changed, shown in ((dict(seed=1), "seed 0 -> 1"), (dict(steps=6), "steps 4 -> 6"),
                           (dict(lr=3e-3), "lr 0.01 -> 0.003")):
        with pytest.raises(WsConvertError, match=f"{tmp_path / 'run'}: holds a run with other settings "
                                                 rf"\({shown}\)"):
            train(replace(cfg, **changed))
    # logging and speed settings may change: the finished run is simply found finished
    again = train(replace(cfg, eval_every=2, checkpoint_every=2))["log"]
    assert [r["loss"] for r in again] == [r["loss"] for r in first]


def test_grown_checkpoint_trains(tmp_path, text):
    train(TrainConfig(**TINY, steps=10, data=text, out=str(tmp_path / "small")))
    grown = grow(tmp_path / "small" / "model.safetensors", 64, out=tmp_path / "grown")
    result = train(TrainConfig(**{**TINY, "width": 999}, steps=10, data=text, init_from=str(grown.out),
                               out=str(tmp_path / "warm")))
    first = result["log"][0]
    assert torch.isfinite(torch.tensor([first["loss"], first["eval_loss"]])).all()
    assert json.loads((tmp_path / "warm" / "config.json").read_text())["width"] == 64  # the checkpoint's, not 999


def test_coordinates_stay_flat_across_widths(text):
    """mup's coordinate check: after a few steps, activation sizes do not grow with width."""
    ds = load(text)
    sizes = {}
    for width in (32, 64, 128, 256):
        torch.manual_seed(0)
        model = build(GPTConfig(vocab_size=256, context=32, width=width, depth=2, heads=width // 16,
                                base_width=32, zero_query=False, zero_readout=False))
        from mup import MuAdamW

        opt = MuAdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95))
        acts = {}
        hooks = [model.blocks[-1].register_forward_hook(lambda m, i, o: acts.__setitem__("block", o)),
                 model.lm_head.register_forward_hook(lambda m, i, o: acts.__setitem__("logits", o))]
        for step in range(4):
            x, y = batch(ds.train, 8, 32, seed=0, step=step)
            loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            model(batch(ds.train, 8, 32, seed=0, step=99)[0])
        sizes[width] = {k: v.abs().mean().item() for k, v in acts.items()}
        for h in hooks:
            h.remove()
    for key in ("block", "logits"):
        values = [s[key] for s in sizes.values()]
        assert max(values) / min(values) < 2.0, (key, sizes)  # 8x the width, flat within 2x


def test_bad_input(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no data"):
        load(str(empty))
    odd = tmp_path / "tokens.bin"
    odd.write_bytes(b"\x01\x02\x03")
    with pytest.raises(DataError, match="whole number of uint16"):
        load(str(odd))
    with pytest.raises(DataError, match="no such"):
        load(str(tmp_path / "missing.txt"))
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(WsConvertError, match="not a ws_convert_gpt checkpoint"):
        train(TrainConfig(**TINY, steps=2, init_from=str(tmp_path / "other.safetensors"), out=str(tmp_path / "o")))


def test_token_file(tmp_path):
    tokens = (torch.arange(5000) % 300).to(torch.int16)
    path = tmp_path / "train.bin"
    path.write_bytes(bytes(tokens.view(torch.uint8).tolist()))
    ds = load(str(path))
    assert ds.vocab_size == 300 and len(ds.train) + len(ds.val) == 5000


def test_torchrun_two_processes_match_one(tmp_path, text):
    cfg = dict(TINY, steps=6, data=text)
    single = train(TrainConfig(**cfg, out=str(tmp_path / "one")))["log"]
    args = [f"--{k.replace('_', '-')}={v}" for k, v in cfg.items() if k != "eval_batches"]
    done = torchrun("-m", "ws_convert.cli", "train", *args, "--out", str(tmp_path / "two"))
    assert done.returncode == 0, done.stderr[-2000:]
    two = [json.loads(l) for l in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert len(two) == len(single)
    for a, b in zip(single, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-4)


def test_plot_draws_several_runs(tmp_path):
    from ws_convert.train import plot

    runs = [[{"step": s, "loss": 5 - s / 10 - k, "eval_loss": 5 - s / 10 - k} for s in range(5)] for k in (0, 1)]
    plot(runs, ["scratch", "warm"], tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_figure_says_what_it_compares_in_one_unit_with_every_line_named():
    """Steps count updates from 1; the held-out loss before the first update
    is the held-out curve's first point, at 0."""
    import matplotlib.pyplot as plt

    from ws_convert.train import loss_figure

    warm = [{"step": s, "loss": 3.0 - s / 10, **({"eval_loss": 2.5 - s / 10} if s % 2 else {})} for s in range(5)]
    warm[0]["eval_loss_start"] = 2.75
    scratch = [{"step": s, "loss": 5.0 - s / 10, "eval_loss": 5.5 - s / 10} for s in range(5)]
    fig = loss_figure([scratch, warm], ["scratch", "warm"], title="warm vs scratch", unit="nats per byte")
    (ax,) = fig.axes
    assert ax.get_title() == "warm vs scratch" and ax.get_ylabel() == "loss (nats per byte)"
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert sorted(lines) == sorted(t.get_text() for t in ax.get_legend().get_texts())  # every line in the legend
    assert list(lines["warm, training batches"].get_xdata()) == [1, 2, 3, 4, 5]
    assert list(lines["warm, held-out"].get_xdata()) == [0, 2, 4]
    assert list(lines["warm, held-out"].get_ydata()) == [2.75, 2.4, 2.2]
    assert list(lines["scratch, held-out"].get_xdata()) == [1, 2, 3, 4, 5]  # no score before the first update
    assert len(lines) == 4
    plt.close(fig)


def test_a_figure_against_compute_places_each_run_after_what_it_started_from():
    """With `compute`, x is FLOPs: a continued run starts where its base's
    compute ended, and each step adds that run's FLOPs per step."""
    import matplotlib.pyplot as plt

    from ws_convert.train import loss_figure

    base = [{"step": s, "loss": 4.0 - s / 10, "eval_loss": 4.0 - s / 10} for s in range(4)]
    warm = [{"step": s, "loss": 3.0 - s / 10, "eval_loss": 3.0 - s / 10} for s in range(2)]
    warm[0]["eval_loss_start"] = 3.5
    fig = loss_figure([base, warm], ["base", "warm"], compute=[(0.0, 10.0), (40.0, 30.0)])
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert ax.get_xlabel() == "training compute (FLOPs)"
    assert list(lines["base, held-out"].get_xdata()) == [10.0, 20.0, 30.0, 40.0]
    assert list(lines["warm, held-out"].get_xdata()) == [40.0, 70.0, 100.0]  # before training: at the base's end
    assert list(lines["warm, training batches"].get_xdata()) == [70.0, 100.0]
    plt.close(fig)


def test_compute_is_six_flops_per_parameter_and_token_plus_attention():
    from ws_convert.model import flops_per_token

    c = GPTConfig(vocab_size=256, context=128, width=64, depth=2, heads=2)
    block = 4 * 64 * 64 + 2 * 64 * 256 + 2 * 64  # attention, MLP, two norm gains
    params = 256 * 64 + 2 * block + 64 + 64 * 256  # embedding, blocks, final norm, readout
    assert sum(p.numel() for p in build(c, init=False).parameters()) == params
    assert flops_per_token(c) == 6 * params + 12 * 2 * 64 * 128


def test_the_command_line_trainer_prints_held_out_losses_as_they_come_on_a_terminal(tmp_path, monkeypatch):
    import re

    import click.testing
    from click.testing import CliRunner

    from ws_convert.cli import main

    monkeypatch.setattr(click.testing._NamedTextIOWrapper, "isatty", lambda self: True)  # draw the bar
    args = ["train", "--width", "32", "--depth", "2", "--heads", "2", "--steps", "4", "--batch-size", "4",
            "--context", "16", "--eval-every", "2", "--eval-batches", "2", "--out", str(tmp_path / "run")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    printed = [line for line in res.stdout.splitlines() if "held-out" in line]
    assert printed[0].startswith("step 0/4: held-out ") and printed[0].endswith("(before training)")
    assert [re.match(r"step (\d)/4: loss \d\.\d{4}, held-out \d\.\d{4}$", line)[1] for line in printed[1:4]] == [
        "1", "2", "4"]
    assert printed[4].startswith("done: 4 steps")
    assert "training" in res.stderr and "step 4, loss" in res.stderr  # the bar, below the lines
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert printed[0] == f"step 0/4: held-out {log[0]['eval_loss_start']:.4f} (before training)"


def test_a_run_is_scored_before_its_first_update_on_windows_of_the_dataset(tmp_path, text):
    """The first record holds the held-out loss before any update (for a warm
    start, the grown model itself), and the held-out windows do not follow
    the training seed: two runs of different seeds from the same grown model
    score it the same before they train."""
    small = tmp_path / "small"
    train(TrainConfig(**TINY, steps=2, data=text, out=str(small)))
    grown = grow(small / "model.safetensors", 64, out=tmp_path / "grown")
    logs = [train(TrainConfig(**TINY, steps=2, data=text, seed=s, init_from=str(grown.out),
                              out=str(tmp_path / f"warm{s}")))["log"] for s in (0, 1)]
    assert logs[0][0]["eval_loss_start"] == logs[1][0]["eval_loss_start"]
    # it is the grown checkpoint's own loss on the dataset's held-out windows, scored here independently
    import torch.nn.functional as F

    from ws_convert import model as gpt
    from ws_convert.train import EVAL_SEED

    net, val = gpt.load(grown.out / "model.safetensors").eval(), load(text).val
    with torch.no_grad():
        own = [F.cross_entropy(net(x).flatten(0, 1), y.flatten()).item() for x, y in
               (batch(val, TINY["batch_size"], TINY["context"], seed=EVAL_SEED, step=i)
                for i in range(TINY["eval_batches"]))]
    assert logs[0][0]["eval_loss_start"] == pytest.approx(sum(own) / len(own), rel=1e-6)
    assert logs[0][0]["eval_loss_start"] != logs[0][0]["eval_loss"]  # before and after the first update
    assert logs[0][0]["loss"] != logs[1][0]["loss"]  # while the seeds do train on other batches
