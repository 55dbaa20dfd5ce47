"""The reference μP trainer: train the bundled μP GPT, or a natively grown
Hugging Face family in its own transformers class (hf_model.py), from
scratch or from a grown checkpoint, with the same hyperparameters. One
loop serves both; a model source says how its models are built, read and
written.

One process on CPU or one GPU (bf16 autocast, optional torch.compile), or
several through `torchrun` (DistributedDataParallel; gloo on CPU, nccl on
GPU). Logs go to the terminal and `log.jsonl`; `--out` receives the model
(`model.safetensors`, `config.json`; for a family also `base_shapes.bsh` and
the tokenizer files, so `out` is a Hugging Face directory that `grow` takes
as is), `log.jsonl`, `loss.png` and the training checkpoint `checkpoint-N/`
(N the step it holds), from which a run resumes and continues the same loss
trajectory. Training from a grown
checkpoint (`init_from`) starts the optimizer fresh, as in the paper, or
continues the optimizer state grown beside it (`resume_optimizer`).

A training checkpoint is the model's files and `optimizer.pt` written into
a hidden temporary directory, flushed, and renamed to `checkpoint-N` in one
step, so it appears whole or not at all; both files record N (the
safetensors `__metadata__["step"]`, the optimizer state's "step") and a pair
that disagrees is refused. Only then is the run's `model.safetensors`
replaced, file by file, by hard links to the checkpoint's, and older
checkpoints removed.
"""

from __future__ import annotations

import gc
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from . import data as data_mod
from . import hf_model, sharding
from .errors import CheckpointError, OutputError, WsConvertError
from .model import MODEL_TYPE, GPTConfig, build, config_json, load, save_weights
from .optimizer_state import load_into, parameter_names
from .reader import open_checkpoint, read_header
from .writer import OPTIMIZER_NAME, _fsync_path, _pid_alive, _remove, _rename_noreplace, output_dir, overlap

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class TrainConfig:
    arch: str | None = None  # a Hugging Face family to build; None: the bundled GPT
    width: int = 128
    depth: int = 4
    heads: int = 4
    kv_heads: int = 0  # 0: as many as heads
    ffn: int = 0  # 0: 4 x width
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
    tokenizer: str | None = None  # a tokenizer directory; None: the --init-from directory's, if it has one
    out: str = "ws-convert-run"
    init_from: str | None = None
    device: str = "auto"
    compile: bool = False
    fsdp: bool = False  # shard with FSDP2 across torchrun's processes (else DistributedDataParallel)
    seed: int = 0
    eval_every: int = 50
    eval_batches: int = 8
    checkpoint_every: int = 0  # 0: only at the end
    overwrite: bool = False  # train into an --out holding another model's files
    resume_optimizer: bool = False  # with init_from: continue the optimizer state grown beside it


# Held-out windows are the dataset's, not the run's: runs of any seed are scored on the same data.
EVAL_SEED = 7919

# Settings a resumed run may change: they touch logging and speed, not the trajectory.
FREE_ON_RESUME = ("out", "device", "compile", "eval_every", "eval_batches", "checkpoint_every", "overwrite")
# unused when init_from gives the model
MODEL_SETTINGS = ("arch", "width", "depth", "heads", "kv_heads", "ffn", "base_width", "init_std")


def _trajectory(settings: dict) -> dict:
    """The settings that decide a run's losses, which a resumed run must repeat."""
    ignored = FREE_ON_RESUME + (MODEL_SETTINGS if settings.get("init_from") else ())
    return {k: v for k, v in settings.items() if k not in ignored}


def _check_resume(out: Path, saved: dict, c: TrainConfig) -> None:
    before, now = _trajectory({**asdict(TrainConfig()), **saved}), _trajectory(asdict(c))  # older runs lack newer keys
    changed = [f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(before.keys() | now.keys())
               if before.get(k) != now.get(k)]
    if changed:
        raise WsConvertError(f"{out}: holds a run with other settings ({', '.join(changed)}); resume it with "
                             "the same settings, or train into a new --out")


MODEL_NAME, CONFIG_NAME = "model.safetensors", "config.json"
CHECKPOINT = re.compile(r"checkpoint-([0-9]+)")
# What a run's --out holds only if it is that run's (or replaced with --overwrite): the names the
# trainer writes over, and any other model's weights.
MODEL_FILE = re.compile(r".*\.(safetensors|safetensors\.index\.json|bin|pt|pth|ckpt|bsh)|config\.json|loss\.png|log\.jsonl")
LEFTOVER = re.compile(r"\.(checkpoint-[0-9]+|[^/]+)\.partial-([0-9]+)")


def _check_out(out: Path, c: TrainConfig) -> Path | None:
    """Where a run may write, and the checkpoint it resumes from, if any.

    "A run of this trainer" is an `out` holding a training checkpoint
    (`checkpoint-N/`). Without one, `out` is refused if it holds another
    model's files (unless `overwrite`); with `init_from`, it may not be,
    contain or sit inside the source, whatever `overwrite` says.
    """
    if c.init_from and Path(c.init_from).exists():  # a missing source is refused when it is loaded
        with open_checkpoint(c.init_from) as ckpt:
            sources = [Path(c.init_from).resolve(), *(f.resolve() for f in ckpt.files)]
        target = out.resolve()
        if overlap(target, sources) is not None:
            raise OutputError(f"refusing to train into {out}: it would overwrite or sit inside the source "
                              f"{c.init_from}")
    if not out.exists():
        return None
    if not out.is_dir():
        raise OutputError(f"{out} exists and is not a directory")
    found = [(int(m.group(1)), p) for p in out.iterdir() if (m := CHECKPOINT.fullmatch(p.name)) and p.is_dir()]
    if found:
        return max(found)[1]
    theirs = sorted(p.name for p in out.iterdir()
                    if MODEL_FILE.fullmatch(p.name) or data_mod.is_tokenizer_file(p.name))
    if {MODEL_NAME, OPTIMIZER_NAME} <= set(theirs) and not c.overwrite:
        raise OutputError(f"{out}: holds a run in the layout of ws-convert before 0.2.0 ({MODEL_NAME} beside "
                          f"{OPTIMIZER_NAME}), which cannot be resumed; keep its weights with "
                          f"--init-from {out} --out NEW, or pass --overwrite to replace them")
    if theirs and not c.overwrite:
        raise OutputError(f"{out}: holds {', '.join(theirs)} but no training checkpoint of this trainer "
                          "(checkpoint-N/); pass --overwrite to replace them, or choose another --out")
    return None


class _Source:
    """How the run's kind of model is read from and written into a
    directory: the bundled GPT (one safetensors file carrying its config), or
    a Hugging Face family (hf_model.py), whose directories also carry the
    base shapes and the tokenizer files."""

    def __init__(self, family: bool, tokenizer: Path | None) -> None:
        self.family, self.tokenizer = family, tokenizer

    def read(self, path: Path) -> torch.nn.Module:
        if self.family:
            return hf_model.load(path)
        return load(path / MODEL_NAME if path.is_dir() else path)

    def write(self, model: torch.nn.Module, directory: Path, metadata: dict[str, str],
              state: dict | None = None) -> None:
        """The model's files; `state` stands for its own state where it is sharded."""
        if not self.family:
            save_weights(model, directory / MODEL_NAME, metadata, state)
            (directory / CONFIG_NAME).write_text(config_json(model.config))
            return
        hf_model.write(model, directory, metadata, state)
        for path in data_mod.tokenizer_files(self.tokenizer) if self.tokenizer is not None else ():
            shutil.copyfile(path, directory / path.name)


def _is_family(path: Path) -> bool:
    """Whether a model (directory, or file with config.json beside it) is a
    Hugging Face family rather than the bundled GPT."""
    config = (path if path.is_dir() else path.parent) / CONFIG_NAME
    try:
        return json.loads(config.read_text()).get("model_type") != MODEL_TYPE
    except (OSError, ValueError, AttributeError):
        return False


def _tokenizer_dir(c: TrainConfig, family: bool) -> Path | None:
    """--tokenizer, else the tokenizer that came with --init-from's model."""
    if c.tokenizer:
        return Path(c.tokenizer)
    if family and c.init_from and data_mod.tokenizer_files(Path(c.init_from)):
        return Path(c.init_from)
    return None


def _read_checkpoint(path: Path, device: torch.device, source: _Source) -> tuple[torch.nn.Module, dict]:
    """The model and optimizer state of `checkpoint-N`, refused unless both files record step N."""
    for name in (MODEL_NAME, OPTIMIZER_NAME):
        if not (path / name).is_file():
            raise CheckpointError(path, f"incomplete training checkpoint: no {name}")
    try:
        state = torch.load(path / OPTIMIZER_NAME, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises many kinds for a damaged or foreign file
        raise CheckpointError(path / OPTIMIZER_NAME, f"cannot be read ({type(exc).__name__})") from None
    if not isinstance(state, dict) or not {"optimizer", "step", "train"} <= state.keys():
        raise CheckpointError(path / OPTIMIZER_NAME, "not an optimizer state written by this trainer")
    steps = {MODEL_NAME: read_header(path / MODEL_NAME)[1].get("step"), OPTIMIZER_NAME: state["step"]}
    step = str(int(CHECKPOINT.fullmatch(path.name).group(1)))
    if any(str(s) != step for s in steps.values()):
        shown = ", ".join(f"{name} step {s}" for name, s in steps.items())
        raise CheckpointError(path, f"a checkpoint of step {step} whose files record {shown}; refusing to resume "
                                    "from it")
    return source.read(path), state


def _write_checkpoint(out: Path, model: torch.nn.Module, state: dict, source: _Source,
                      weights: dict | None = None) -> Path:
    """`out/checkpoint-N` (N = state["step"]), complete or not at all."""
    final = out / f"checkpoint-{state['step']}"
    tmp = out / f".{final.name}.partial-{os.getpid()}"
    _remove(tmp)
    tmp.mkdir()
    try:
        source.write(model, tmp, {"step": str(state["step"])}, weights)
        torch.save(state, tmp / OPTIMIZER_NAME)
        for path in (*sorted(tmp.iterdir()), tmp):
            _fsync_path(path)
        _rename_noreplace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise
    _fsync_path(out)
    return final


def _replace(target: Path, fill: Callable[[Path], None]) -> None:
    """Replace `target` in one rename by what `fill` writes to a temporary path."""
    tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    fill(tmp)
    _fsync_path(tmp)
    os.replace(tmp, target)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links
        shutil.copyfile(src, dst)


def _publish(out: Path, ckpt: Path) -> None:
    """Make the checkpoint's model the run's model (every file but the
    optimizer state, each replaced by a hard link in one rename), then drop
    older checkpoints and the leftovers of runs that died while writing."""
    for src in sorted(ckpt.iterdir()):
        target = out / src.name
        if src.name == OPTIMIZER_NAME or (target.exists() and os.path.samefile(target, src)):
            continue
        _replace(target, lambda tmp: _link_or_copy(src, tmp))
    _fsync_path(out)
    stale = [p for p in out.iterdir() if (CHECKPOINT.fullmatch(p.name) and p.is_dir() and p != ckpt)
             or ((m := LEFTOVER.fullmatch(p.name)) and not _pid_alive(int(m.group(2))))]
    for p in stale:
        if p.is_dir():
            _remove(p)
        else:
            p.unlink()


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
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)  # FSDP places shards on the current device
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
        x, y = data_mod.batch(tokens, c.batch_size, c.context, seed=EVAL_SEED, step=i,
                              rank=dist.rank, world=dist.world)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(x.to(device))
        losses.append(F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten()).item())
    model.train()
    return dist.mean(sum(losses) / len(losses))


def _new_model(c: TrainConfig, vocab: int, source: _Source) -> torch.nn.Module:
    """A fresh μP model: of the family --arch names, or the bundled GPT."""
    if c.arch:
        return hf_model.build(c.arch, width=c.width, depth=c.depth, heads=c.heads, kv_heads=c.kv_heads or None,
                              ffn=c.ffn or None, vocab=vocab, context=c.context, base_width=c.base_width,
                              init_std=c.init_std, seed=c.seed, tokens=_special_tokens(source.tokenizer))
    try:
        config = GPTConfig(vocab_size=vocab, context=c.context, width=c.width, depth=c.depth, heads=c.heads,
                           ffn=c.ffn, base_width=c.base_width, init_std=c.init_std)
    except ValueError as exc:
        raise WsConvertError(f"--width/--depth/--heads/--base-width: {exc}") from None
    torch.manual_seed(c.seed)
    return build(config)


def _special_tokens(tokenizer: Path | None) -> dict:
    """The special token ids a new family config takes from its tokenizer
    (none for byte-level data, whose ids are the bytes)."""
    names = ("bos_token_id", "eos_token_id", "pad_token_id")
    if tokenizer is None:
        return dict.fromkeys(names)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer)
    return {n: getattr(tok, n) for n in names}


def train(c: TrainConfig, progress=None) -> dict:
    """Train; returns the final metrics. `progress(step, total, record)` is
    called after every logged step."""
    if c.schedule not in ("wsd", "cosine"):
        raise WsConvertError(f"--schedule must be wsd or cosine, not {c.schedule!r}")
    if c.steps < 1:
        raise WsConvertError(f"--steps must be at least 1, not {c.steps}")
    if c.fsdp and int(os.environ.get("WORLD_SIZE", "1")) < 2:
        raise WsConvertError("--fsdp shards across the processes of torchrun: run it as torchrun "
                             "--nproc_per_node N -m ws_convert.cli train ... --fsdp")
    if c.resume_optimizer and (not c.init_from or c.fsdp):
        raise WsConvertError("--resume-optimizer continues the optimizer state grown beside --init-from; it needs "
                             "--init-from and does not take --fsdp yet")
    device = _device(c.device)
    with _Dist(device) as dist:
        return _train(c, progress, device, dist)


def _train(c: TrainConfig, progress, device: torch.device, dist: _Dist) -> dict:
    from mup import MuAdamW

    out = output_dir(c.out)
    latest = _check_out(out, c)
    family = bool(c.arch) or bool(c.init_from and _is_family(Path(c.init_from)))
    source = _Source(family, _tokenizer_dir(c, family))
    model = None
    if latest:
        model, state = _read_checkpoint(latest, device, source)
        _check_resume(out, state["train"], c)
    elif c.init_from:
        model = source.read(Path(c.init_from))
    # a family's vocabulary decides whether byte data suits it; the bundled GPT's is the data's
    ds = data_mod.load(c.data, tokenizer=source.tokenizer,
                       vocab_size=model.config.vocab_size if model is not None and family else None)
    if model is None:
        model = _new_model(c, ds.vocab_size, source)
    elif not latest and ((model.config.vocab_size < ds.vocab_size) if family
                         else (model.config.vocab_size != ds.vocab_size)):
        raise WsConvertError(f"{c.init_from}: vocabulary {model.config.vocab_size} does not hold the data's "
                             f"{ds.vocab_size}")
    model.to(device)
    optimizer = MuAdamW(model.parameters(), lr=c.lr, betas=(0.9, 0.95), weight_decay=c.weight_decay)
    if c.resume_optimizer and not latest:
        load_into(optimizer, model, Path(c.init_from) / OPTIMIZER_NAME)
    net = model
    if c.fsdp:
        optimizer = sharding.shard(model, optimizer)
    elif dist.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    start, log = 0, []
    if latest:
        if c.fsdp:
            sharding.load_optimizer(model, optimizer, state["optimizer"])
        else:
            optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        lines = (out / "log.jsonl").read_text().splitlines() if (out / "log.jsonl").is_file() else []
        log = [r for r in map(json.loads, filter(None, lines)) if r["step"] < start]
    if c.compile:
        net = torch.compile(net)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))  # drop steps being redone
    base_lrs = [g["lr"] for g in optimizer.param_groups]  # MuAdamW scales each group's lr

    def checkpoint(step: int) -> None:
        nonlocal latest
        if step > start:  # else the run was finished: only its publishing may be missing
            weights, opt_state = sharding.full_state(model, optimizer) if c.fsdp else (None, optimizer.state_dict())
            if dist.main:
                order = parameter_names(optimizer, model)  # after sharding replaced the parameters
                latest = _write_checkpoint(out, model, {"optimizer": opt_state, "param_names": order, "step": step,
                                                        "train": asdict(c)}, source, weights)
        if dist.main:
            _publish(out, latest)

    # a fresh run's held-out loss before its first update: for a warm start, the grown model itself
    initial = evaluate(net, ds.val, c, device, dist) if start == 0 else None
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
        if step == 0 and initial is not None:
            record["eval_loss_start"] = initial
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


def loss_figure(logs: list[list[dict]], labels: list[str], *, title: str | None = None,
                unit: str = "nats per token", compute: list[tuple[float, float]] | None = None) -> Figure:
    """Loss curves of one or several runs, every line in the legend: the
    training batches' faint, the held-out bold. Steps count updates from 1; a
    held-out loss taken before the first update (a warm start's: the grown
    model itself) is the held-out curve's first point, at step 0. With
    `compute`, one (FLOPs before the run, FLOPs per step) per run, the x axis
    is training compute instead, so runs of different widths line up fairly."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (log, label) in enumerate(zip(logs, labels)):
        at, per = compute[i] if compute else (0.0, 1.0)
        x = lambda step: at + step * per  # noqa: E731  (step: updates done)
        line, = ax.plot([x(r["step"] + 1) for r in log], [r["loss"] for r in log], alpha=0.3,
                        label=f"{label}, training batches")
        ev = [(x(0), log[0]["eval_loss_start"])] if log and "eval_loss_start" in log[0] else []
        ev += [(x(r["step"] + 1), r["eval_loss"]) for r in log if "eval_loss" in r]
        if ev:
            ax.plot(*zip(*ev), marker="o", markersize=3 if compute else 6, color=line.get_color(),
                    label=f"{label}, held-out")
    if title:
        ax.set_title(title)
    ax.set_xlabel("training compute (FLOPs)" if compute else "step")
    ax.set_ylabel(f"loss ({unit})")
    ax.legend(fontsize=8 if compute else None)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot(logs: list[list[dict]], labels: list[str], path: str | Path, *, title: str | None = None,
         unit: str = "nats per token", compute: list[tuple[float, float]] | None = None) -> None:
    """loss_figure, saved as a PNG."""
    fig = loss_figure(logs, labels, title=title, unit=unit, compute=compute)
    import matplotlib.pyplot as plt  # after loss_figure chose the backend

    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["TrainConfig", "train", "plot", "loss_figure", "lr_at"]
