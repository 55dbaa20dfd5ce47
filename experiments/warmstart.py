"""The paper's main claims at a laptop's scale, with the bundled μP GPT on
the standard library's sources (or any text: --data). Each subcommand writes
its results as a markdown table and a plot under --out (docs/results by
default):

    python experiments/warmstart.py budget    # where growing pays: bases at 5-40 tokens/param, grown vs continued vs scratch
    python experiments/warmstart.py lr-sweep  # μTransfer: best lr at base width, target scratch, target warm, two run lengths
    python experiments/warmstart.py ablate    # shrink in {0.2, 0.4, 0.6, 1.0}; perturb 0 vs 1; norms shrunk vs copied
    python experiments/warmstart.py operators # szp, zero-pad, hyperclone (+ grown optimizer state), net2net, controls

Every comparison gives each contender the same compute (training FLOPs,
counted as 6 x parameters + attention per token): the grown model, the small
model it came from continued instead, and the wide model from scratch given
the base's compute too. Use --seeds for the spread. A finished run in --work
is read back, not redone.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from ws_convert import grow
from ws_convert.demo import BASE
from ws_convert.model import GPTConfig, flops_per_token, param_count, read_config
from ws_convert.train import TrainConfig, plot, train

TOKENS_PER_STEP = 16 * 128  # batch 16, context 128: every run here
SMALL = GPTConfig(vocab_size=256, context=128, width=64, depth=2, heads=2)  # the budget study's base
BUDGETS = (5, 10, 20, 40)  # tokens per parameter the bases are trained to


def trained(work: Path, name: str, steps: int, seed: int, lr: float, data: str | None = None,
            eval_batches: int = 16, **model) -> dict:
    """One run of the trainer into work/name: `init_from=` continues a
    model, else `model` gives the fresh one's width, depth, heads, base_width."""
    return train(TrainConfig(steps=steps, batch_size=16, context=128, lr=lr, seed=seed, data=data,
                             eval_every=max(1, steps // 10), eval_batches=eval_batches, out=str(work / name),
                             **model))


def warm(work: Path, name: str, base: Path, width: int, steps: int, seed: int, lr: float, data: str | None = None,
         eval_batches: int = 16, **grow_options) -> dict:
    """`base` grown to `width` (noise seeded by `seed`) and trained. With an
    `optimizer_state` among the grow options, the run continues it."""
    g = grow(base / "model.safetensors", width, out=work / f"{name}-grown", overwrite=True, seed=seed,
             **grow_options)
    return trained(work, name, steps, seed, lr, data, eval_batches, init_from=str(g.out),
                   resume_optimizer="optimizer_state" in grow_options)


def scratch(work: Path, name: str, like: GPTConfig, steps: int, seed: int, lr: float, data: str | None = None,
            eval_batches: int = 16) -> dict:
    """A fresh model of `like`'s shape (μP base width included)."""
    return trained(work, name, steps, seed, lr, data, eval_batches, width=like.width, depth=like.depth,
                   heads=like.heads, base_width=like.base_width, init_std=like.init_std)


def wider(c: GPTConfig, factor: int) -> GPTConfig:
    """The architecture growing `c` by `factor` in width gives: heads of the same size, the same μP base."""
    return GPTConfig(vocab_size=c.vocab_size, context=c.context, width=factor * c.width, depth=c.depth,
                     heads=factor * c.heads, ffn=factor * c.ffn, base_width=c.base_width, init_std=c.init_std)


def steps_for(flops: float, c: GPTConfig) -> int:
    """Steps of `c` that `flops` of training buy."""
    return round(flops / (TOKENS_PER_STEP * flops_per_token(c)))


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def finals(runs: list[dict]) -> list[float]:
    return [r["final_eval_loss"] for r in runs]


def steps_run(base: Path) -> int:
    return sum(1 for _ in (base / "log.jsonl").open())


def small_base(a, tpp: int) -> tuple[Path, int]:
    """The budget study's base trained to `tpp` tokens per parameter (seed 0), and its steps."""
    steps = round(tpp * param_count(SMALL) / TOKENS_PER_STEP)
    name = f"{a.tag}-base-{tpp}tpp"
    scratch(a.work, name, SMALL, steps, 0, a.lr, a.data)
    return a.work / name, steps


def budget(a) -> str:
    """Where growing pays. Bases of width 64 trained to 5-40 tokens per
    parameter; each gets the same extra compute (--steps steps of the 2x
    model) spent three ways: grow it and train the grown model, continue the
    small model, or train the wide model from scratch given the base's
    compute as well."""
    extra = a.steps * TOKENS_PER_STEP * flops_per_token(wider(SMALL, 2))
    rows, points = [], {}
    bases = {tpp: small_base(a, tpp) for tpp in a.budgets}  # all bases first: lr-sweep reuses them
    for tpp, (base, base_steps) in bases.items():
        base_loss = json.loads((base / "log.jsonl").read_text().splitlines()[-1])["eval_loss"]
        n = steps_for(extra, SMALL)
        small = finals([trained(a.work, f"{a.tag}-{tpp}tpp-small-{n}steps-s{s}", n, s, a.lr, a.data,
                                init_from=str(base)) for s in a.seeds])
        for factor in (2, 4) if tpp in a.four_at else (2,):
            big = wider(SMALL, factor)
            n_warm = steps_for(extra, big)
            n_scratch = steps_for(extra + base_steps * TOKENS_PER_STEP * flops_per_token(SMALL), big)
            grown = [warm(a.work, f"{a.tag}-{tpp}tpp-warm{factor}x{a.method_tag}-{n_warm}steps-s{s}", base, big.width,
                          n_warm, s, a.lr, a.data, method=a.method) for s in a.seeds]
            start = [r["log"][0]["eval_loss_start"] for r in grown]
            wide = finals([scratch(a.work, f"{a.tag}-{tpp}tpp-scratch{factor}x-{n_scratch}steps-s{s}", big,
                                   n_scratch, s, a.lr, a.data) for s in a.seeds])
            # per seed: the grown model's lead over the better of the two other ways to spend the compute
            lead_small = [x - y for x, y in zip(small, finals(grown))]
            lead_scratch = [x - y for x, y in zip(wide, finals(grown))]
            points[(tpp, factor)] = (lead_small, lead_scratch)
            rows.append(f"| {tpp} ({base_steps} steps): {base_loss:.4f} | {factor}x | {n}: {spread(small)} | "
                        f"{n_warm}: {spread(finals(grown))} (step 0: {spread(start)}) | "
                        f"{n_scratch}: {spread(wide)} | {spread(lead_small)} | {spread(lead_scratch)} |")
    budget_plot(points, a)
    return ("| base: tokens/param (steps): held-out | growth | continue small (steps: held-out) | "
            "grown (steps: held-out) | wide scratch, base's compute too (steps: held-out) | "
            "grown's lead over small | grown's lead over scratch |\n|---|---|---|---|---|---|---|\n"
            + "\n".join(rows))


def figure(panels: int = 1):
    """A row of `panels` axes, with matplotlib off-screen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, panels, figsize=(6.5 if panels == 1 else 5 * panels, 4), squeeze=False)


def errorbars(ax, xs: list, samples: list[list[float]], **style) -> None:
    """Means over seeds with their standard deviation."""
    ax.errorbar(xs, [statistics.mean(v) for v in samples],
                yerr=[statistics.stdev(v) if len(v) > 1 else 0 for v in samples], capsize=3, **style)


def save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)


def budget_plot(points: dict, a) -> None:
    """The grown model's lead (nats per byte, mean and spread over seeds)
    against the base's tokens per parameter."""
    fig, axes = figure()
    ax = axes[0][0]
    for factor, marker in ((2, "o"), (4, "s")):
        keys = sorted(k for k in points if k[1] == factor)
        for which, (label, style) in enumerate((("over continuing the small model", "-"),
                                                 ("over wide scratch (total compute)", "--"))):
            if keys:
                errorbars(ax, [k[0] for k in keys], [points[k][which] for k in keys], marker=marker,
                          linestyle=style, label=f"grown {factor}x, lead {label}")
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xticks(list(a.budgets), [str(b) for b in a.budgets])
    ax.minorticks_off()
    ax.set_xlabel("base trained to (tokens per parameter)")
    ax.set_ylabel("held-out lead of the grown model (nats per byte)")
    ax.set_title(f"{a.tag}, {a.method}: width {SMALL.width} + the compute of {a.steps} steps at "
                 f"{2 * SMALL.width}, {len(a.seeds)} seeds", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save(fig, a.out / f"{a.name}.png")


def lr_sweep(a) -> str:
    """μTransfer under warm-starting: the best learning rate at the base
    width from scratch, at twice the width from scratch, and at twice the
    width grown from the budget study's 20 tokens-per-parameter base, after
    each of the run lengths --lengths."""
    lrs = [float(x) for x in a.lrs.split(",")]
    base, _ = small_base(a, 20)
    big = wider(SMALL, 2)
    settings = {
        f"{SMALL.width}, scratch": lambda n, lr, s: scratch(a.work, f"{a.tag}-lr{lr:g}-{n}steps-scratch{SMALL.width}-s{s}",
                                                          SMALL, n, s, lr, a.data),
        f"{big.width}, scratch": lambda n, lr, s: scratch(a.work, f"{a.tag}-lr{lr:g}-{n}steps-scratch{big.width}-s{s}",
                                                         big, n, s, lr, a.data),
        f"{big.width}, warm": lambda n, lr, s: warm(a.work, f"{a.tag}-lr{lr:g}-{n}steps-warm{big.width}-s{s}", base,
                                                    big.width, n, s, lr, a.data)}
    table = {(label, n, lr): finals([run(n, lr, s) for s in a.seeds])
             for n in a.lengths for label, run in settings.items() for lr in lrs}
    fig, axes = figure(len(a.lengths))
    for ax, n in zip(axes[0], a.lengths):
        for label in settings:
            errorbars(ax, lrs, [table[(label, n, lr)] for lr in lrs], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel(f"held-out after {n} steps (nats per byte)")
        ax.set_title(f"{n} steps, {len(a.seeds)} seeds")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    save(fig, a.out / f"{a.name}.png")
    head = ("| width, start | steps | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | best |\n|---|---|"
            + "---|" * (len(lrs) + 1))
    rows = []
    for n in a.lengths:
        for label in settings:
            means = [statistics.mean(table[(label, n, lr)]) for lr in lrs]
            rows.append(f"| {label} | {n} | " + " | ".join(spread(table[(label, n, lr)]) for lr in lrs)
                        + f" | {lrs[means.index(min(means))]:g} |")
    return head + "\n" + "\n".join(rows)


def ablate(a) -> str:
    base_w = read_config(a.base / "model.safetensors").width
    variants = {f"shrink {s:g}": dict(shrink=s) for s in (0.2, 0.4, 0.6, 1.0)}
    variants["perturb 0 (shrink 0.4)"] = dict(perturb=0.0)
    variants["norms copied (shrink 0.4)"] = dict(norms="copy")
    rows, logs = [], []
    for label, opts in variants.items():
        res = [warm(a.work, f"warm-{label.replace(' ', '_')}-s{s}", a.base, 2 * base_w, a.steps, s, a.lr,
                    eval_batches=8, **opts) for s in a.seeds]
        first = [next(r["eval_loss"] for r in x["log"] if "eval_loss" in r) for x in res]
        rows.append(f"| {label} | {spread(first)} | {spread(finals(res))} |")
        logs.append(res[0]["log"])
    plot(logs, list(variants), a.out / f"{a.name}.png")
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
    trainer and hyperparameters; against them, scratch at equal steps and at
    the warm runs' total compute, and the base continued for the warm runs'
    compute."""
    base = rerun_base(a)
    small = read_config(base / "model.safetensors")
    big = wider(small, 2)
    state = next(base.glob("checkpoint-*")) / "optimizer.pt"
    variants = {"szp (shrink 0.4, noise)": {}, "zero-pad (shrink 1, no noise)": dict(shrink=1.0, perturb=0.0),
                "hyperclone": dict(method="hyperclone"), "hyperclone + grown optimizer state":
                dict(method="hyperclone", optimizer_state=state), "net2net": dict(method="net2net")}
    extra = a.steps * TOKENS_PER_STEP * flops_per_token(big)
    long = steps_for(extra + steps_run(base) * TOKENS_PER_STEP * flops_per_token(small), big)
    rows, logs = [], []
    for label, opts in variants.items():
        res = [warm(a.work, f"warm-{label.split(' (')[0].replace(' ', '_')}-s{s}", base, big.width, a.steps, s,
                    a.lr, eval_batches=8, **opts) for s in a.seeds]
        rows.append(f"| {label} | {spread([x['log'][0]['eval_loss_start'] for x in res])} | {spread(finals(res))} |")
        logs.append(res[0]["log"])
    n = steps_for(extra, small)
    controls = {f"scratch, {a.steps} steps (equal steps)":
                lambda s: scratch(a.work, f"scratch-{a.steps}steps-s{s}", big, a.steps, s, a.lr, eval_batches=8),
                f"scratch, {long} steps (equal total compute)":
                lambda s: scratch(a.work, f"scratch-{long}steps-s{s}", big, long, s, a.lr, eval_batches=8),
                f"base continued, {n} steps at width {small.width} (equal compute)":
                lambda s: trained(a.work, f"small-{n}steps-s{s}", n, s, a.lr, eval_batches=8, init_from=str(base))}
    for label, run in controls.items():
        res = [run(s) for s in a.seeds]
        rows.append(f"| {label} | {spread([x['log'][0]['eval_loss_start'] for x in res])} | {spread(finals(res))} |")
        logs.append(res[0]["log"])
    plot(logs, [*variants, "scratch, equal steps", "scratch, equal compute", "base continued, equal compute"],
         a.out / f"{a.name}.png", unit="nats per byte",
         title=f"Growth operators at 2x width ({small.width} -> {big.width}), seed {a.seeds[0]}")
    return (f"| {small.width} -> {big.width}, {a.steps} steps | held-out before training | held-out at the end |\n"
            "|---|---|---|\n" + "\n".join(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("experiment", choices=["budget", "lr-sweep", "ablate", "operators"])
    ap.add_argument("--base", type=Path, default=BASE, help="ablate, operators: the model to grow")
    ap.add_argument("--data", help="text file or folder to train on (default: the standard library)")
    ap.add_argument("--steps", type=int, default=200,
                    help="warm runs' steps (budget: the extra compute, in steps of the 2x model)")
    ap.add_argument("--budgets", type=lambda s: [int(x) for x in s.split(",")], default=list(BUDGETS),
                    help="budget: tokens per parameter the bases are trained to")
    ap.add_argument("--four-at", type=lambda s: [int(x) for x in s.split(",") if x], default=[20],
                    help="budget: the budgets also grown 4x")
    ap.add_argument("--method", default="szp", help="budget: the growth operator (grow --method)")
    ap.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=[80, 200],
                    help="lr-sweep: run lengths in steps")
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--lrs", default="0.001,0.003,0.01,0.03,0.1")
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0])
    ap.add_argument("--out", type=Path, default=Path("docs/results"))
    ap.add_argument("--work", type=Path, default=Path("experiments-work"))
    a = ap.parse_args()
    a.tag = Path(a.data).name if a.data else "stdlib"
    a.method_tag = "" if a.method == "szp" else f"-{a.method}"  # in the names of its runs and results
    a.name = {"budget": f"budget-{a.tag}-{a.steps}steps{a.method_tag}", "lr-sweep": f"lr-sweep-{a.tag}"}.get(a.experiment,
                                                                                                a.experiment)
    a.out.mkdir(parents=True, exist_ok=True)
    a.work.mkdir(parents=True, exist_ok=True)
    table = {"budget": budget, "lr-sweep": lr_sweep, "ablate": ablate, "operators": operators}[a.experiment](a)
    (a.out / f"{a.name}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
