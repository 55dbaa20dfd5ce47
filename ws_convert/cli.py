"""The `ws-convert` command line. Errors become one line and an exit code:
0 success, 1 failure while running, 2 bad input or usage."""

from __future__ import annotations

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ws-convert")
def main() -> None:
    """Grow a trained small μP model into a larger one with SZP warm-starting."""


@main.command()
@click.option("--width", default=1024, show_default=True, help="Source matrix size (grown to 2x).")
@click.option("--seed", default=0, show_default=True)
def demo(width: int, seed: int) -> None:
    """Grow one weight matrix 2x with the fused op and check the result."""
    from .demo import op_demo

    if width < 2:
        raise click.BadParameter("must be at least 2", param_hint="--width")
    r = op_demo(width, seed=seed)
    click.echo(f"SZP on one matrix, {r['source']} -> {r['target']} bf16, backend: {r['backend']}")
    click.echo(f"  shrink=1, perturb=0 equals the zero-padded source: {r['zero_pad_exact']}")
    click.echo(f"  new block std (target init std 0.02):         {r['new_block_std']:.5f}")
    click.echo(f"  copied block vs source, correlation:          {r['copied_block_corr']:.4f}"
               f" (expected {0.4 / (0.4**2 + 1) ** 0.5:.4f})")
    click.echo(f"  same command, same bytes:                     {r['same_again']}")
    click.echo(f"  fused op {r['fused_ms']:.1f} ms, plain PyTorch (zeros, assign, randn, add) "
               f"{r['plain_ms']:.1f} ms: {r['plain_ms'] / r['fused_ms']:.1f}x")
    if not (r["zero_pad_exact"] and r["same_again"]):
        raise SystemExit(1)
