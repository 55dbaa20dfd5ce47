"""Set-up cost per tensor: reading a header and planning a growth must do a
small, fixed amount of Python per tensor, so that checkpoints of tens of
thousands of small tensors (mixture-of-experts) are not dominated by it."""

import gc
import itertools
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from ws_convert.plan import GrowthOptions, Source, make_plan, write_base_shapes
from ws_convert.reader import open_checkpoint
from ws_convert.safetensors_spec import encode_header


def source(tmp_path: Path, tensors: int) -> Path:
    src = tmp_path / f"src{tensors}"
    src.mkdir()
    save_file({f"layers.{i}.w": torch.ones(2, 2) for i in range(tensors)}, src / "model.safetensors")
    (src / "config.json").write_text('{"hidden_size": 2, "num_attention_heads": 1}')
    return src


def calls(work) -> int:
    """Python function calls, builtins included, that `work()` makes."""
    counter = itertools.count()

    def count(frame, event, arg):
        if event in ("call", "c_call"):
            next(counter)

    sys.setprofile(count)
    try:
        work()
    finally:
        sys.setprofile(None)
    return next(counter)


def test_reading_and_planning_cost_few_calls_per_tensor(tmp_path):
    """Counted, not timed, so that a loaded machine cannot make it flaky:
    per tensor, reading the header took 26 calls and planning 55 (a frozen
    dataclass and a μP init per tensor, every check repeated per tensor)."""
    small, large = source(tmp_path, 500), source(tmp_path, 1500)
    per_tensor = {}
    for what in ("read", "plan"):
        made = []
        for src in (small, large):
            ckpt = open_checkpoint(src)
            if what == "read":
                made.append(calls(lambda: open_checkpoint(src)))
            else:
                made.append(calls(lambda: write_base_shapes(
                    make_plan(Source.of(ckpt), GrowthOptions(to_width=4, arch="generic")).base_shapes)))
        per_tensor[what] = (made[1] - made[0]) / 1000
    assert per_tensor["read"] <= 22 and per_tensor["plan"] <= 24, per_tensor


def test_reading_and_planning_pause_the_garbage_collector(tmp_path):
    """Building thousands of objects that all stay alive made the cyclic
    collector run every 700 of them, and its older generations traverse
    them all again each time: a third of the set-up time of 20,000 small
    tensors. Paused, it runs about once per step, after it."""
    src = source(tmp_path, 3000)
    runs = []

    def count(phase: str, info: dict) -> None:
        if phase == "stop":
            runs.append(info["generation"])

    gc.callbacks.append(count)
    try:
        ckpt = open_checkpoint(src)
        plan = make_plan(Source.of(ckpt), GrowthOptions(to_width=4, arch="generic"))
        write_base_shapes(plan.base_shapes)
        planning = len(runs)
        entries = [(t.name, t.dtype, t.shape) for t in plan.tensors]
        before = len(runs)
        encode_header(entries, None)
    finally:
        gc.callbacks.remove(count)
    assert planning <= 4 and len(runs) - before <= 1, runs
    assert gc.isenabled()
