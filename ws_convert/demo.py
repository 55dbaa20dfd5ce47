"""`ws-convert demo`: the whole story on an embedded default, on any machine.

Start from the small μP GPT shipped with the package (trained on the Python
standard library's sources), grow it 2x in width with SZP and continue
training. Then spend the same compute the two other ways a user could: the
wide model from scratch given the base's training too, and the small model
simply trained on. Report held-out loss at equal compute (training FLOPs,
model.flops_per_token), the fair races; steps alone would flatter growth,
since the base's training is free to the grown model.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from .engine import grow
from .errors import CheckpointError, OutputError
from .model import GPTConfig, flops_per_token, read_config
from .train import TrainConfig, plot, train

BASE = Path(__file__).parent / "assets" / "base-w128"
# The command that made BASE (documented in README.md):
BASE_COMMAND = ("ws-convert train --width 128 --depth 4 --heads 4 --steps 800 --batch-size 16 --context 128 "
                "--lr 1e-2 --seed 0 --eval-every 100 --out base-w128")
BATCH, CONTEXT = 16, 128  # every demo run's, and the shipped base's


PRODUCTS = ("grown", "warm", "scratch", "continued", "loss.png", "summary.json")  # what a demo writes under --out
UNIT = "nats per byte"  # the demo's data are bytes, each a token


def _base(base: Path) -> tuple[GPTConfig, list[dict]]:
    """The base run's model config and training log (whose steps are part of
    the compute every contender gets); anything else is refused before a
    demo touches its --out."""
    model, log = base / "model.safetensors", base / "log.jsonl"
    if not model.is_file() or not log.is_file():
        raise CheckpointError(base, f"not a base run: no {'model.safetensors' if not model.is_file() else 'log.jsonl'} "
                                    "(make one with ws-convert train)")
    try:
        config = read_config(model)
    except CheckpointError as exc:
        raise CheckpointError(base, f"not a base run: {exc}") from None
    return config, [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


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
    config, base_log = _base(base)
    _clear(out, overwrite, base)
    out.mkdir(parents=True, exist_ok=True)
    to_width = 2 * config.width
    say(f"1/4 grow {base} (width {config.width}) to width {to_width} with SZP")
    grown = grow(base / "model.safetensors", to_width, out=out / "grown", device="cpu")
    big = read_config(grown.out / "model.safetensors")
    # training FLOPs of one step at each width
    small_step, big_step = (BATCH * CONTEXT * flops_per_token(dataclasses.replace(c, context=CONTEXT))
                            for c in (config, big))
    base_flops, extra = len(base_log) * small_step, steps * big_step
    scratch_steps, continued_steps = round((base_flops + extra) / big_step), round(extra / small_step)
    common = dict(batch_size=BATCH, context=CONTEXT, lr=lr, seed=seed, device=device, eval_every=eval_every,
                  eval_batches=8)
    say(f"2/4 continue training the grown model for {steps} steps (losses in {UNIT})")
    warm = train(TrainConfig(**common, steps=steps, init_from=str(grown.out), out=str(out / "warm")),
                 progress=progress)
    say(f"3/4 train width {to_width} from scratch with the same total compute (the base's {len(base_log)} steps "
        f"at width {config.width} and these {steps}): {scratch_steps} steps, same hyperparameters")
    scratch = train(TrainConfig(**common, steps=scratch_steps, width=big.width, depth=big.depth, heads=big.heads,
                                base_width=big.base_width, init_std=big.init_std, out=str(out / "scratch")),
                    progress=progress)
    say(f"4/4 continue the base at width {config.width} with the warm run's compute instead: "
        f"{continued_steps} steps, same hyperparameters")
    continued = train(TrainConfig(**common, steps=continued_steps, init_from=str(base), out=str(out / "continued")),
                      progress=progress)
    runs = {"warm": (f"warm-start (SZP, width {config.width} -> {to_width})", warm, base_flops, big_step),
            "scratch": (f"scratch at width {to_width}, the same total compute", scratch, 0.0, big_step),
            "continued": (f"the base continued at width {config.width}, the same compute", continued, base_flops,
                          small_step)}
    plot([base_log, *(r["log"] for _, r, _, _ in runs.values())],
         [f"base (width {config.width})", *(label for label, _, _, _ in runs.values())], out / "loss.png",
         unit=UNIT, compute=[(0.0, small_step), *((at, per) for _, _, at, per in runs.values())],
         title=f"Width {config.width} -> {to_width} with SZP vs. the same compute spent otherwise")
    summary = {
        "base": str(base), "base_width": config.width, "base_steps": len(base_log), "width": to_width,
        "steps": steps, "flops_per_step": {"base_width": small_step, "width": big_step},
        "runs": {name: {"label": label, "width": to_width if name != "continued" else config.width,
                        "steps": len(r["log"]), "flops": at + len(r["log"]) * per,
                        "eval_loss_start": r["log"][0]["eval_loss_start"], "final_eval_loss": r["final_eval_loss"],
                        # (step, held-out loss); step 0 is the model before its first update
                        "eval": [[0, r["log"][0]["eval_loss_start"]]]
                        + [[e["step"] + 1, e["eval_loss"]] for e in r["log"] if "eval_loss" in e]}
                 for name, (label, r, at, per) in runs.items()},
    }
    summary["warm_lead"] = {other: summary["runs"][other]["final_eval_loss"] - warm["final_eval_loss"]
                            for other in ("scratch", "continued")}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def table(summary: dict) -> str:
    """The demo's report as text: the three ways to spend the same compute."""
    runs = summary["runs"]
    w = max(len(r["label"]) for r in runs.values())
    lines = [f"held-out loss ({UNIT}) at equal compute: the base's {summary['base_steps']} steps at width "
             f"{summary['base_width']} + {summary['steps']} steps at width {summary['width']}",
             f"  {'':<{w}}  {'steps':>5}  {'before':>6}  {'after':>6}"]
    lines += [f"  {r['label']:<{w}}  {r['steps']:>5}  {r['eval_loss_start']:>6.4f}  {r['final_eval_loss']:>6.4f}"
              for r in runs.values()]
    parts = [f"{'leads' if d > 0 else 'trails'} {what} by {abs(d):.4f}"
             for what, d in (("scratch", summary["warm_lead"]["scratch"]),
                             ("the continued base", summary["warm_lead"]["continued"]))]
    lines.append(f"warm-start {' and '.join(parts)} ({UNIT}, lower is better)")
    return "\n".join(lines)
