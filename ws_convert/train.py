"""The reference μP trainer: train the bundled μP GPT from scratch or from a
grown checkpoint, with the same hyperparameters.

One process on CPU or one GPU (bf16 autocast, optional torch.compile), or
several through `torchrun` (DistributedDataParallel; gloo on CPU, nccl on
GPU). Logs go to the terminal and `log.jsonl`; `--out` receives
`model.safetensors`, `config.json`, `optimizer.pt` (for resuming), `log.jsonl`
and `loss.png`. A run whose `--out` already holds a checkpoint resumes there
and continues the same loss trajectory. Training from a grown checkpoint
(`init_from`) starts the optimizer fresh, as in the paper.
"""

from __future__ import annotations

import gc
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import data as data_mod
from .errors import WsConvertError
from .model import GPT, GPTConfig, build, load, save


@dataclass(frozen=True)
class TrainConfig:
    width: int = 128
    depth: int = 4
    heads: int = 4
    base_width: int = 0  # 0: the width
    steps: int = 200
    batch_size: int = 16
    context: int = 128
    lr: float = 1e-2
    schedule: str = "wsd"  # wsd (warmup, constant, linear cool-down) or cosine
    warmup: int = 0  # steps; 0: 5% of the run
    cooldown: float = 0.2  # fraction of the run (wsd)
    weight_decay: float = 0.0
    init_std: float = 0.02
    data: str | None = None  # None: the standard library's sources
    out: str = "ws-convert-run"
    init_from: str | None = None
    device: str = "auto"
    compile: bool = False
    seed: int = 0
    eval_every: int = 50
    eval_batches: int = 8
    checkpoint_every: int = 0  # 0: only at the end


# Settings a resumed run may change: they touch logging and speed, not the trajectory.
FREE_ON_RESUME = ("out", "device", "compile", "eval_every", "eval_batches", "checkpoint_every")
MODEL_SETTINGS = ("width", "depth", "heads", "base_width", "init_std")  # unused when init_from gives the model


def _trajectory(settings: dict) -> dict:
    """The settings that decide a run's losses, which a resumed run must repeat."""
    ignored = FREE_ON_RESUME + (MODEL_SETTINGS if settings.get("init_from") else ())
    return {k: v for k, v in settings.items() if k not in ignored}


def _check_resume(out: Path, saved: dict, c: TrainConfig) -> None:
    before, now = _trajectory(saved), _trajectory(asdict(c))
    changed = [f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(before.keys() | now.keys())
               if before.get(k) != now.get(k)]
    if changed:
        raise WsConvertError(f"{out}: holds a run with other settings ({', '.join(changed)}); resume it with "
                             "the same settings, or train into a new --out")


def lr_at(step: int, c: TrainConfig) -> float:
    warmup = c.warmup or max(1, c.steps // 20)
    if step < warmup:
        return c.lr * (step + 1) / warmup
    if c.schedule == "cosine":
        t = (step - warmup) / max(1, c.steps - warmup)
        return c.lr * 0.5 * (1 + math.cos(math.pi * t))
    cool = int(c.steps * c.cooldown)
    if step >= c.steps - cool:
        return c.lr * (c.steps - step) / max(1, cool)
    return c.lr


class _Dist:
    """torchrun's environment, or a single process. As a context manager it
    tears down the process group it opened: left to interpreter exit, gloo's
    threads can be torn down unjoined, aborting a rank that had finished."""

    def __init__(self, device: torch.device) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self._owned = self.world > 1 and not torch.distributed.is_initialized()
        if self._owned:
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def __enter__(self) -> "_Dist":
        return self

    def __exit__(self, *exc) -> None:
        if self._owned:
            gc.collect()  # DDP's reducer sits in a reference cycle and holds the group
            torch.distributed.destroy_process_group()

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return t.item() / self.world


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and "LOCAL_RANK" in os.environ:
        name = f"cuda:{os.environ['LOCAL_RANK']}"
    return torch.device(name)


@torch.no_grad()
def evaluate(model: torch.nn.Module, tokens: torch.Tensor, c: TrainConfig, device: torch.device,
             dist: _Dist) -> float:
    model.eval()
    losses = []
    for i in range(c.eval_batches):
        x, y = data_mod.batch(tokens, c.batch_size, c.context, seed=c.seed + 7919, step=i,
                              rank=dist.rank, world=dist.world)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(x.to(device))
        losses.append(F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten()).item())
    model.train()
    return dist.mean(sum(losses) / len(losses))


def _initial_model(c: TrainConfig, vocab: int) -> GPT:
    if c.init_from:
        model = load(c.init_from)
        if model.config.vocab_size != vocab:
            raise WsConvertError(f"{c.init_from}: vocabulary {model.config.vocab_size} does not match the "
                                 f"data's {vocab}")
        return model
    torch.manual_seed(c.seed)
    return build(GPTConfig(vocab_size=vocab, context=c.context, width=c.width, depth=c.depth, heads=c.heads,
                           base_width=c.base_width, init_std=c.init_std))


def train(c: TrainConfig, progress=None) -> dict:
    """Train; returns the final metrics. `progress(step, total, record)` is
    called after every logged step."""
    if c.schedule not in ("wsd", "cosine"):
        raise WsConvertError(f"--schedule must be wsd or cosine, not {c.schedule!r}")
    device = _device(c.device)
    with _Dist(device) as dist:
        return _train(c, progress, device, dist)


def _train(c: TrainConfig, progress, device: torch.device, dist: _Dist) -> dict:
    from mup import MuAdamW

    ds = data_mod.load(c.data)
    out = Path(c.out)
    resume = (out / "optimizer.pt").is_file() and (out / "model.safetensors").is_file()
    if resume:
        state = torch.load(out / "optimizer.pt", map_location=device, weights_only=True)
        _check_resume(out, state["train"], c)
    model = load(out / "model.safetensors") if resume else _initial_model(c, ds.vocab_size)
    model.to(device)
    optimizer = MuAdamW(model.parameters(), lr=c.lr, betas=(0.9, 0.95), weight_decay=c.weight_decay)
    start, log = 0, []
    if resume:
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line]
        log = [r for r in log if r["step"] < start]
    net = model
    if dist.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if c.compile:
        net = torch.compile(net)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))  # drop steps being redone
    base_lrs = [g["lr"] for g in optimizer.param_groups]  # MuAdamW scales each group's lr

    def checkpoint(step: int) -> None:
        if not dist.main:
            return
        save(model, out / "model.safetensors")
        torch.save({"optimizer": optimizer.state_dict(), "step": step, "train": asdict(c)}, out / "optimizer.pt")

    t_last, tokens_since = time.perf_counter(), 0
    for step in range(start, c.steps):
        scale = lr_at(step, c) / c.lr
        for g, base in zip(optimizer.param_groups, base_lrs):
            g["lr"] = base * scale
        x, y = data_mod.batch(ds.train, c.batch_size, c.context, c.seed, step, dist.rank, dist.world)
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = net(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        tokens_since += c.batch_size * c.context
        last = step == c.steps - 1
        record = {"step": step, "loss": dist.mean(loss.item()), "lr": lr_at(step, c)}
        if (step + 1) % c.eval_every == 0 or last or step == 0:
            record["eval_loss"] = evaluate(net, ds.val, c, device, dist)
        now = time.perf_counter()
        record["tokens_per_s"] = tokens_since / max(now - t_last, 1e-9)
        t_last, tokens_since = now, 0
        log.append(record)
        if dist.main:
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        if progress and dist.main:
            progress(step + 1, c.steps, record)
        if c.checkpoint_every and (step + 1) % c.checkpoint_every == 0 and not last:
            checkpoint(step + 1)
    checkpoint(c.steps)
    if dist.main:
        plot([log], [out.name], out / "loss.png")
    evals = [r["eval_loss"] for r in log if "eval_loss" in r]
    return {"steps": c.steps, "final_loss": log[-1]["loss"] if log else None,
            "final_eval_loss": evals[-1] if evals else None, "log": log}


def plot(logs: list[list[dict]], labels: list[str], path: str | Path) -> None:
    """Loss curves (train faint, held-out bold) of one or several runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for log, label in zip(logs, labels):
        line, = ax.plot([r["step"] for r in log], [r["loss"] for r in log], alpha=0.3)
        ev = [(r["step"], r["eval_loss"]) for r in log if "eval_loss" in r]
        ax.plot(*zip(*ev), marker="o", color=line.get_color(), label=f"{label} (held-out)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["TrainConfig", "train", "plot", "lr_at"]
