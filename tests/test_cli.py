"""The command line: the demo runs every stage end to end, printing its losses
as they come; every option explains itself; sizes may be multiples of the
source's; a refusal says what to give; bad usage exits with 2."""

import dataclasses
import json
import re
import shutil

import pytest
from click.testing import CliRunner

from ws_convert.cli import main


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A base run of width 32 for demos that need not tell the story, only run it quickly."""
    from ws_convert.train import TrainConfig, train

    out = tmp_path_factory.mktemp("base") / "base"
    train(TrainConfig(width=32, depth=2, heads=2, steps=2, batch_size=4, context=16, eval_batches=1, out=str(out)))
    return out


def test_short_demo_races_three_ways_at_equal_compute(tmp_path, monkeypatch, tiny_base):
    """Grown, wide scratch given the base's compute too, and the base trained
    on: each gets the same training FLOPs, prints its losses as it trains,
    and the report compares the finals."""
    import ws_convert.demo
    from ws_convert.model import flops_per_token, read_config

    drawn = []
    real_plot = ws_convert.demo.plot
    monkeypatch.setattr(ws_convert.demo, "plot", lambda *a, **kw: (drawn.append((a, kw)), real_plot(*a, **kw)))
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--out", str(out), "--steps", "6", "--eval-every", "3",
                                       "--base", str(tiny_base)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    runs = summary["runs"]
    lines = result.output.splitlines()
    stages = [next(i for i, line in enumerate(lines) if line.startswith(stage))
              for stage in ("1/4 grow", "2/4 continue training the grown model for 6 steps",
                            "3/4 train width 64 from scratch with the same total compute (the base's 2 steps at "
                            f"width 32 and these 6): {runs['scratch']['steps']} steps",
                            f"4/4 continue the base at width 32 with the warm run's compute instead: "
                            f"{runs['continued']['steps']} steps", "held-out loss (nats per byte) at equal compute")]
    assert stages == sorted(stages) and "(losses in nats per byte)" in lines[stages[1]]
    for (first, last), name in zip(zip(stages[1:], stages[2:]), ("warm", "scratch", "continued")):
        n = runs[name]["steps"]
        printed = lines[first + 1:last]  # while the run trains
        assert printed[0].startswith(f"  step 0/{n}: held-out ") and printed[0].endswith(" (before training)")
        steps = [int(re.match(rf"  step (\d+)/{n}: loss \d\.\d{{4}}, held-out \d\.\d{{4}}$", line)[1])
                 for line in printed[1:]]
        assert steps == sorted({1, *range(3, n + 1, 3), n})
        assert [e[0] for e in runs[name]["eval"]] == [0, *steps]  # 0: before the first update
    # equal compute, to a step's rounding: the base's steps count for the grown and the continued runs
    base, grown = (read_config(p / "model.safetensors") for p in (tiny_base, out / "grown"))
    per = summary["flops_per_step"]
    assert per == {"base_width": 16 * 128 * flops_per_token(dataclasses.replace(base, context=128)),
                   "width": 16 * 128 * flops_per_token(dataclasses.replace(grown, context=128))}
    assert runs["warm"]["steps"] == 6 and runs["warm"]["flops"] == 2 * per["base_width"] + 6 * per["width"]
    assert abs(runs["scratch"]["flops"] - runs["warm"]["flops"]) <= per["width"] / 2
    assert abs(runs["continued"]["flops"] - runs["warm"]["flops"]) <= per["base_width"] / 2
    assert runs["continued"]["steps"] > 2 * runs["warm"]["steps"]  # a 2x wider step costs more than 2 narrow ones
    assert read_config(out / "continued" / "model.safetensors").width == 32
    lead = {k: runs[k]["final_eval_loss"] - runs["warm"]["final_eval_loss"] for k in ("scratch", "continued")}
    assert summary["warm_lead"] == lead
    said = [f"{'leads' if d > 0 else 'trails'} {what} by {abs(d):.4f}"
            for what, d in (("scratch", lead["scratch"]), ("the continued base", lead["continued"]))]
    assert f"warm-start {said[0]} and {said[1]} (nats per byte, lower is better)" in result.output
    (logs, labels, path), options = drawn[0]
    assert path == out / "loss.png" and options["unit"] == "nats per byte"
    assert labels == ["base (width 32)", "warm-start (SZP, width 32 -> 64)",
                      "scratch at width 64, the same total compute", "the base continued at width 32, the same compute"]
    assert options["compute"] == [(0.0, per["base_width"]), (2 * per["base_width"], per["width"]), (0.0, per["width"]),
                                  (2 * per["base_width"], per["base_width"])]
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    for run in ("grown", "warm", "scratch", "continued"):
        assert (out / run / "model.safetensors").is_file()


def test_demo_prints_each_held_out_loss_as_it_comes_into_a_pipe(tmp_path, tiny_base):
    """Piped, not a terminal: the first held-out line arrives while the demo still trains."""
    import subprocess
    import sys

    args = ["demo", "--out", tmp_path / "demo", "--steps", "2", "--eval-every", "1", "--base", tiny_base]
    with subprocess.Popen([sys.executable, "-m", "ws_convert.cli", *map(str, args)], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True) as proc:
        first = next(line for line in proc.stdout if "held-out" in line)
        running = proc.poll() is None
        rest = proc.stdout.read()
    assert first.startswith("  step 0/2: held-out") and running
    assert proc.returncode == 0 and "4/4 continue the base" in rest


def test_demo_replaces_an_earlier_one_only_when_asked(tmp_path, tiny_base):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--steps", "2", "--eval-every", "1", "--base", str(tiny_base)]
    assert CliRunner().invoke(main, args).exit_code == 0
    (out / "notes.txt").write_text("mine")
    before = (out / "summary.json").read_bytes()
    again = CliRunner().invoke(main, [*args, "--seed", "1"])
    assert again.exit_code == 2
    assert again.output.strip().splitlines() == [
        f"ws-convert: error: {out}: holds an earlier demo (grown, warm, scratch, continued, loss.png, summary.json); "
        "pass --overwrite to replace it, or choose another --out"]
    assert (out / "summary.json").read_bytes() == before
    replaced = CliRunner().invoke(main, [*args, "--seed", "1", "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert json.loads((out / "summary.json").read_bytes())["runs"] != json.loads(before)["runs"]  # a new run
    assert (out / "notes.txt").read_text() == "mine"
    inside = CliRunner().invoke(main, [*args[:-2], "--base", str(out / "warm"), "--overwrite"])
    assert inside.exit_code == 2 and "the base lies in the earlier demo" in inside.output
    assert (out / "warm" / "model.safetensors").is_file()


def test_bad_usage_exits_2():
    assert CliRunner().invoke(main, ["demo", "--steps", "1"]).exit_code == 2
    assert CliRunner().invoke(main, ["no-such-command"]).exit_code == 2


# -- help, sizes given as multiples, messages, output -----------------------------------------------------------

def commands(command=main, path="ws-convert"):
    """(command line, command) of the command and of every command under it."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from commands(sub, f"{path} {name}")


def test_every_option_of_every_command_has_help():
    import click

    from ws_convert.plan import DEPTH_POLICIES

    seen = dict(commands())
    assert {"ws-convert grow", "ws-convert plan", "ws-convert inspect", "ws-convert verify", "ws-convert train",
            "ws-convert demo"} <= set(seen)
    for where, command in seen.items():
        options = [p for p in command.params if isinstance(p, click.Option)]
        assert options or where == "ws-convert", where
        for option in options:
            assert (option.help or "").strip(), f"{where} {option.opts[0]} has no help"
    for where in ("ws-convert grow", "ws-convert plan"):
        policy = next(p for p in seen[where].params if p.name == "depth_policy")
        assert all(name in policy.help for name in DEPTH_POLICIES), policy.help  # every choice explained


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A tiny Llama (width 64, 4 heads, 2 kv heads, 2 layers) saved by transformers, every weight drawn."""
    from models import perturbed, tiny

    cls, config = tiny("llama", width=64, heads=4, kv_heads=2, layers=2)
    path = tmp_path_factory.mktemp("src") / "small"
    perturbed(cls(config)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def mha(tmp_path_factory):
    """A tiny Llama of 4 heads of 4 kv heads (width 48), which --arch generic can grow, every weight drawn."""
    from models import perturbed, tiny

    cls, config = tiny("llama", width=48, heads=4, kv_heads=4)
    path = tmp_path_factory.mktemp("src") / "mha"
    perturbed(cls(config)).save_pretrained(path)
    return path


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_sizes_given_as_multiples_of_the_source(llama, tmp_path, monkeypatch):
    as_json = invoke("plan", llama, "--to-width", "2x", "--to-depth", "2x", "--json")
    assert as_json.exit_code == 0, as_json.output
    absolute = invoke("plan", llama, "--to-width", "128", "--to-depth", "4", "--json")
    assert json.loads(as_json.output) == json.loads(absolute.output)  # options, target, tensors: all the same
    assert json.loads(as_json.output)["options"]["to_width"] == 128
    monkeypatch.chdir(tmp_path)
    grown = invoke("grow", llama, "--to-width", "1.5x", "-q")
    assert grown.exit_code == 0, grown.output
    config = json.loads((llama.parent / "small-w96" / "config.json").read_text())  # named after the width
    assert (config["hidden_size"], config["num_hidden_layers"]) == (96, 2)
    record = json.loads((llama.parent / "small-w96" / "ws_convert.json").read_text())
    assert record["options"]["to_width"] == 96  # what verify replans from
    assert invoke("verify", llama.parent / "small-w96").exit_code == 0


@pytest.mark.parametrize("args,line", [
    (("--to-width", "1.1x"), "--to-width 1.1x of the source's width 64 is 70.4, not a whole number; give the width "
                             "itself or another multiple"),
    (("--to-depth", "1.25x"), "--to-depth 1.25x of the source's layers 2 is 2.5, not a whole number; give the layers "
                              "itself or another multiple"),
    (("--to-depth", "2x", "--arch", "generic"), "--to-depth 2x: --arch generic does not know the layers, so it "
                                               "cannot grow depth"),
])
def test_a_multiple_that_gives_no_whole_size_is_refused_in_one_line(llama, args, line):
    res = invoke("plan", llama, *args)
    assert (res.exit_code, res.output.splitlines()) == (2, [f"ws-convert: error: {line}"])


def test_generic_takes_a_multiple_of_the_width_its_config_gives(mha):
    res = invoke("plan", mha, "--to-width", "3x", "--arch", "generic")
    assert res.exit_code == 0 and res.output.startswith("generic: width 48 -> 144"), res.output


@pytest.mark.parametrize("value", ["0x", "-2x", "x", "2y", "0", "two"])
def test_a_size_that_is_neither_a_number_nor_a_multiple_is_a_usage_error(llama, value):
    res = invoke("plan", llama, "--to-width", value)
    assert res.exit_code == 2 and "Invalid value for '--to-width'" in res.output


def test_warnings_come_before_the_progress_and_the_output_is_named_as_given(llama, tmp_path, monkeypatch):
    import click.testing

    monkeypatch.setattr(click.testing._NamedTextIOWrapper, "isatty", lambda self: True)  # draw the bar
    monkeypatch.chdir(llama.parent)
    res = invoke("grow", "small", "--to-width", "4x", "-o", "o16")  # growth factor 4: warned
    assert res.exit_code == 0, res.output
    err = res.stderr
    assert err.index("warning: growth factor 4") < err.index("growing")
    frames = re.findall(r"tensor (\d+)/(\d+)", err)
    assert frames and all(int(i) >= 1 and int(n) == 21 for i, n in frames), frames  # never "tensor 0/0"
    assert res.stdout.startswith("wrote o16: ")
    for args, shown in ((["small", "--to-depth", "4"], "small-d4"), (["./small", "--to-width", "128", "-o", "./o17"],
                                                                     "./o17"),
                        ([llama, "--to-depth", "6", "--depth-policy", "init"], llama.parent / "small-d6")):
        res = invoke("grow", *args)
        assert res.exit_code == 0, res.output
        assert res.stdout.startswith(f"wrote {shown}: "), (args, res.stdout)


def test_grow_reads_the_headers_and_plans_once_unless_a_multiple_needs_the_source_first(llama, tmp_path,
                                                                                          monkeypatch):
    """A checkpoint of tens of thousands of tensors takes a while to read and
    plan: `grow` does each once (a `2x` reads the headers once more, to size it)."""
    import importlib

    engine, plan, reader = (importlib.import_module(f"ws_convert.{m}") for m in ("engine", "plan", "reader"))
    counts = {"plan": 0, "open": 0}

    def counted(what, fn):
        def call(*args, **kwargs):
            counts[what] += 1
            return fn(*args, **kwargs)
        return call

    for module, name, what in ((engine, "make_plan", "plan"), (plan, "make_plan", "plan"),
                               (engine, "open_checkpoint", "open"), (reader, "open_checkpoint", "open")):
        monkeypatch.setattr(module, name, counted(what, getattr(module, name)))
    for size, opened in (("128", 1), ("2x", 2)):
        counts.update(plan=0, open=0)
        res = invoke("grow", llama, "--to-width", size, "-o", tmp_path / size)
        assert res.exit_code == 0, res.output
        assert counts == {"plan": 1, "open": opened}, (size, counts)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_dtype_is_named_in_the_grown_config(llama, mha, tmp_path, dtype):
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "half"
    assert invoke("grow", llama, "--to-width", "128", "--dtype", dtype, "-o", out, "-q").exit_code == 0
    assert json.loads((out / "config.json").read_text())["dtype"] == dtype
    model = AutoModelForCausalLM.from_pretrained(out)  # no dtype argument: the config's
    assert {p.dtype for p in model.parameters()} == {getattr(torch, dtype)}  # the source's are float32
    assert invoke("verify", out).exit_code == 0
    back = tmp_path / "back"  # and back to float32
    assert invoke("grow", out, "--to-depth", "4", "--dtype", "float32", "-o", back, "-q").exit_code == 0
    assert {p.dtype for p in AutoModelForCausalLM.from_pretrained(back).parameters()} == {torch.float32}
    # a transformers 4 config's torch_dtype too, and --arch generic's config
    for src, args in ((llama, ()), (mha, ("--arch", "generic"))):
        old = tmp_path / f"old-{src.name}"
        shutil.copytree(src, old)
        config = json.loads((old / "config.json").read_text())
        (old / "config.json").write_text(json.dumps({**config, "torch_dtype": "float32"}))
        grown, kept = tmp_path / f"grown-{src.name}", tmp_path / f"kept-{src.name}"
        res = invoke("grow", old, "--to-width", "2x", "--dtype", dtype, "-o", grown, "-q", *args)
        assert res.exit_code == 0, res.output
        written = json.loads((grown / "config.json").read_text())
        assert (written["dtype"], written["torch_dtype"]) == (dtype, dtype)
        assert invoke("verify", grown).exit_code == 0
        assert invoke("grow", old, "--to-width", "2x", "-o", kept, "-q", *args).exit_code == 0
        written = json.loads((kept / "config.json").read_text())
        assert (written["dtype"], written["torch_dtype"]) == ("float32", "float32")  # --dtype keep


def test_a_pickle_or_a_config_as_the_source_says_what_to_give(llama, tmp_path):
    import torch

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save({"w": torch.randn(4, 4)}, pickled / "pytorch_model.bin")
    res = invoke("plan", pickled, "--to-width", "128")
    assert res.exit_code == 2 and len(res.output.splitlines()) == 1 and "--allow-pickle" in res.output
    res = invoke("plan", llama / "config.json", "--to-width", "128")
    assert res.output.splitlines() == [
        f"ws-convert: error: {llama / 'config.json'}: is a config, not weights; give its directory, {llama}"]


def test_the_width_hint_is_the_least_step_every_check_accepts():
    """For each family and head policy, the widths that plan are exactly the
    multiples of the hinted step, and the width the hint suggests plans."""
    from models import family_model, tiny
    from ws_convert.errors import PlanError
    from ws_convert.plan import GrowthOptions, Source, make_plan
    from ws_convert.torch_dtypes import NAMES

    steps = {}
    for case in ("llama", "gptj", "falcon-mq", "opt", "gpt2"):
        cls, config = family_model(case) if case != "gpt2" else tiny("gpt2", width=48, heads=4)
        state = cls(config).state_dict()
        source = Source(case, {n: (NAMES[v.dtype], tuple(v.shape)) for n, v in state.items()}, config.to_dict())
        width = config.hidden_size
        for policy in ("heads", "head-dim"):
            ok, hinted = [], {}
            for w2 in range(width + 1, 3 * width + 1):
                try:
                    make_plan(source, GrowthOptions(to_width=w2, head_policy=policy))
                    ok.append(w2)
                except PlanError as exc:
                    found = re.search(r"a multiple of (\d+), such as (\d+)$", str(exc))
                    if found:
                        hinted[w2] = tuple(map(int, found.groups()))
            if not hinted:
                continue
            (step,) = {s for s, _ in hinted.values()}
            assert ok and all(w % step == 0 for w in ok), (case, policy, step, ok)
            assert all(w % step for w in hinted), (case, policy, step)
            for w2, (_, such_as) in hinted.items():
                assert such_as == -(-w2 // step) * step
                make_plan(source, GrowthOptions(to_width=such_as, head_policy=policy))
            steps[case, policy] = step
    assert steps["llama", "heads"] == 16  # 4 heads and 2 kv heads of width 32: every 16, not every 8
    assert len(set(steps.values())) > 1


def test_the_llama_of_the_report_gets_a_hint_that_plans(llama):
    res = invoke("plan", llama, "--to-width", "100")
    assert res.output.splitlines() == ["ws-convert: error: --to-width 100 would give 4 x 100/64 = 6.25 heads, not a "
                                       "whole number; pick a --to-width that is a multiple of 32, such as 128"]
    assert invoke("plan", llama, "--to-width", "80").output.endswith("multiple of 32, such as 96\n")
    assert invoke("plan", llama, "--to-width", "96").exit_code == 0
