"""Growth operators as maps the one kernel reads.

An operator says, per output axis, which source position each output
position takes (with a scale) and where its noise is drawn (with a sign);
the kernel multiplies the scales of all axes with the shrink and adds the
noise. SZP (the default) places every old unit at its old position and
leaves the new ones to the init: `plan.axis_map` builds its segments.
HyperCloning tiles: every axis that grows m-fold holds m copies of the
source axis, a fan-in axis divides by m, so a model whose hidden states are
tiled computes the source's function; its noise is added and subtracted in
paired blocks along the fan-in axis, so the function stays. Net2Net's
wider net keeps the old units and fills each new one with a copy of an old
unit chosen at random (a pure function of the seed); a tensor reading a
copied unit divides it by that unit's number of copies.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from .architectures import Axis, Interleaved, Kind
from .errors import PlanError
from .szp_spec import NoiseSegment, Segment

METHODS = ("szp", "hyperclone", "net2net")
DEFAULT_SHRINK = {"szp": 0.4, "hyperclone": 1.0, "net2net": 1.0}
COPYING = ("hyperclone", "net2net")  # the methods that copy units to keep the function


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


def unit_choice(seed: int, key: str, n_src: int, n_dst: int) -> tuple[int, ...]:
    """Net2WiderNet's choice of source unit per target unit: old unit u stays
    u, new unit j copies old unit H(seed, key, j) mod n_src (H: the first 8
    bytes of SHA-256, little-endian), so it is the same on every machine."""
    def pick(j: int) -> int:
        digest = hashlib.sha256(f"{seed}:{key}:{j}".encode()).digest()
        return int.from_bytes(digest[:8], "little") % n_src

    return tuple(range(n_src)) + tuple(pick(j) for j in range(n_src, n_dst))


# The size of one unit of a kind that Net2Net copies whole: a head's dims, else one position.
def unit_size(kind: Kind, sizes) -> int:
    return sizes.head_dim if kind in (Kind.Q, Kind.KV) else 1


def chosen_axis(axis: Axis, src, dst, choice: Callable[[Kind], tuple[int, ...]],
                fan_in: bool) -> tuple[Segment, ...]:
    """Net2Net's map of one axis: each target unit (a head block for an
    Interleaved axis, a head or a position within each part otherwise)
    copies the source unit `choice(kind)` names, divided by that unit's
    number of copies when the axis is a tensor's fan-in."""
    def runs(dst_at: int, src_at: int, picks: tuple[int, ...], size: int) -> list[Segment]:
        counts = Counter(picks)
        return [Segment(dst_at + j * size, src_at + u * size, size, 1 / counts[u] if fan_in else 1.0)
                for j, u in enumerate(picks)]

    if isinstance(axis, Interleaved):
        block = sum(src.of(k) // src.units(axis.unit) for k in axis.parts)
        return merged(runs(0, 0, choice(axis.unit), block))
    segs: list[Segment] = []
    s_off = d_off = 0
    for kind in (axis if isinstance(axis, tuple) else (axis,)):
        size = unit_size(kind, src)
        segs += runs(d_off, s_off, choice(kind), size)
        s_off, d_off = s_off + src.of(kind), d_off + dst.of(kind)
    return merged(segs)


def merged(segs: list[Segment]) -> tuple[Segment, ...]:
    """Adjacent segments that continue each other, at one scale, as one."""
    out: list[Segment] = []
    for seg in segs:
        last = out[-1] if out else None
        if last and last.dst + last.length == seg.dst and last.src + last.length == seg.src \
                and last.scale == seg.scale:
            out[-1] = last._replace(length=last.length + seg.length)
        else:
            out.append(seg)
    return tuple(out)


__all__ = ["COPYING", "DEFAULT_SHRINK", "METHODS", "Tiled", "chosen_axis", "scaled", "tile_axis", "unit_choice"]
