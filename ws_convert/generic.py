"""The generic fallback: no architecture known, so every axis equal to the
width (or the ffn size, when the config gives it) is padded top-left, and
roles are guessed from names and shapes. Anything where heads would be
ambiguous is refused rather than guessed.
"""

from __future__ import annotations

import math

from .architectures import Role
from .errors import PlanError
from .plan import GrowthOptions, Plan, Sizes, Source, TensorPlan, config_value, output_dtype, init_for
from .szp_spec import Segment

WIDTH_KEYS = ("hidden_size", "n_embd", "d_model", "dim", "width")
FFN_KEYS = ("intermediate_size", "n_inner", "ffn_dim", "d_ff")


def _role(name: str, growing: list[bool]) -> tuple[Role, int | None]:
    lower = name.lower()
    if len(growing) == 2 and all(growing):
        return Role.HIDDEN, 1  # assumes [out, in] storage
    if len(growing) == 2 and any(growing):
        readout = any(k in lower for k in ("lm_head", "readout", "output", "head."))
        return (Role.OUTPUT, 1) if readout else (Role.INPUT, None)
    if len(growing) == 1:
        normish = any(k in lower for k in ("norm", "ln_", ".ln", "layernorm"))
        if normish:
            return (Role.NORM_BIAS if lower.endswith("bias") else Role.NORM_GAIN), None
        return Role.VECTOR, None
    raise PlanError(f"tensor '{name}': cannot tell its μP role from {len(growing)} axes; give --arch")


def plan_generic(source: Source, o: GrowthOptions) -> Plan:
    config = source.config or {}
    width = config_value(config, WIDTH_KEYS)
    if width is None:
        raise PlanError(f"{source.path}: --arch generic needs the width from a config.json "
                        f"({', '.join(WIDTH_KEYS)})")
    if o.to_width <= width:
        raise PlanError(f"--to-width {o.to_width} is not larger than the source width {width}")
    if o.to_depth:
        raise PlanError("--arch generic cannot grow depth: it does not know the layers")
    ffn = config_value(config, FFN_KEYS)
    to_ffn = o.to_ffn or (ffn * o.to_width // width if ffn else None)
    grow = {width: o.to_width, **({ffn: to_ffn} if ffn else {})}
    tensors = []
    base_shapes = {}
    for name, (dtype, shape) in source.tensors.items():
        for d in shape:
            if d not in grow and d > width and d % width == 0:
                raise PlanError(f"tensor '{name}': axis of size {d} = {d // width} x width looks like fused "
                                "heads, which the generic layout cannot split; give --arch")
        growing = [d in grow for d in shape]
        out_shape = tuple(grow.get(d, d) for d in shape)
        role, fan_in = _role(name, growing) if any(growing) else (Role.BUFFER, None)
        base = [d if g else None for d, g in zip(shape, growing)]
        base_shapes[name] = base
        init = init_for(role, out_shape[fan_in] if fan_in is not None else None,
                        base[fan_in] if fan_in is not None else None, o)
        shrink, perturb = (1.0, 0.0) if role == Role.BUFFER else (o.shrink, o.perturb)
        tensors.append(TensorPlan(name, name, shape, out_shape, output_dtype(dtype, o.dtype), role,
                                  tuple((Segment(0, 0, d),) if d else () for d in shape), shrink, perturb, init,
                                  name, "generic" if any(growing) else "unchanged, copied"))
    heads = config_value(config, ("num_attention_heads", "n_head")) or 1
    src = Sizes(width, ffn or 0, heads, heads, width // heads, 0)
    dst = Sizes(o.to_width, to_ffn or 0, heads, heads, o.to_width // heads, 0)
    warnings = [f"generic architecture: every axis of size {width}"
                + (f" or {ffn}" if ffn else "") + " is padded top-left; heads and fused projections "
                "are not known, so check the result or give --arch"]
    new_config = dict(config)
    for keys, value in ((WIDTH_KEYS, o.to_width), (FFN_KEYS, to_ffn)):
        for k in keys:
            if k in new_config and value is not None:
                new_config[k] = value
    return Plan("generic", src, dst, o, tensors, new_config if source.config else None, base_shapes, [],
                warnings, sum(math.prod(s) for _, s in source.tensors.values()))
