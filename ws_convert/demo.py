"""`ws-convert demo`: the whole story on an embedded default, on any machine.

Start from the small μP GPT shipped with the package (trained on the Python
standard library's sources), grow it 2x in width with SZP, continue training,
and train the same grown architecture from scratch with the same
hyperparameters and steps. Report held-out loss at equal steps and how many
steps each run needed to reach the scratch run's final loss.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from .engine import grow
from .errors import CheckpointError, OutputError
from .model import GPTConfig, read_config
from .train import TrainConfig, plot, train

BASE = Path(__file__).parent / "assets" / "base-w128"
# The command that made BASE (documented in README.md):
BASE_COMMAND = ("ws-convert train --width 128 --depth 4 --heads 4 --steps 800 --batch-size 16 --context 128 "
                "--lr 1e-2 --seed 0 --eval-every 100 --out base-w128")


def steps_to_reach(log: list[dict], target: float) -> int | None:
    """The first evaluated step (counted from 1) whose held-out loss is at most `target`."""
    return next((r["step"] + 1 for r in log if "eval_loss" in r and r["eval_loss"] <= target), None)


PRODUCTS = ("grown", "warm", "scratch", "loss.png", "summary.json")  # what a demo writes under --out
UNIT = "nats per byte"  # the demo's data are bytes, each a token


def _base_config(base: Path) -> GPTConfig:
    """The base run's model config; anything else is refused before a demo touches its --out."""
    model = base / "model.safetensors"
    if not model.is_file():
        raise CheckpointError(base, "not a base run: no model.safetensors (make one with ws-convert train)")
    try:
        return read_config(model)
    except CheckpointError as exc:
        raise CheckpointError(base, f"not a base run: {exc}") from None


def _clear(out: Path, overwrite: bool, base: Path) -> None:
    """Make room for a fresh demo: an earlier one is replaced only when asked,
    and only the demo's own products go; anything else in `out` stays."""
    earlier = [out / name for name in PRODUCTS if (out / name).exists()]
    if earlier and not overwrite:
        raise OutputError(f"{out}: holds an earlier demo ({', '.join(p.name for p in earlier)}); "
                          "pass --overwrite to replace it, or choose another --out")
    for path in earlier:
        if base.resolve().is_relative_to(path.resolve()):
            raise OutputError(f"{base}: the base lies in the earlier demo that --overwrite would replace; "
                              "choose another --out")
    for path in earlier:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def run(out: str | Path = "ws-convert-demo", *, steps: int = 200, base: str | Path | None = None,
        seed: int = 0, device: str = "auto", eval_every: int = 20, lr: float = 1e-2, overwrite: bool = False,
        say: Callable[[str], None] = functools.partial(print, flush=True), progress=None) -> dict:
    """Run the demo; returns (and writes to out/summary.json) the summary.
    `say` gets each stage's line, `progress` the trainer's (train.train)."""
    out, base = Path(out), Path(base) if base else BASE
    config = _base_config(base)
    _clear(out, overwrite, base)
    out.mkdir(parents=True, exist_ok=True)
    to_width = 2 * config.width
    say(f"1/3 grow {base} (width {config.width}) to width {to_width} with SZP")
    grown = grow(base / "model.safetensors", to_width, out=out / "grown", device="cpu")
    common = dict(steps=steps, batch_size=16, context=128, lr=lr, seed=seed, device=device,
                  eval_every=eval_every, eval_batches=8)
    say(f"2/3 continue training the grown model for {steps} steps (losses in {UNIT})")
    warm = train(TrainConfig(**common, init_from=str(grown.out), out=str(out / "warm")), progress=progress)
    g = json.loads((grown.out / "config.json").read_text())
    say(f"3/3 train the same architecture from scratch for {steps} steps, same hyperparameters")
    scratch = train(TrainConfig(**common, width=g["width"], depth=g["depth"], heads=g["heads"],
                                base_width=g["base_width"], init_std=g["init_std"], out=str(out / "scratch")),
                    progress=progress)
    labels = [f"scratch (width {to_width})", f"warm-start (SZP from width {config.width})"]
    plot([scratch["log"], warm["log"]], labels, out / "loss.png", unit=UNIT,
         title=f"Width {config.width} grown to {to_width} with SZP vs. trained from scratch, {steps} steps each")
    target = scratch["final_eval_loss"]
    summary = {
        "steps": steps,
        "base": str(base), "base_width": config.width, "width": to_width,
        "base_steps": len((base / "log.jsonl").read_bytes().splitlines()) if (base / "log.jsonl").is_file() else None,
        "scratch_final_eval_loss": scratch["final_eval_loss"],
        "warm_final_eval_loss": warm["final_eval_loss"],
        "scratch_steps_to_scratch_final": steps_to_reach(scratch["log"], target),
        "warm_steps_to_scratch_final": steps_to_reach(warm["log"], target),
        # step 0: before either run's first update (the warm start's row is the grown model itself)
        "eval": [{"step": 0, "scratch": scratch["log"][0]["eval_loss_start"],
                  "warm": warm["log"][0]["eval_loss_start"]}]
        + [{"step": a["step"] + 1, "scratch": a["eval_loss"], "warm": b["eval_loss"]}
           for a, b in zip(scratch["log"], warm["log"]) if "eval_loss" in a and "eval_loss" in b],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def table(summary: dict) -> str:
    """The demo's report as text."""
    lines = [f"held-out loss ({UNIT}), width {summary['base_width']} -> {summary['width']}, "
             f"{summary['steps']} steps each", f"{'step':>6}  {'scratch':>8}  {'warm-start':>10}"]
    lines += [f"{r['step']:>6}  {r['scratch']:>8.4f}  {r['warm']:>10.4f}" for r in summary["eval"]]
    warm_steps = summary["warm_steps_to_scratch_final"]
    reach = (f"{warm_steps} step{'s' if warm_steps > 1 else ''} ({warm_steps / summary['steps']:.1%} of "
             f"scratch's {summary['steps']})" if warm_steps else "not within the run")
    lines.append(f"steps to reach scratch's final loss {summary['scratch_final_eval_loss']:.4f}: warm-start {reach}")
    if summary.get("base_steps"):
        lines.append(f"(the base model trained {summary['base_steps']} steps at width {summary['base_width']}, "
                     f"about a quarter of the compute per step of width {summary['width']})")
    return "\n".join(lines)
