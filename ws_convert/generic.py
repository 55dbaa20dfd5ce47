"""The generic fallback: no architecture known, so every axis equal to the
width (or the ffn size, when the config gives it) is padded top-left, and
roles are guessed from names and shapes.

Attention is grown only where the config proves the heads: a head count,
head_dim (given, or width / heads) with the heads filling the width, and as
many key/value heads. The width then grows by adding whole heads of the same
head_dim, so padding q/k/v rows and the output projection's columns top-left
keeps old head h at rows [h * head_dim, (h + 1) * head_dim): head h stays
head h, and the new heads come after. Widening each head instead would merge
old heads into new ones. Anything where heads would be ambiguous is refused
rather than guessed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from .architectures import Role
from .errors import PlanError
from .plan import (GrowthOptions, Plan, Sizes, Source, TensorPlan, base_shape, config_sizes, init_for,
                   output_dtype)
from .szp_spec import Init, Segment

WIDTH_KEYS = ("hidden_size", "n_embd", "d_model", "dim", "width")
FFN_KEYS = ("intermediate_size", "n_inner", "ffn_dim", "d_ff")
HEADS_KEYS = ("num_attention_heads", "n_head", "num_heads", "n_heads")
SIZE_KEYS = {"width": WIDTH_KEYS, "ffn": FFN_KEYS, "heads": HEADS_KEYS, "kv_heads": ("num_key_value_heads",),
             "head_dim": ("head_dim",), "vocab": ("vocab_size",)}
NULLABLE = ("ffn", "head_dim", "kv_heads", "vocab")  # null: not known


class _Layout(NamedTuple):
    """What the generic layout makes of one source shape."""

    growing: tuple[bool, ...]  # which axes grow
    shape: tuple[int, ...]  # grown
    maps: tuple[tuple[Segment, ...], ...]  # top-left
    base: tuple[int | None, ...]  # the μP base shape without a base-shapes file: the source's own


def _layout(name: str, shape: tuple[int, ...], width: int, grow: Mapping[int, int], vocab: int | None) -> _Layout:
    """The layout of `shape`, refused where an axis looks like fused heads
    (`name` is the first tensor of that shape); the vocabulary the config
    gives is no width axis, whatever its size."""
    for d in shape:
        if d not in grow and d != vocab and d > width and d % width == 0:
            raise PlanError(f"tensor '{name}': axis of size {d} = {d // width} x width, which --arch generic cannot "
                            f"tell from fused heads; give the ffn size ({', '.join(FFN_KEYS)}) or vocab_size if "
                            "that is what it is, or --arch")
    growing = tuple(d in grow for d in shape)
    return _Layout(growing, tuple(grow.get(d, d) for d in shape),
                   tuple((Segment(0, 0, d),) if d else () for d in shape),
                   tuple(d if g else None for d, g in zip(shape, growing)))


def _role(name: str, growing: Sequence[bool]) -> tuple[Role, int | None]:
    if len(growing) == 2 and all(growing):
        return Role.HIDDEN, 1  # assumes [out, in] storage
    lower = name.lower()
    if len(growing) == 2 and any(growing):
        readout = any(k in lower for k in ("lm_head", "readout", "output", "head."))
        return (Role.OUTPUT, 1) if readout else (Role.INPUT, None)
    if len(growing) == 1:
        normish = any(k in lower for k in ("norm", "ln_", ".ln", "layernorm"))
        if normish:
            return (Role.NORM_BIAS if lower.endswith("bias") else Role.NORM_GAIN), None
        return Role.VECTOR, None
    raise PlanError(f"tensor '{name}': cannot tell its μP role from {len(growing)} axes; give --arch")


def _heads(source: Source, given: dict[str, tuple[int, str]], to_width: int) -> tuple[int, int, int]:
    """(heads, head_dim, grown heads): the config must prove where every
    head lies, and the grown width must hold whole heads of the same size."""
    width = given["width"][0]
    if "heads" not in given:
        raise PlanError(f"{source.config_name}: no head count ({', '.join(HEADS_KEYS)}), so --arch generic cannot "
                        "tell where the attention heads lie; give --arch, or a config with num_attention_heads")
    heads, key = given["heads"]
    head_dim = given["head_dim"][0] if "head_dim" in given else width // heads
    if heads * head_dim != width:
        raise PlanError(f"{source.config_name}: {heads} heads ('{key}') of head_dim {head_dim} do not fill the "
                        f"width {width}, so --arch generic cannot tell the attention axes; give --arch")
    if given.get("kv_heads", (heads,))[0] != heads:
        kv, kv_key = given["kv_heads"]
        raise PlanError(f"{source.config_name}: '{kv_key}' is {kv}: --arch generic cannot grow grouped key/value "
                        "heads; give --arch")
    if to_width % head_dim:
        raise PlanError(f"--to-width {to_width} is not a multiple of head_dim {head_dim}: --arch generic grows "
                        "attention by whole heads")
    return heads, head_dim, to_width // head_dim


def plan_generic(source: Source, o: GrowthOptions, base_file: Mapping[str, object] | None = None,
                 base_path: str | Path | None = None) -> Plan:
    given = config_sizes(SIZE_KEYS, source, NULLABLE)
    if "width" not in given:
        raise PlanError(f"{source.path}: --arch generic needs the width from a config.json "
                        f"({', '.join(WIDTH_KEYS)})")
    width = given["width"][0]
    if o.to_depth:
        raise PlanError("--arch generic cannot grow depth: it does not know the layers")
    if o.to_width <= width:
        raise PlanError(f"--to-width {o.to_width} is not larger than the source width {width}")
    if o.head_policy != "heads":
        raise PlanError(f"--head-policy {o.head_policy}: --arch generic cannot widen heads without knowing each "
                        "head's layout (rotary halves, interleaving); use --head-policy heads or give --arch")
    ffn = given["ffn"][0] if "ffn" in given else None
    if o.to_ffn and not ffn:
        raise PlanError(f"{source.config_name}: --to-ffn needs the ffn size in the config ({', '.join(FFN_KEYS)})")
    to_ffn = o.to_ffn or (ffn * o.to_width // width if ffn else None)
    if ffn and to_ffn < ffn:
        raise PlanError(f"--to-ffn {to_ffn} is smaller than the source ffn {ffn}")
    if ffn == width and to_ffn != o.to_width:
        raise PlanError(f"{source.config_name}: the ffn size is the width ({width}), so --arch generic cannot tell "
                        "their axes apart; give --arch")
    heads, head_dim, to_heads = _heads(source, given, o.to_width)
    grow = {width: o.to_width, **({ffn: to_ffn} if ffn else {})}
    vocab, vocab_key = given.get("vocab", (None, None))
    if vocab in grow:
        raise PlanError(f"{source.config_name}: '{vocab_key}' {vocab} is also the width or ffn size, so --arch "
                        "generic cannot tell the vocabulary's axes from theirs; give --arch")
    tensors = []
    base_shapes = {}
    layouts: dict[tuple[int, ...], _Layout] = {}  # checkpoints of many tensors have few shapes
    inits: dict[tuple[Role, int | None, int | None], Init] = {}
    for name, (dtype, shape) in source.tensors.items():
        if shape not in layouts:
            layouts[shape] = _layout(name, shape, width, grow, vocab)
        layout = layouts[shape]
        growing = any(layout.growing)
        role, fan_in = _role(name, layout.growing) if growing else (Role.BUFFER, None)
        base = base_shape(base_file, base_path, name, None, len(shape))
        base_shapes[name] = base = list(layout.base) if base is None else base
        knobs = (role, None, None) if fan_in is None else (role, layout.shape[fan_in], base[fan_in])
        if knobs not in inits:
            inits[knobs] = init_for(*knobs, o)
        shrink, perturb = (1.0, 0.0) if role == Role.BUFFER else (o.shrink, o.perturb)
        tensors.append(TensorPlan(name, name, shape, layout.shape, output_dtype(dtype, o.dtype), role, layout.maps,
                                  shrink, perturb, inits[knobs], name, "generic" if growing else "unchanged, copied"))
    src = Sizes(width, ffn or 0, heads, heads, head_dim, 0)
    dst = Sizes(o.to_width, to_ffn or 0, to_heads, to_heads, head_dim, 0)
    warnings = [f"generic architecture: every axis of size {width}" + (f" or {ffn}" if ffn else "")
                + f" is padded top-left, adding heads of head_dim {head_dim} ({heads} -> {to_heads}); fused "
                "projections are not known, so check the result or give --arch"]
    new_config = dict(source.config or {})
    for keys, value in ((WIDTH_KEYS, o.to_width), (FFN_KEYS, to_ffn), (HEADS_KEYS, to_heads),
                        (SIZE_KEYS["kv_heads"], to_heads)):
        for k in keys:
            if new_config.get(k) is not None and value is not None:
                new_config[k] = value
    return Plan("generic", src, dst, o, tensors, new_config if source.config else None, base_shapes, [],
                warnings, sum(math.prod(s) for _, s in source.tensors.values()))
