"""The paper's main claims at a laptop's scale, with the bundled μP GPT on
the standard library's sources. Each subcommand writes its results as JSON,
a markdown table and a plot under --out (docs/results by default):

    python experiments/warmstart.py scale     # warm-start vs scratch at growth 2x and 4x, also compute-matched
    python experiments/warmstart.py lr-sweep  # μTransfer: best lr at base width, target scratch, target warm
    python experiments/warmstart.py ablate    # shrink in {0.2, 0.4, 0.6, 1.0}; perturb 0 vs 1; norms shrunk vs copied
    python experiments/warmstart.py operators # szp, zero-pad, hyperclone (+ grown optimizer state), net2net, scratch

Every run starts from the same base: `--base` (default: the model shipped in
ws_convert/assets), grown with ws_convert.grow, then trained with
ws_convert.train at the base's hyperparameters. Use --seeds for the spread.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from ws_convert import grow, plan
from ws_convert.demo import BASE, steps_to_reach
from ws_convert.train import TrainConfig, plot, train


def run_one(work: Path, name: str, base: Path, to_width: int | None, seed: int, steps: int, lr: float,
            **grow_options) -> dict:
    """One training run: from scratch at `to_width` (to_width given, no base),
    warm from `base` grown to `to_width`, or the base width itself. With an
    `optimizer_state` among the grow options, the warm run continues it."""
    cfg = json.loads((base / "config.json").read_text())
    common = dict(steps=steps, batch_size=16, context=128, lr=lr, seed=seed, eval_every=max(1, steps // 10),
                  eval_batches=8, out=str(work / name))
    if name.startswith("warm"):
        g = grow(base / "model.safetensors", to_width, out=work / f"{name}-grown", overwrite=True, seed=seed,
                 **grow_options)
        return train(TrainConfig(**common, init_from=str(g.out),
                                 resume_optimizer="optimizer_state" in grow_options))
    width = to_width or cfg["width"]
    return train(TrainConfig(**common, width=width, depth=cfg["depth"], heads=cfg["heads"] * width // cfg["width"],
                             base_width=cfg["base_width"]))


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def flops_per_token(params: int, cfg: dict, width: int, context: int = 128) -> float:
    """Training FLOPs per token: 6 N plus the attention scores, as
    benchmarks/bench_train.py counts them."""
    return 6 * params + 12 * cfg["depth"] * width * context


def matched_steps(base: Path, width: int, steps: int) -> int:
    """Steps at `width` that cost what the base's training plus `steps`
    warm-started steps cost together: the fair budget for a scratch run."""
    cfg = json.loads((base / "config.json").read_text())
    base_steps = sum(1 for _ in (base / "log.jsonl").open())
    p = plan(base / "model.safetensors", width)
    ratio = flops_per_token(p.params_before, cfg, cfg["width"]) / flops_per_token(p.params_after, cfg, width)
    return steps + round(base_steps * ratio)


def scale(a) -> str:
    base_w = json.loads((a.base / "config.json").read_text())["width"]
    rows, logs, labels = [], [], []
    for factor in (2, 4):
        w = base_w * factor
        res = {k: [run_one(a.work, f"{k}-{factor}x-s{s}", a.base, w, s, a.steps, a.lr) for s in a.seeds]
               for k in ("scratch", "warm")}
        long = matched_steps(a.base, w, a.steps)
        matched = [run_one(a.work, f"scratch-{factor}x-{long}steps-s{s}", a.base, w, s, long, a.lr) for s in a.seeds]
        frac = [steps_to_reach(wr["log"], sr["final_eval_loss"]) for wr, sr in zip(res["warm"], res["scratch"])]
        rows.append(f"| {factor}x ({base_w} -> {w}) | {spread([r['final_eval_loss'] for r in res['scratch']])} | "
                    f"{long}: {spread([r['final_eval_loss'] for r in matched])} | "
                    f"{spread([r['final_eval_loss'] for r in res['warm']])} | "
                    f"{', '.join(f'{f / a.steps:.0%}' if f else 'never' for f in frac)} |")
        logs += [res["scratch"][0]["log"], res["warm"][0]["log"], matched[0]["log"]]
        labels += [f"scratch {factor}x", f"warm {factor}x", f"scratch {factor}x, {long} steps"]
    plot(logs, labels, a.out / "scale.png")
    return (f"| growth | scratch final held-out ({a.steps} steps) | scratch with the warm run's total compute "
            f"(steps: final held-out) | warm final held-out ({a.steps} steps) | "
            "warm steps to scratch's final (per seed) |\n|---|---|---|---|---|\n" + "\n".join(rows))


def lr_sweep(a) -> str:
    base_w = json.loads((a.base / "config.json").read_text())["width"]
    lrs = [float(x) for x in a.lrs.split(",")]
    settings = {"base width, scratch": ("scratch-base", None), f"{2 * base_w}, scratch": ("scratch", 2 * base_w),
                f"{2 * base_w}, warm": ("warm", 2 * base_w)}
    table = {}
    for label, (kind, width) in settings.items():
        for lr in lrs:
            finals = [run_one(a.work, f"{kind}-lr{lr}-s{s}", a.base, width, s, a.steps, lr)["final_eval_loss"]
                      for s in a.seeds]
            table[(label, lr)] = finals
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label in settings:
        ax.plot(lrs, [statistics.mean(table[(label, lr)]) for lr in lrs], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"held-out loss after {a.steps} steps")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(a.out / "lr_sweep.png", dpi=120)
    head = "| setting | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | best |\n|---|" + "---|" * (len(lrs) + 1)
    rows = []
    for label in settings:
        means = [statistics.mean(table[(label, lr)]) for lr in lrs]
        rows.append(f"| {label} | " + " | ".join(spread(table[(label, lr)]) for lr in lrs)
                    + f" | {lrs[means.index(min(means))]:g} |")
    return head + "\n" + "\n".join(rows)


def ablate(a) -> str:
    base_w = json.loads((a.base / "config.json").read_text())["width"]
    variants = {f"shrink {s:g}": dict(shrink=s) for s in (0.2, 0.4, 0.6, 1.0)}
    variants["perturb 0 (shrink 0.4)"] = dict(perturb=0.0)
    variants["norms copied (shrink 0.4)"] = dict(norms="copy")
    rows, logs = [], []
    for label, opts in variants.items():
        res = [run_one(a.work, f"warm-{label.replace(' ', '_')}-s{s}", a.base, 2 * base_w, s, a.steps, a.lr, **opts)
               for s in a.seeds]
        first = [next(r["eval_loss"] for r in x["log"] if "eval_loss" in r) for x in res]
        rows.append(f"| {label} | {spread(first)} | {spread([x['final_eval_loss'] for x in res])} |")
        logs.append(res[0]["log"])
    plot(logs, list(variants), a.out / "ablate.png")
    return ("| variant (2x width) | held-out at step 1 | held-out at the end |\n|---|---|---|\n" + "\n".join(rows))


def rerun_base(a) -> Path:
    """The base retrained with the command that made it (README), which also
    leaves its optimizer state: its weights must be the shipped base's."""
    from safetensors.torch import load_file

    run = a.work / "base-rerun"
    if not (run / "model.safetensors").is_file():
        train(TrainConfig(width=128, depth=4, heads=4, steps=800, batch_size=16, context=128, lr=1e-2, seed=0,
                          eval_every=100, out=str(run)))
    shipped, again = load_file(a.base / "model.safetensors"), load_file(run / "model.safetensors")
    same = shipped.keys() == again.keys() and all(shipped[k].equal(again[k]) for k in shipped)
    print(f"base retrained: {'the same weights as' if same else 'NOT the same weights as'} {a.base}")
    return run


def operators(a) -> str:
    """The operators side by side at 2x width from one base, with the same
    trainer and hyperparameters, and scratch at equal steps and at the warm
    runs' total compute."""
    base_w = json.loads((a.base / "config.json").read_text())["width"]
    w = 2 * base_w
    base = rerun_base(a)
    state = next(base.glob("checkpoint-*")) / "optimizer.pt"
    variants = {"szp (shrink 0.4, noise)": {}, "zero-pad (shrink 1, no noise)": dict(shrink=1.0, perturb=0.0),
                "hyperclone": dict(method="hyperclone"), "hyperclone + grown optimizer state":
                dict(method="hyperclone", optimizer_state=state), "net2net": dict(method="net2net")}
    long = matched_steps(a.base, w, a.steps)
    rows, logs = [], []
    for label, opts in variants.items():
        res = [run_one(a.work, f"warm-{label.split(' (')[0].replace(' ', '_')}-s{s}", base, w, s, a.steps, a.lr,
                       **opts) for s in a.seeds]
        start = [x["log"][0]["eval_loss_start"] for x in res]
        rows.append(f"| {label} | {spread(start)} | {spread([x['final_eval_loss'] for x in res])} |")
        logs.append(res[0]["log"])
    for label, steps in ((f"scratch, {a.steps} steps (equal steps)", a.steps),
                         (f"scratch, {long} steps (equal total compute)", long)):
        res = [run_one(a.work, f"scratch-{steps}steps-s{s}", base, w, s, steps, a.lr) for s in a.seeds]
        rows.append(f"| {label} | {spread([x['log'][0]['eval_loss_start'] for x in res])} | "
                    f"{spread([x['final_eval_loss'] for x in res])} |")
        logs.append(res[0]["log"])
    plot(logs, [*variants, "scratch, equal steps", "scratch, equal compute"], a.out / "operators.png",
         title=f"Growth operators at 2x width ({base_w} -> {w}), seed {a.seeds[0]}", unit="nats per byte")
    return (f"| {base_w} -> {w}, {a.steps} steps | held-out before training | held-out at the end |\n"
            "|---|---|---|\n" + "\n".join(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("experiment", choices=["scale", "lr-sweep", "ablate", "operators"])
    ap.add_argument("--base", type=Path, default=BASE)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--lrs", default="0.001,0.003,0.01,0.03,0.1")
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0])
    ap.add_argument("--out", type=Path, default=Path("docs/results"))
    ap.add_argument("--work", type=Path, default=Path("experiments-work"))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    a.work.mkdir(parents=True, exist_ok=True)
    table = {"scale": scale, "lr-sweep": lr_sweep, "ablate": ablate, "operators": operators}[a.experiment](a)
    (a.out / f"{a.experiment}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
