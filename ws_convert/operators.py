"""Growth operators as maps the one kernel reads.

An operator says, per output axis, which source position each output
position takes (with a scale) and where its noise is drawn (with a sign);
the kernel multiplies the scales of all axes with the shrink and adds the
noise. SZP (the default) places every old unit at its old position and
leaves the new ones to the init: `plan.axis_map` builds its segments.
HyperCloning tiles: every axis that grows m-fold holds m copies of the
source axis, a fan-in axis divides by m, so a model whose hidden states are
tiled computes the source's function; its noise is added and subtracted in
paired blocks along the fan-in axis, so the function stays.
"""

from __future__ import annotations

from dataclasses import dataclass

from .architectures import Axis, Interleaved
from .errors import PlanError
from .szp_spec import NoiseSegment, Segment

METHODS = ("szp", "hyperclone")
DEFAULT_SHRINK = {"szp": 0.4, "hyperclone": 1.0}


@dataclass(frozen=True)
class Tiled:
    """One axis under HyperCloning: its segments, how many copies of the
    source it holds (the divisor when it is a fan-in axis; 0 when its parts
    differ), and the noise pairing of its blocks."""

    segments: tuple[Segment, ...]
    copies: int
    pairs: tuple[NoiseSegment, ...]


def _blocks(dst_at: int, src_at: int, n: int, m: int) -> tuple[list[Segment], list[NoiseSegment]]:
    """m copies of [src_at, src_at + n) from dst_at on, and their noise pairs:
    block 2i draws noise as is and block 2i + 1 draws the same noise negated;
    a last block without a partner gets none."""
    segs = [Segment(dst_at + k * n, src_at, n) for k in range(m)]
    pairs = [NoiseSegment(dst_at + k * n, dst_at + (k - k % 2) * n, n, -1 if k % 2 else (1 if k + 1 < m else 0))
             for k in range(m)]
    return segs, pairs


def tile_axis(axis: Axis, src, dst) -> Tiled:
    """HyperCloning's map of one axis between the sizes `src` and `dst`
    (plan.Sizes): an Interleaved axis repeats its units (head blocks) as a
    whole, any other axis repeats each of its parts ([q | k | v]) in place."""
    if isinstance(axis, Interleaved):
        n_src = src.units(axis.unit) * sum(src.of(k) // src.units(axis.unit) for k in axis.parts)
        n_dst = dst.units(axis.unit) * sum(dst.of(k) // dst.units(axis.unit) for k in axis.parts)
        parts = [(n_src, n_dst)]
    else:
        parts = [(src.of(k), dst.of(k)) for k in (axis if isinstance(axis, tuple) else (axis,))]
    segs: list[Segment] = []
    pairs: list[NoiseSegment] = []
    copies = set()
    s_off = d_off = 0
    for n_src, n_dst in parts:
        if n_src == 0 or n_dst % n_src:
            raise PlanError(f"--method hyperclone copies whole units: an axis of {n_src} cannot grow to {n_dst} "
                            "(the target sizes must be whole multiples of the source's)")
        part_segs, part_pairs = _blocks(d_off, s_off, n_src, n_dst // n_src)
        segs += part_segs
        pairs += part_pairs
        copies.add(n_dst // n_src)
        s_off, d_off = s_off + n_src, d_off + n_dst
    # parts growing by different factors (a multi-query [q | k | v]) are fine but on a fan-in axis
    return Tiled(tuple(segs), copies.pop() if len(copies) == 1 else 0, tuple(pairs))


def scaled(segments: tuple[Segment, ...], scale: float) -> tuple[Segment, ...]:
    """The segments with every source position multiplied by `scale`."""
    return segments if scale == 1.0 else tuple(s._replace(scale=s.scale * scale) for s in segments)


__all__ = ["DEFAULT_SHRINK", "METHODS", "Tiled", "scaled", "tile_axis"]
