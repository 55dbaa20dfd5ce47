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

Every other shape must be placeable too: a matrix with one axis growing
must have the vocabulary or the context size on the other (a fused or offset
projection has neither), a tensor that grows nowhere must hold nothing per
head, and an ffn of 3 x width would pass for a fused [q | k | v]. A config
naming a family that stores norm gains as 1 + w (Gemma) is refused, since
generic would start the new gains at 2; one naming another natively grown
family is grown, with a warning that names its --arch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from .architectures import Architecture, Role
from .errors import PlanError
from .families import ALL
from .plan import (GrowthOptions, Plan, Sizes, Source, TensorPlan, base_shape, config_dtype, config_sizes,
                   init_for, output_dtype, shown)
from .szp_spec import Init, Segment

WIDTH_KEYS = ("hidden_size", "n_embd", "d_model", "dim", "width")
FFN_KEYS = ("intermediate_size", "n_inner", "ffn_dim", "d_ff", "ffn_hidden_size")
HEADS_KEYS = ("num_attention_heads", "n_head", "num_heads", "n_heads")
SIZE_KEYS = {"width": WIDTH_KEYS, "ffn": FFN_KEYS, "heads": HEADS_KEYS,
             "kv_heads": ("num_key_value_heads", "num_kv_heads"), "head_dim": ("head_dim",), "vocab": ("vocab_size",),
             "ctx": ("max_position_embeddings", "n_positions", "n_ctx")}
NULLABLE = ("ffn", "head_dim", "kv_heads", "vocab", "ctx")  # null: not known


class _Known(NamedTuple):
    """What the config proves, which every shape is checked against."""

    width: int
    grow: Mapping[int, int]  # source size -> grown
    heads: int
    head_dim: int
    vocab: int | None
    vocab_from: str  # the config key, or the first tensor whose shape gave it where the config does not
    ctx: int | None
    advice: str  # what to give instead: --arch, with the family where the config names a native one


class _Layout(NamedTuple):
    """What the generic layout makes of one source shape."""

    growing: tuple[bool, ...]  # which axes grow
    shape: tuple[int, ...]  # grown
    maps: tuple[tuple[Segment, ...], ...]  # top-left
    base: tuple[int | None, ...]  # the μP base shape without a base-shapes file: the source's own
    other: int | None  # a matrix's axis that does not grow, where the other one does


def _per_head(shape: tuple[int, ...], k: _Known) -> bool:
    """Whether `shape` may hold one entry, or one head_dim, per head ([heads],
    [heads, head_dim], broadcast axes of 1 aside): grown by adding heads, it
    would need new rows."""
    if k.heads not in shape:
        return False
    rest = list(shape)
    rest.remove(k.heads)
    return all(d in (1, k.head_dim) for d in rest)


def _layout(name: str, shape: tuple[int, ...], k: _Known) -> _Layout:
    """The layout of `shape`, refused where an axis looks like fused heads,
    holds heads, or sits beside a growing axis without being the vocabulary
    or the context (`name` is the first tensor of that shape); the
    vocabulary and context sizes the config gives are no width axes,
    whatever their size."""
    fixed = (k.vocab, k.ctx)
    for d in shape:
        if d not in k.grow and d not in fixed and d > k.width and d % k.width == 0:
            raise PlanError(f"tensor '{name}': axis of size {d} = {d // k.width} x width, which --arch generic cannot "
                            f"tell from fused heads; give the ffn size ({', '.join(FFN_KEYS)}) or vocab_size if "
                            f"that is what it is, or {k.advice}")
    growing = tuple(d in k.grow for d in shape)
    if not any(growing) and _per_head(shape, k):
        raise PlanError(f"tensor '{name}' {list(shape)}: may hold one entry per head ({k.heads} heads of "
                        f"{k.head_dim}), which --arch generic cannot give the new heads; give {k.advice}")
    other = shape[growing.index(False)] if len(shape) == 2 and sum(growing) == 1 else None
    if other is not None and other not in fixed and k.vocab is not None:
        raise PlanError(f"tensor '{name}' {list(shape)}: one axis grows, the other ({other}) is neither the vocabulary "
                        f"({k.vocab}, {k.vocab_from}) nor the context size ({k.ctx or 'not given'}), so --arch "
                        f"generic cannot place it (a fused or offset projection?); give {k.advice}")
    return _Layout(growing, tuple(k.grow.get(d, d) for d in shape),
                   tuple((Segment(0, 0, d),) if d else () for d in shape),
                   tuple(d if g else None for d, g in zip(shape, growing)), other)


def _native(source: Source) -> tuple[str, Architecture] | None:
    """The transformers class the config's 'architectures' names and the
    natively grown family it is of, if any."""
    names = (source.config or {}).get("architectures")
    for cls in names if isinstance(names, list) else ():
        for arch in ALL:
            if cls in arch.classes:
                return cls, arch
    return None


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


def _heads(source: Source, given: dict[str, tuple[int, str]], to_width: int, advice: str) -> tuple[int, int, int]:
    """(heads, head_dim, grown heads): the config must prove where every
    head lies, and the grown width must hold whole heads of the same size."""
    width = given["width"][0]
    if "heads" not in given:
        raise PlanError(f"{source.config_name}: no head count ({', '.join(HEADS_KEYS)}), so --arch generic cannot "
                        f"tell where the attention heads lie; give {advice}, or a config with num_attention_heads")
    heads, key = given["heads"]
    head_dim = given["head_dim"][0] if "head_dim" in given else width // heads
    if heads * head_dim != width:
        raise PlanError(f"{source.config_name}: {heads} heads ('{key}') of head_dim {head_dim} do not fill the "
                        f"width {width}, so --arch generic cannot tell the attention axes; give {advice}")
    multi_query = (source.config or {}).get("multi_query")  # Falcon's and GPTBigCode's one key/value head
    if given.get("kv_heads", (heads,))[0] != heads or multi_query:
        kv, kv_key = given["kv_heads"] if not multi_query else (shown(multi_query), "multi_query")
        raise PlanError(f"{source.config_name}: '{kv_key}' is {kv}: --arch generic cannot grow grouped key/value "
                        f"heads; give {advice}")
    if to_width % head_dim:
        raise PlanError(f"--to-width {to_width} is not a multiple of head_dim {head_dim}: --arch generic grows "
                        "attention by whole heads")
    return heads, head_dim, to_width // head_dim


def source_width(source: Source) -> int:
    """The width --arch generic grows, which only a config gives."""
    given = config_sizes(SIZE_KEYS, source, NULLABLE)
    if "width" not in given:
        raise PlanError(f"{source.path}: --arch generic needs the width from a config.json "
                        f"({', '.join(WIDTH_KEYS)})")
    return given["width"][0]


def plan_generic(source: Source, o: GrowthOptions, base_file: Mapping[str, object] | None = None,
                 base_path: str | Path | None = None) -> Plan:
    width = source_width(source)
    given = config_sizes(SIZE_KEYS, source, NULLABLE)
    if o.to_depth:
        raise PlanError("--arch generic cannot grow depth: it does not know the layers")
    if o.to_width <= width:
        raise PlanError(f"--to-width {o.to_width} is not larger than the source width {width}")
    native = _native(source)
    advice = f"--arch {native[1].name}" if native else "--arch"
    if native and native[1].norm_offset:
        cls, arch = native
        raise PlanError(f"{source.config_name}: 'architectures' names {cls}, a {arch.name} model, which stores norm "
                        f"gains as {arch.norm_offset:g} + w: --arch generic would start its new gains at "
                        f"{1 + arch.norm_offset:g}; give --arch {arch.name}")
    if o.head_policy != "heads":
        raise PlanError(f"--head-policy {o.head_policy}: --arch generic cannot widen heads without knowing each "
                        f"head's layout (rotary halves, interleaving); use --head-policy heads or give {advice}")
    ffn = given["ffn"][0] if "ffn" in given else None
    if o.to_ffn and not ffn:
        raise PlanError(f"{source.config_name}: --to-ffn needs the ffn size in the config ({', '.join(FFN_KEYS)})")
    to_ffn = o.to_ffn or (ffn * o.to_width // width if ffn else None)
    if ffn and to_ffn < ffn:
        raise PlanError(f"--to-ffn {to_ffn} is smaller than the source ffn {ffn}")
    if ffn == width and to_ffn != o.to_width:
        raise PlanError(f"{source.config_name}: the ffn size is the width ({width}), so --arch generic cannot tell "
                        f"their axes apart; give {advice}")
    if ffn == 3 * width:
        raise PlanError(f"{source.config_name}: the ffn size '{given['ffn'][1]}' {ffn} is 3 x width, the size of a "
                        f"fused [q | k | v], so --arch generic cannot tell their axes apart; give {advice}")
    heads, head_dim, to_heads = _heads(source, given, o.to_width, advice)
    grow = {width: o.to_width, **({ffn: to_ffn} if ffn else {})}
    for size, what in (("vocab", "vocabulary"), ("ctx", "context")):
        value, key = given.get(size, (None, None))
        if value in grow:
            raise PlanError(f"{source.config_name}: '{key}' {value} is also the width or ffn size, so --arch "
                            f"generic cannot tell the {what}'s axes from theirs; give {advice}")
    vocab, vocab_key = given.get("vocab", (None, None))
    known = _Known(width, grow, heads, head_dim, vocab, f"'{vocab_key}'", given.get("ctx", (None,))[0], advice)
    tensors = []
    base_shapes = {}
    layouts: dict[tuple[int, ...], _Layout] = {}  # checkpoints of many tensors have few shapes
    inits: dict[tuple[Role, int | None, int | None], Init] = {}
    for name, (dtype, shape) in source.tensors.items():
        if shape not in layouts:
            layouts[shape] = _layout(name, shape, known)
            if known.vocab is None and layouts[shape].other not in (None, known.ctx):
                # the config gives no vocabulary: the first embedding says it, and every other must agree
                known = known._replace(vocab=layouts[shape].other, vocab_from=f"as tensor '{name}' has it")
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
    if native:
        warnings.append(f"{source.config_name} names {native[0]}, which --arch {native[1].name} grows knowing "
                        "its layout")
    new_config = config_dtype(source.config or {}, o.dtype)
    for keys, value in ((WIDTH_KEYS, o.to_width), (FFN_KEYS, to_ffn), (HEADS_KEYS, to_heads),
                        (SIZE_KEYS["kv_heads"], to_heads)):
        for k in keys:
            if new_config.get(k) is not None and value is not None:
                new_config[k] = value
    return Plan("generic", src, dst, o, tensors, new_config if source.config else None, base_shapes, [],
                warnings, sum(math.prod(s) for _, s in source.tensors.values()))
