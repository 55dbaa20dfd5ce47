"""The `ws-convert` command line. Errors become one line and an exit code:
0 success, 1 failure while running (or Ctrl-C), 2 bad input or usage, 143
stopped by SIGTERM (grow, after removing what it had written)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import click

from ._version import __version__
from .families import NAMES as ARCH_NAMES
from .errors import PlanError, WsConvertError, printable
from .plan import DEPTH_POLICIES, HEAD_POLICIES, NORM_POLICIES, GrowthOptions, Plan, Source, TensorPlan
from .operators import METHODS
from .szp_spec import Normal


def fail_cleanly(fn):
    """Our own errors become `ws-convert: error: ...` and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except WsConvertError as exc:
            click.echo(f"ws-convert: error: {printable(str(exc))}", err=True)
            sys.exit(2)
    return wrapper


def source_options(fn):
    """Flags that say how to read the source."""
    for option in reversed([
        click.option("--arch", type=click.Choice(ARCH_NAMES), help="Architecture, when it cannot be detected."),
        click.option("--num-heads", type=click.IntRange(1), help="Attention heads, when no config says."),
        click.option("--num-kv-heads", type=click.IntRange(1), help="Key/value heads, when no config says."),
        click.option("--allow-pickle", is_flag=True, help="Read pickle (.bin) checkpoints (weights only)."),
        click.option("--revision", help="The branch, tag or commit of a Hugging Face Hub repo id SRC."),
    ]):
        fn = option(fn)
    return fn


@dataclass(frozen=True)
class Multiple:
    """A size given as a multiple of the source's (`--to-width 2x`), known
    only once the source is read."""

    factor: Fraction
    text: str  # as given, for messages

    def of(self, size: int, flag: str, what: str) -> int:
        value = self.factor * size
        if value.denominator != 1:
            raise PlanError(f"{flag} {self.text} of the source's {what} {size} is {float(value):g}, not a whole "
                            f"number; give the {what} itself or another multiple")
        return int(value)


class SizeType(click.ParamType):
    """A positive whole size, or a multiple of the source's size (`2x`, `1.5x`)."""

    name = "N|Kx"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int | Multiple:
        if isinstance(value, (int, Multiple)):
            return value
        text = str(value).strip()
        try:
            if text[:-1] and text[-1] in "xX":
                if (factor := Fraction(text[:-1])) > 0:
                    return Multiple(factor, text)
            elif (n := int(text)) >= 1:
                return n
        except ValueError:
            pass
        self.fail(f"{text!r} is neither a positive whole number nor a positive multiple like 2x", param, ctx)


def growth_options(fn):
    """The knobs of a growth, shared by `grow` and `plan` (docs/DESIGN.md section 7)."""
    for option in reversed([
        click.option("--to-width", type=SizeType(),
                     help="Target width (d_model), or a multiple of the source's like 2x "
                          "(default: the source width, growing only --to-depth)."),
        click.option("--to-depth", type=SizeType(),
                     help="Target number of layers, or a multiple of the source's like 2x."),
        click.option("--to-ffn", type=click.IntRange(1), help="Target MLP size (default: scales with width)."),
        click.option("--to-experts", type=click.IntRange(2),
                     help="Upcycle a dense model into its family's mixture of experts with this many experts."),
        click.option("--experts-top-k", type=click.IntRange(1), default=2, show_default=True,
                     help="Experts each token is routed to (with --to-experts)."),
        click.option("--head-policy", type=click.Choice(HEAD_POLICIES), default="heads", show_default=True,
                     help="Add heads (keep head_dim) or widen each head."),
        click.option("--depth-policy", type=click.Choice(DEPTH_POLICIES), default="stack", show_default=True,
                     help="How new layers are filled: stack repeats the layer stack, interleave repeats each "
                          "layer, identity adds copied layers whose output projections are zero (the function "
                          "is kept), init starts them at the init; see docs/DESIGN.md."),
        click.option("--method", type=click.Choice(METHODS), default="szp", show_default=True,
                     help="The growth operator: szp (shrink, zero-pad, perturb), hyperclone (copies of every "
                          "unit, fan-in divided: the function is kept) or net2net (new units copy random old "
                          "ones, fan-in split among the copies)."),
        click.option("--shrink", type=float,
                     help="Factor on the source weights: output = shrink x source + perturb x init "
                          "(default: 0.4 for szp, 1 for hyperclone and net2net)."),
        click.option("--perturb", type=float, default=1.0, show_default=True,
                     help="Factor on the target's μP init added to every entry (0: the padded source only)."),
        click.option("--norms", type=click.Choice(NORM_POLICIES), default="shrink", show_default=True,
                     help="Norm gains and biases: shrink like every tensor, or copy the old units "
                          "(new units start at the init)."),
        click.option("--seed", type=click.IntRange(0, 2**64 - 1), default=0, show_default=True,
                     help="Seed of the noise; the same seed gives the same bytes on every device."),
        click.option("--init-std", type=float, default=0.02, show_default=True,
                     help="Std of the μP init (hidden weights: init_std x sqrt(base fan-in / fan-in))."),
        click.option("--readout-init", type=click.Choice(["zero", "normal"]), default="zero", show_default=True,
                     help="The output layer's init: zero (μP's choice) or normal like the other layers."),
        click.option("--base-shapes", type=click.Path(dir_okay=False), help="mup .bsh file with the base shapes."),
        click.option("--dtype", type=click.Choice(["keep", "float32", "bfloat16", "float16"]), default="keep",
                     show_default=True,
                     help="Output dtype of the weights (and in config.json); keep: each tensor's own."),
    ]):
        fn = option(fn)
    return source_options(fn)


def growth_kwargs(kw: dict) -> dict:
    """GrowthOptions fields from click's parameters."""
    keys = ("to_width", "to_depth", "to_ffn", "head_policy", "depth_policy", "method", "shrink", "perturb", "norms",
            "seed", "init_std", "readout_init", "dtype", "arch", "num_heads", "num_kv_heads", "to_experts",
            "experts_top_k")
    return {k: kw[k] for k in keys}


def resolved(source: Source, options: dict) -> dict:
    """`options` with a --to-width or --to-depth given as a multiple (`2x`)
    turned into the size it makes of this source's width or layers."""
    from .plan import detect, source_sizes

    multiples = {k: v for k, v in options.items() if isinstance(v, Multiple)}
    if not multiples:
        return options
    arch, prefix = detect(source, options["arch"])
    if arch is None:
        from .generic import source_width

        width, layers = source_width(source), None
    else:
        sizes = source_sizes(arch, prefix, source, GrowthOptions(**{**options, **dict.fromkeys(multiples)}))
        width, layers = sizes.width, sizes.layers
    out = dict(options)
    if "to_width" in multiples:
        out["to_width"] = multiples["to_width"].of(width, "--to-width", "width")
    if "to_depth" in multiples:
        if layers is None:
            raise PlanError(f"--to-depth {multiples['to_depth'].text}: --arch generic does not know the layers, "
                            "so it cannot grow depth")
        out["to_depth"] = multiples["to_depth"].of(layers, "--to-depth", "layers")
    return out


def _source(src: str, allow_pickle: bool, revision: str | None) -> Source:
    from .hub import resolve
    from .reader import open_checkpoint

    with open_checkpoint(resolve(src, revision).path, allow_pickle=allow_pickle) as ckpt:
        return Source.of(ckpt)


def chosen_options(src: str, kw: dict, allow_pickle: bool, revision: str | None) -> dict:
    """GrowthOptions' fields from click's parameters, a multiple (`2x`)
    resolved against the source, which is read for that only."""
    options = growth_kwargs(kw)
    if not any(isinstance(v, Multiple) for v in options.values()):
        return options
    return resolved(_source(src, allow_pickle, revision), options)


def growth_plan(src: str, kw: dict, base_shapes: str | None, allow_pickle: bool, revision: str | None) -> Plan:
    """The plan of the growth click's parameters ask for."""
    from .plan import make_plan

    source = _source(src, allow_pickle, revision)
    return make_plan(source, GrowthOptions(**resolved(source, growth_kwargs(kw))), base_shapes)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ws-convert")
def main() -> None:
    """Grow a trained small μP model into a larger one with SZP warm-starting."""


def count(n: int, noun: str) -> str:
    """`1 file`, `2 files`."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.4g}{unit}"
        n /= 1000
    return f"{n:.4g}P"


def init_text(t: TensorPlan) -> str:
    """What a tensor without noise gets added: a constant, or 0."""
    if isinstance(t.init, Normal) or not (t.init.value or t.init.source_value):
        return "0"
    if t.init.source_value == t.init.value:
        return f"const {t.init.value * t.perturb:g}"
    return f"const {t.init.value * t.perturb:g} (old units {t.init.source_value * t.perturb:g})"


def plan_table(p: Plan) -> str:
    s, t = p.source, p.target
    heads = (f"heads {s.heads} -> {t.heads} (kv {s.kv_heads} -> {t.kv_heads}), "
             f"head_dim {s.head_dim} -> {t.head_dim}")
    upcycled = f" (upcycled, top {p.options.experts_top_k})" if p.options.to_experts else ""
    experts = f"{t.experts} experts{upcycled}, " if t.experts else ""
    lines = [f"{p.arch}: width {s.width} -> {t.width}, {heads}, ffn {s.ffn} -> {t.ffn}, {experts}"
             f"layers {s.layers} -> {t.layers} ({p.options.depth_policy}); {p.options.method}, "
             f"shrink {p.options.shrink}, perturb {p.options.perturb}, "
             f"{'norms copied, ' if p.options.norms == 'copy' else ''}seed {p.options.seed}"]
    rows = [("tensor", "shape", "role", "shrink", "noise std", "layout")]
    for x in p.tensors:
        src = "new" if x.src_shape is None else str(list(x.src_shape))
        segs = max((len(a) for a in x.maps), default=0)
        layout = ", ".join(filter(None, [x.note, f"{segs} segments" if segs > 1 else ""]))
        init = f"{x.noise_std:.4g}" if x.noise_std else init_text(x)
        rows.append((x.name, f"{src} -> {list(x.shape)}", x.role.value, f"{x.shrink:g}", init, layout))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.append(f"parameters {human(p.params_before)} -> {human(p.params_after)} ({p.param_ratio:.2f}x), "
                 f"growth factor {p.growth:g}, output {human(p.bytes_after)}B in {len(p.tensors)} tensors")
    lines += [f"warning: {w}" for w in p.warnings]
    return "\n".join(lines)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread, so that every clean-up made for
    Ctrl-C (the writer removes its temporary directory) runs for it too."""


TERMINATED = 128 + signal.SIGTERM  # the exit status a shell reports for a process SIGTERM killed


@contextlib.contextmanager
def terminate_like_interrupt() -> Iterator[None]:
    """Within the block SIGTERM (what timeout, Slurm and docker stop send)
    raises Terminated; the previous handler comes back afterwards. Python
    runs signal handlers in the main thread only, so elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the clean-up short
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@main.command()
@click.argument("src")
@click.option("-o", "--out", type=click.Path(file_okay=False), help="Output directory (default: beside SRC).")
@growth_options
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--threads", type=click.IntRange(1), help="CPU threads (default: all cores).")
@click.option("--max-shard-size", default="5GB", show_default=True, help="Largest shard, like 500MB or 5GB.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
@click.option("--optimizer-state", type=click.Path(dir_okay=False),
              help="Also grow this AdamW state (the trainer's optimizer.pt, or a PyTorch state_dict beside a "
                   "Hugging Face model) with the weights' maps, written beside the grown weights for "
                   "train --resume-optimizer.")
@click.option("--dry-run", is_flag=True, help="Plan and check everything, write nothing.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
@fail_cleanly
def grow(src: str, out: str | None, base_shapes: str | None, allow_pickle: bool, revision: str | None, device: str,
         threads: int | None, max_shard_size: str, overwrite: bool, optimizer_state: str | None, dry_run: bool,
         quiet: bool, **kw) -> None:
    """Grow the checkpoint SRC (a path, or a Hugging Face Hub repo id) to a larger width (and depth) with SZP."""
    from .engine import grow as run_grow
    from .writer import parse_size

    try:
        parse_size(max_shard_size)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--max-shard-size") from None
    quiet = quiet or os.environ.get("RANK", "0") != "0"  # under torchrun, the first process speaks for all
    options = chosen_options(src, kw, allow_pickle, revision)

    def shown_out(written: Path) -> str:
        """The output as the user named it: -o as given, the default as a path like SRC's."""
        if out is not None:
            return out
        return str(written) if Path(src).is_absolute() else os.path.relpath(written)

    if dry_run:
        report = run_grow(src, out=out, overwrite=overwrite, device=device, max_shard_size=max_shard_size,
                          base_shapes=base_shapes, allow_pickle=allow_pickle, revision=revision, dry_run=True,
                          optimizer_state=optimizer_state, **options)
        if not quiet:
            click.echo(plan_table(report.plan))
            click.echo(f"dry run: target {printable(shown_out(report.out))} checked; would write "
                       f"{human(report.plan.bytes_after)}B there")
        return
    def warn(plan: Plan) -> None:  # before the work starts
        for w in plan.warnings:
            click.echo(f"warning: {w}", err=True)

    bar = None
    started = time.perf_counter()
    state = {"done": 0, "tensor": 0, "tensors": 0}

    def status(_: object) -> str:
        rate = state["done"] / max(time.perf_counter() - started, 1e-9) / 1e9
        return f"tensor {state['tensor']}/{state['tensors']}, {human(state['done'])}B, {rate:.2f} GB/s"

    def progress(nbytes: int, total: int, tensor: int, tensors: int) -> None:
        nonlocal bar
        if quiet or not sys.stderr.isatty():
            return
        state.update(done=state["done"] + nbytes, tensor=tensor, tensors=tensors)  # before the first frame
        if bar is None:
            bar = click.progressbar(length=total, label="growing", file=sys.stderr, show_eta=True,
                                    item_show_func=status)
            bar.__enter__()
        bar.update(nbytes, current_item=tensor)

    try:
        with terminate_like_interrupt():
            report = run_grow(src, out=out, overwrite=overwrite, device=device, threads=threads,
                              max_shard_size=max_shard_size, base_shapes=base_shapes, allow_pickle=allow_pickle,
                              revision=revision, progress=progress, optimizer_state=optimizer_state, on_plan=warn,
                              **options)
    except KeyboardInterrupt as exc:
        how = "terminated" if isinstance(exc, Terminated) else "interrupted"
        click.echo(f"\nws-convert: {how}; nothing was written at the output", err=True)
        sys.exit(TERMINATED if isinstance(exc, Terminated) else 1)
    except OSError as exc:
        click.echo(f"ws-convert: error: {printable(str(exc))}", err=True)
        sys.exit(1)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    for name, why in report.skipped:
        click.echo(printable(f"note: not copied: {name} ({why})"), err=True)
    if not quiet:
        click.echo(f"wrote {printable(shown_out(report.out))}: {human(report.params_before)} -> "
                   f"{human(report.params_after)} parameters, {human(report.bytes_written)}B in "
                   f"{report.seconds:.2f} s ({report.gb_per_s:.2f} GB/s, {report.device})")
        if report.copied:
            click.echo(printable(f"copied from the source: {few(report.copied)}"))


def few(names: list[str], shown: int = 10) -> str:
    """The first names of a list, on one line."""
    text = ", ".join(printable(n) for n in names[:shown])
    return text + (f" and {len(names) - shown} more" if len(names) > shown else "")


@main.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False))
@click.option("--source", type=click.Path(exists=True), help="The source, when it moved (default: the recorded one).")
@click.option("--allow-pickle", is_flag=True, help="Read a pickle (.bin) source (weights only).")
@click.option("--threads", type=click.IntRange(1), help="CPU threads (default: all cores).")
@fail_cleanly
def verify(out: str, source: str | None, allow_pickle: bool, threads: int | None) -> None:
    """Check every file grow wrote to OUT against a recomputation from the
    source; exit 1 when the output is corrupt or the source changed since."""
    from .verify import verify as run_verify

    r = run_verify(out, source=source, allow_pickle=allow_pickle, threads=threads)
    if r.made_by != __version__:
        click.echo(f"note: made by ws-convert {printable(r.made_by)}; this is {__version__}")
    if r.source_files_changed and not (r.source_changed or r.source_config_changed):
        click.echo(f"note: the source's files were rewritten since ({few(r.source_files_changed)}), "
                   "holding the same tensors")
    changed = ((["its config"] if r.source_config_changed else []) + [f"tensor {n}" for n in r.source_changed]
               + [f"file {n}" for n in r.source_copies_changed])
    if changed:
        click.echo(f"the source changed since: {few(changed)}")
    for p in r.files:
        click.echo(printable(f"{p.kind}: {p.file}" + (f": {p.detail}" if p.detail else "")))
    for name in r.differing:
        click.echo(f"differs: {printable(name)}")
    for name in r.stale:
        click.echo(f"stale: {printable(name)} (computed from a source tensor that changed since)")
    summary = printable(f"{r.checked} tensors recomputed from {r.source}")
    if r.ok:
        click.echo(f"ok: every file matches; {summary}")
        return
    if r.corrupt:
        click.echo(f"FAILED: the output is corrupt ({count(len(r.files), 'file')} and "
                   f"{count(len(r.differing), 'tensor')} differ); {summary}")
    else:
        click.echo(f"FAILED: the source changed since the output was made "
                   f"({count(len(r.stale), 'output tensor')} stale); {summary}")
    sys.exit(1)


class TrainingProgress:
    """The trainer's `progress(step, total, record)` for the terminal: every
    held-out loss printed as a line as it is evaluated (the one before the
    first update as step 0), and on a terminal a bar on stderr below them.
    A run starting over at step 1 (the demo trains three times) gets a new bar."""

    def __init__(self, indent: str = "") -> None:
        self.indent, self.bar = indent, None

    def say(self, text: str) -> None:
        """A line of text, over the bar's line where one is drawn (it redraws below on its next step)."""
        if self.bar is not None:
            click.echo("\r\x1b[K", nl=False, err=True)
        click.echo(text)

    def __call__(self, step: int, total: int, record: dict) -> None:
        if "eval_loss_start" in record:
            self.say(f"{self.indent}step 0/{total}: held-out {record['eval_loss_start']:.4f} (before training)")
        if "eval_loss" in record:
            self.say(f"{self.indent}step {step}/{total}: loss {record['loss']:.4f}, "
                     f"held-out {record['eval_loss']:.4f}")
        if not sys.stderr.isatty():
            return
        if self.bar is None or step == 1:
            self.close()
            self.bar = click.progressbar(length=total, label=f"{self.indent}training", file=sys.stderr,
                                         show_eta=True, item_show_func=self.status)
            self.bar.__enter__()
        self.bar.update(1, current_item=(step, record))
        if step == total:
            self.close()

    @staticmethod
    def status(item: tuple[int, dict] | None) -> str | None:
        return item and f"step {item[0]}, loss {item[1]['loss']:.4f}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@main.command()
@click.option("--arch", type=click.Choice([n for n in ARCH_NAMES if n not in ("generic", "mup-gpt")]),
              help="Build a model of this Hugging Face family (default: the bundled μP GPT).")
@click.option("--width", type=click.IntRange(2), default=128, show_default=True, help="Model width (d_model).")
@click.option("--depth", type=click.IntRange(1), default=4, show_default=True, help="Number of layers.")
@click.option("--heads", type=click.IntRange(1), default=4, show_default=True, help="Attention heads.")
@click.option("--kv-heads", type=click.IntRange(0), default=0,
              help="Key/value heads of a family model (default: --heads).")
@click.option("--ffn", type=click.IntRange(0), default=0, help="MLP size (default: 4 x --width).")
@click.option("--base-width", type=click.IntRange(0), default=0, help="μP base width (default: --width).")
@click.option("--steps", type=click.IntRange(1), default=200, show_default=True, help="Optimizer steps.")
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True,
              help="Sequences per step (over all processes under torchrun).")
@click.option("--context", type=click.IntRange(2), default=128, show_default=True, help="Tokens per sequence.")
@click.option("--lr", type=float, default=1e-2, show_default=True,
              help="Peak learning rate of MuAdamW (μP scales it per layer).")
@click.option("--schedule", type=click.Choice(["wsd", "cosine"]), default="wsd", show_default=True,
              help="Learning rate after the warm-up: wsd holds it, then cools down linearly over the last 20%; "
                   "cosine decays it.")
@click.option("--warmup", type=click.IntRange(0), default=0, help="Warm-up steps (default: 5% of --steps).")
@click.option("--init-std", type=float, default=0.02, show_default=True,
              help="Std of the μP init of a fresh model.")
@click.option("--data", help="Text file or folder, or a .bin token file (default: Python's stdlib sources).")
@click.option("--tokenizer", type=click.Path(exists=True, file_okay=False),
              help="Tokenizer directory for text data (default: the --init-from model's, if it has one).")
@click.option("--out", default="ws-convert-run", show_default=True, type=click.Path(file_okay=False),
              help="Run directory: the model, log.jsonl, loss.png and checkpoints; a run there is resumed.")
@click.option("--init-from", type=click.Path(exists=True), help="Start from this (grown) checkpoint.")
@click.option("--device", default="auto", show_default=True, help="auto (a GPU if there is one), cpu or cuda.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model.")
@click.option("--fsdp", is_flag=True, help="Under torchrun: shard parameters, gradients and optimizer state (FSDP2).")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True,
              help="Seed of the init and of the training batches.")
@click.option("--eval-every", type=click.IntRange(1), default=50, show_default=True,
              help="Steps between held-out evaluations (also after the first step and the last).")
@click.option("--eval-batches", type=click.IntRange(1), default=8, show_default=True,
              help="Held-out batches per evaluation (the same windows for every seed).")
@click.option("--checkpoint-every", type=click.IntRange(0), default=0, help="Also checkpoint every N steps.")
@click.option("--overwrite", is_flag=True, help="Train into an --out holding another model's files, replacing them.")
@click.option("--resume-optimizer", is_flag=True,
              help="With --init-from: continue the optimizer state grown beside it (grow --optimizer-state).")
@fail_cleanly
def train(compile_: bool, **kw) -> None:
    """Train under μP: the bundled GPT or a Hugging Face family (--arch), from
    scratch or --init-from a grown checkpoint."""
    from .train import TrainConfig, train as run_train

    progress = TrainingProgress()
    try:
        result = run_train(TrainConfig(compile=compile_, **kw), progress=progress)
    finally:
        progress.close()
    if os.environ.get("RANK", "0") != "0":  # under torchrun, the first process speaks for all
        return
    click.echo(f"done: {result['steps']} steps, final loss {result['final_loss']:.4f}, held-out "
               f"{result['final_eval_loss']:.4f}; wrote {kw['out']}")


@main.command("plan")
@click.argument("src")
@growth_options
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@fail_cleanly
def plan_cmd(src: str, as_json: bool, base_shapes: str | None, allow_pickle: bool, revision: str | None,
             **kw) -> None:
    """Show the per-tensor plan for growing SRC; nothing is written."""
    p = growth_plan(src, kw, base_shapes, allow_pickle, revision)
    click.echo(json.dumps(p.to_json(), indent=1) if as_json else plan_table(p))


@main.command("inspect")
@click.argument("src")
@source_options
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@fail_cleanly
def inspect_cmd(src: str, as_json: bool, **kw) -> None:
    """Architecture, sizes, dtypes, parameters and shards of SRC."""
    from .api import inspect

    info = inspect(src, **kw)
    if as_json:
        click.echo(json.dumps(info, indent=1))
        return
    click.echo(f"{info['path']}: {info['arch']}" + (f" ({info['layout']})" if "layout" in info else ""))
    for key in ("width", "depth", "heads", "kv_heads", "head_dim", "rotary_dim", "ffn", "vocab", "ctx"):
        if key in info:
            click.echo(f"  {key:<10} {info[key]}")
    click.echo(f"  {'params':<10} {human(info['parameters'])} in {info['tensors']} tensors, "
               f"{human(info['bytes'])}B ({', '.join(f'{k} x{v}' for k, v in info['dtypes'].items())})")
    files = info["files"]
    click.echo(f"  {'shards':<10} {len(files)}: " + ", ".join(f"{f['name']} ({human(f['bytes'])}B)" for f in files))
    if not info["config"]:
        click.echo("  (no config.json)")


@main.command()
@click.option("--out", default="ws-convert-demo", show_default=True, type=click.Path(file_okay=False),
              help="Directory for the grown model, the three runs, loss.png and summary.json.")
@click.option("--steps", type=click.IntRange(2), default=200, show_default=True,
              help="Training steps of the warm start; scratch and the continued base get the same compute.")
@click.option("--base", type=click.Path(exists=True, file_okay=False), help="Base run directory (default: shipped).")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True,
              help="Seed of the runs' training batches (and of the scratch run's init).")
@click.option("--device", default="auto", show_default=True, help="Where the runs train: auto, cpu or cuda.")
@click.option("--eval-every", type=click.IntRange(1), default=20, show_default=True,
              help="Steps between held-out evaluations of every run.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier demo's results in --out.")
@fail_cleanly
def demo(out: str, steps: int, base: str | None, seed: int, device: str, eval_every: int, overwrite: bool) -> None:
    """Grow the shipped small μP model 2x and keep training it; race it, at
    equal compute, against the wide model from scratch and the small one
    trained on."""
    from .demo import run, table

    progress = TrainingProgress(indent="  ")
    try:
        summary = run(out, steps=steps, base=base, seed=seed, device=device, eval_every=eval_every,
                      overwrite=overwrite, say=progress.say, progress=progress)
    finally:
        progress.close()
    click.echo(table(summary))
    click.echo(f"wrote {out}/loss.png and {out}/summary.json")

if __name__ == "__main__":
    main()
