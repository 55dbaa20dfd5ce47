"""Growth planning: from a source checkpoint's headers and the requested
target, decide for every output tensor its source, shape, where each old
element lands (segments per axis), μP role and init, and the knobs applied.
Nothing is read but headers and config; nothing is written.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .architectures import ARCHITECTURES, Architecture, Axis, Kind, Param, Role, by_name
from .errors import PlanError
from .safetensors_spec import ITEMSIZE
from .szp_spec import Constant, Init, Normal, Segment

INFINITE = {Kind.WIDTH, Kind.FFN, Kind.Q, Kind.KV}
GROWTH_WARNING = 2.5  # growth factor beyond which warm-starting was seen to stop paying
HEAD_POLICIES = ("heads", "head-dim")
DEPTH_POLICIES = ("stack", "interleave", "init")
NORM_POLICIES = ("shrink", "copy")
NORM_ROLES = (Role.NORM_GAIN, Role.NORM_BIAS)


@dataclass(frozen=True)
class Source:
    """What planning needs of a checkpoint: tensor dtypes and shapes, config, metadata."""

    path: str
    tensors: Mapping[str, tuple[str, tuple[int, ...]]]  # name -> (safetensors dtype, shape)
    config: dict | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, ckpt) -> Source:
        """From an open reader.Checkpoint."""
        return cls(str(ckpt.path), {n: (i.dtype, i.shape) for n, i in ckpt.tensors.items()},
                   ckpt.config, ckpt.metadata)


@dataclass(frozen=True)
class Sizes:
    width: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    layers: int
    vocab: int | None = None
    ctx: int | None = None

    def of(self, kind: Kind) -> int | None:
        return {Kind.WIDTH: self.width, Kind.FFN: self.ffn, Kind.Q: self.heads * self.head_dim,
                Kind.KV: self.kv_heads * self.head_dim, Kind.HEAD: self.head_dim,
                Kind.VOCAB: self.vocab, Kind.CTX: self.ctx}.get(kind)


@dataclass(frozen=True)
class GrowthOptions:
    """Every knob of a growth; defaults are DESIGN.md's."""

    to_width: int
    to_ffn: int | None = None
    to_depth: int | None = None
    head_policy: str = "heads"
    depth_policy: str = "stack"
    shrink: float = 0.4
    perturb: float = 1.0
    norms: str = "shrink"  # shrink: the operator as written; copy: old norm gains/biases copied
    seed: int = 0
    init_std: float = 0.02
    readout_init: str = "zero"
    dtype: str = "keep"  # keep | float32 | bfloat16 | float16
    arch: str | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None


@dataclass(frozen=True)
class TensorPlan:
    name: str
    source: str | None  # None: pure target init
    src_shape: tuple[int, ...] | None
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype of the output
    role: Role
    maps: tuple[tuple[Segment, ...], ...]
    shrink: float
    perturb: float
    init: Init
    noise_name: str  # the name whose stream the noise comes from (a tied readout uses its embedding's)
    note: str = ""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def row_numel(self) -> int:
        """Elements per row along axis 0 (a 0-d tensor is one row of one)."""
        return math.prod(self.shape[1:])

    @property
    def row_bytes(self) -> int:
        """Output bytes per row along axis 0."""
        return self.row_numel * ITEMSIZE[self.dtype]

    @property
    def noise_std(self) -> float:
        return self.init.std * self.perturb if isinstance(self.init, Normal) else 0.0


@dataclass
class Plan:
    arch: str
    source: Sizes
    target: Sizes
    options: GrowthOptions
    tensors: list[TensorPlan]
    config: dict | None
    base_shapes: dict[str, list[int | None]]
    layer_sources: list[int | None]
    warnings: list[str]
    params_before: int

    @property
    def params_after(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def bytes_after(self) -> int:
        return sum(t.numel * ITEMSIZE[t.dtype] for t in self.tensors)

    @property
    def param_ratio(self) -> float:
        return self.params_after / max(1, self.params_before)

    @property
    def growth(self) -> float:
        """The growth factor: width ratio times depth ratio (2x wider, same
        depth: 2.0, though the parameters grow about 4x)."""
        depth = self.target.layers / self.source.layers if self.source.layers else 1.0
        return self.target.width / self.source.width * depth

    def to_json(self) -> dict:
        """A machine-readable plan (`ws-convert plan --json`)."""
        def tensor(t: TensorPlan) -> dict:
            return {"name": t.name, "source": t.source, "src_shape": t.src_shape, "shape": t.shape,
                    "dtype": t.dtype, "role": t.role.value, "shrink": t.shrink, "perturb": t.perturb,
                    "init": {"normal_std": t.init.std} if isinstance(t.init, Normal) else
                            {"constant": t.init.value, "on_source": t.init.source_value},
                    "noise_std": t.noise_std, "noise_name": t.noise_name,
                    "maps": [[list(s) for s in axis] for axis in t.maps], "note": t.note}
        return {"arch": self.arch, "source": asdict(self.source), "target": asdict(self.target),
                "options": asdict(self.options), "params_before": self.params_before,
                "params_after": self.params_after, "bytes_after": self.bytes_after,
                "growth": self.growth, "param_ratio": self.param_ratio, "layer_sources": self.layer_sources, "warnings": self.warnings,
                "config": self.config, "tensors": [tensor(t) for t in self.tensors]}


# -- architecture and sizes --------------------------------------------------

def _find_prefix(arch: Architecture, names: set[str]) -> str | None:
    first = arch.globals[0].name
    return next((p for p in arch.prefixes if first.format(p=p) in names), None)


def detect(source: Source, arch_name: str | None) -> tuple[Architecture | None, str]:
    """The architecture (None: generic) and the model prefix its names carry."""
    names = set(source.tensors)
    if arch_name:
        try:
            arch = by_name(arch_name)
        except KeyError:
            raise PlanError(f"unknown --arch {arch_name!r}; known: {', '.join(sorted(ARCHITECTURES))}, "
                            "generic") from None
        if arch is None:
            return None, ""
        prefix = _find_prefix(arch, names)
        if prefix is None:
            raise PlanError(f"{source.path}: no '{arch.globals[0].name.format(p=arch.prefixes[0])}' "
                            f"tensor, so this is not a {arch.name} checkpoint")
        return arch, prefix
    model_type = (source.config or {}).get("model_type") or source.metadata.get("model_type")
    for arch in ARCHITECTURES.values():
        prefix = _find_prefix(arch, names)
        if prefix is not None and (model_type is None or model_type in arch.model_types):
            return arch, prefix
    raise PlanError(f"{source.path}: cannot tell the architecture (model_type {model_type!r}); "
                    f"give --arch ({', '.join(sorted(ARCHITECTURES))} or generic)")


def config_value(config: dict, keys: tuple[str, ...]) -> int | None:
    for k in keys:
        if isinstance(config.get(k), int) and not isinstance(config.get(k), bool):
            return config[k]
    return None


def source_sizes(arch: Architecture, prefix: str, source: Source, options: GrowthOptions) -> Sizes:
    """Sizes from config.json or metadata, then flags, then tensor shapes."""
    config = source.config or {}
    get = lambda key: config_value(config, arch.keys.get(key, ()))  # noqa: E731
    shape = lambda name: source.tensors[name.format(p=prefix)][1]  # noqa: E731
    emb = shape(arch.globals[0].name)
    width = get("width") or emb[1]
    vocab = get("vocab") or emb[0]
    layer_re = re.compile(re.escape(arch.layer.format(p=prefix, i="@")).replace("@", "([0-9]+)"))
    found = {int(m.group(1)) for n in source.tensors if (m := layer_re.match(n))}
    layers = get("layers") or (max(found) + 1 if found else 0)
    heads = options.num_heads or get("heads")
    if heads is None:
        raise PlanError(f"{source.path}: the head count is not in a config.json or the metadata; "
                        "give --num-heads")
    ffn = get("ffn") or (arch.ffn_default * width if arch.ffn_default else None)
    if ffn is None:
        up = next((p for p in arch.blocks if p.axes and p.axes[0] == Kind.FFN), None)
        ffn = shape(arch.layer.format(p=prefix, i=0) + up.name)[0]
    head_dim = get("head_dim") or width // heads
    kv_heads = options.num_kv_heads or get("kv_heads") or heads
    ctx = get("ctx")
    sizes = Sizes(width, ffn, heads, kv_heads, head_dim, layers, vocab, ctx)
    if heads <= 0 or kv_heads <= 0 or heads % kv_heads:
        raise PlanError(f"{source.path}: {heads} heads cannot be grouped over {kv_heads} kv-heads")
    return sizes


def target_sizes(src: Sizes, o: GrowthOptions, rotary: bool) -> Sizes:
    """Target sizes, refusing anything that cannot keep the structure."""
    w, w2 = src.width, o.to_width
    if w2 <= w:
        raise PlanError(f"--to-width {w2} is not larger than the source width {w}")
    if o.head_policy not in HEAD_POLICIES:
        raise PlanError(f"--head-policy must be one of {', '.join(HEAD_POLICIES)}")
    if o.head_policy == "heads":
        heads, kv, hd = src.heads * w2 / w, src.kv_heads * w2 / w, src.head_dim
        if heads != int(heads):
            raise PlanError(f"--to-width {w2} would give {src.heads} x {w2}/{w} = {heads:g} heads, not a whole "
                            f"number; pick a width that is a multiple of {w // math.gcd(w, src.heads)}")
        if kv != int(kv):
            raise PlanError(f"--to-width {w2} would give {kv:g} kv-heads, which breaks the GQA group size "
                            f"{src.heads // src.kv_heads}")
    else:
        heads, kv, hd = src.heads, src.kv_heads, src.head_dim * w2 / w
        if hd != int(hd) or (rotary and int(hd) % 2):
            raise PlanError(f"--to-width {w2} would give head_dim {hd:g}, which is not a whole"
                            f"{' even' if rotary else ''} number")
    if o.to_ffn is not None:
        ffn = o.to_ffn
        if ffn < src.ffn:
            raise PlanError(f"--to-ffn {ffn} is smaller than the source ffn {src.ffn}")
    else:
        ffn = src.ffn * w2 / w
        if ffn != int(ffn):
            raise PlanError(f"ffn {src.ffn} does not scale to a whole size at width {w2}; give --to-ffn")
    layers = o.to_depth or src.layers
    if layers < src.layers:
        raise PlanError(f"--to-depth {layers} is smaller than the source depth {src.layers}")
    if o.depth_policy not in DEPTH_POLICIES:
        raise PlanError(f"--depth-policy must be one of {', '.join(DEPTH_POLICIES)}")
    if o.norms not in NORM_POLICIES:
        raise PlanError(f"--norms must be one of {', '.join(NORM_POLICIES)}")
    if o.depth_policy in ("stack", "interleave") and layers % src.layers:
        raise PlanError(f"--depth-policy {o.depth_policy} repeats the {src.layers} source layers, so "
                        f"--to-depth must be a multiple of {src.layers} (got {layers}); or use init")
    return Sizes(w2, int(ffn), int(heads), int(kv), int(hd), layers, src.vocab, src.ctx)


def layer_sources(src_layers: int, layers: int, policy: str) -> list[int | None]:
    """Which source layer fills each target layer (None: pure init)."""
    if policy == "stack":
        return [j % src_layers for j in range(layers)]
    if policy == "interleave":
        return [j * src_layers // layers for j in range(layers)]
    return [j if j < src_layers else None for j in range(layers)]


# -- layouts ---------------------------------------------------------------

def _axis_segments(kind: Kind, src: Sizes, dst: Sizes, policy: str, rotary: bool) -> tuple[Segment, ...]:
    """Where source positions of one (unfused) axis land."""
    n_src = src.of(kind)
    if kind not in (Kind.Q, Kind.KV, Kind.HEAD) or policy == "heads":
        return (Segment(0, 0, n_src),)  # old head h stays head h; new heads come after
    heads = 1 if kind == Kind.HEAD else (src.heads if kind == Kind.Q else src.kv_heads)
    hd, hd2 = src.head_dim, dst.head_dim
    parts = ((0, 0, hd // 2), (hd2 // 2, hd // 2, hd // 2)) if rotary else ((0, 0, hd),)
    return tuple(Segment(h * hd2 + d, h * hd + s, n) for h in range(heads) for d, s, n in parts)


def axis_map(axis: Axis, src: Sizes, dst: Sizes, policy: str, rotary: bool) -> tuple[Segment, ...]:
    """Segments of a (possibly fused) axis: each fused part padded on its own."""
    parts = axis if isinstance(axis, tuple) else (axis,)
    segs, src_off, dst_off = [], 0, 0
    for kind in parts:
        segs += [Segment(d + dst_off, s + src_off, n)
                 for d, s, n in _axis_segments(kind, src, dst, policy, rotary)]
        src_off, dst_off = src_off + src.of(kind), dst_off + dst.of(kind)
    return tuple(segs)


def axis_size(axis: Axis, sizes: Sizes) -> int | None:
    parts = axis if isinstance(axis, tuple) else (axis,)
    values = [sizes.of(k) for k in parts]
    return None if None in values else sum(values)


def is_infinite(axis: Axis, policy: str) -> bool:
    parts = axis if isinstance(axis, tuple) else (axis,)
    return any(k in INFINITE or (k == Kind.HEAD and policy == "head-dim") for k in parts)


# -- base shapes and roles ------------------------------------------------------

def read_base_shapes(path: str | Path) -> dict[str, list[int | None]]:
    """A mup base-shapes file: YAML {name: [base_dim or null, ...]}."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PlanError(f"{path}: cannot read base shapes: {exc}") from None
    if not isinstance(data, dict) or not all(
            isinstance(v, list) and all(d is None or isinstance(d, int) for d in v) for v in data.values()):
        raise PlanError(f"{path}: base shapes must map names to lists of integers or null")
    return data


def write_base_shapes(base: Mapping[str, list[int | None]]) -> str:
    """YAML text in mup's .bsh format (one line per tensor, sorted)."""
    def dims(v):
        return "[" + ", ".join("null" if d is None else str(d) for d in v) + "]"
    return "".join(f"{name}: {dims(v)}\n" for name, v in sorted(base.items()))


def init_for(role: Role, fan_in: int | None, base_fan_in: int | None, o: GrowthOptions) -> Init:
    """The target's μP init (DESIGN.md section 4)."""
    if role == Role.HIDDEN:
        return Normal(o.init_std * math.sqrt((base_fan_in or fan_in) / fan_in))
    if role == Role.INPUT:
        return Normal(o.init_std)
    if role == Role.OUTPUT:
        return Normal(o.init_std) if o.readout_init == "normal" else Constant(0.0)
    if role == Role.NORM_GAIN:
        return Constant(1.0)
    return Constant(0.0)  # biases, norm biases, buffers


# -- the plan -------------------------------------------------------------------

def output_dtype(src_dtype: str, option: str) -> str:
    if option == "keep":
        return src_dtype
    return {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}[option]


def make_plan(source: Source, options: GrowthOptions, base_shapes_file: str | Path | None = None) -> Plan:
    """Plan a growth of `source`; raises PlanError before anything is written."""
    if options.readout_init not in ("zero", "normal"):
        raise PlanError("--readout-init must be zero or normal")
    if options.dtype not in ("keep", "float32", "bfloat16", "float16"):
        raise PlanError("--dtype must be keep, float32, bfloat16 or float16")
    arch, prefix = detect(source, options.arch)
    if arch is None:
        from .generic import plan_generic
        return plan_generic(source, options)
    src = source_sizes(arch, prefix, source, options)
    dst = target_sizes(src, options, arch.rotary)
    policy = options.head_policy
    base_file = read_base_shapes(base_shapes_file) if base_shapes_file else None
    config = source.config or {}
    tied = bool(config.get(arch.tie_key, arch.tie_default)) if arch.tie_key else False
    sources = layer_sources(src.layers, dst.layers, options.depth_policy)
    # μP base shapes: the source's own, or scaled to the base width its config names
    base_width = config_value(config, arch.keys.get("base_width", ())) or src.width

    def full(p: Param, i: int | None) -> str:
        name = p.name if i is None else arch.layer + p.name
        return name.format(p=prefix, i=i)

    wanted: list[tuple[Param, str, str | None]] = []  # (spec, output name, source name)
    for p in arch.globals:
        if full(p, None) in source.tensors:
            wanted.append((p, full(p, None), full(p, None)))
        elif not p.optional:
            raise PlanError(f"{source.path}: missing tensor '{full(p, None)}' of a {arch.name} checkpoint")
    for j, s in enumerate(sources):
        for p in arch.blocks:
            present = full(p, s if s is not None else 0) in source.tensors
            if not present and not p.optional:
                raise PlanError(f"{source.path}: missing tensor '{full(p, s if s is not None else 0)}'")
            if present:
                wanted.append((p, full(p, j), full(p, s) if s is not None else None))
    known = {full(p, None) for p in arch.globals} | {full(p, i) for i in range(src.layers) for p in arch.blocks}
    unknown = sorted(set(source.tensors) - known)
    if unknown:
        raise PlanError(f"{source.path}: tensor '{unknown[0]}' is not part of a {arch.name} model "
                        f"({len(unknown)} such); give --arch generic to pad it anyway")

    tensors, base_shapes = [], {}
    readout, embedding = (n.format(p=prefix) for n in arch.tied) if arch.tied else (None, None)
    for p, name, src_name in wanted:
        src_shape = tuple(axis_size(a, src) or 0 for a in p.axes)
        if src_name is not None:
            dtype, actual = source.tensors[src_name]
            expected = tuple(axis_size(a, src) or actual[k] for k, a in enumerate(p.axes))
            if actual != expected:
                raise PlanError(f"{source.path}: tensor '{src_name}' has shape {list(actual)}, the config "
                                f"says {list(expected)}; check --num-heads / --num-kv-heads")
            src_shape = actual
        else:
            dtype = source.tensors[full(p, 0)][0]
        shape = tuple(axis_size(a, dst) or src_shape[k] for k, a in enumerate(p.axes))
        maps = tuple(axis_map(a, src, dst, policy, arch.rotary) if axis_size(a, src) is not None
                     else (Segment(0, 0, src_shape[k]),) for k, a in enumerate(p.axes))
        if src_name is None:
            maps = tuple(() for _ in p.axes)
        base = base_file.get(name, base_file.get(src_name or "")) if base_file else None
        if base_file is not None and base is None:
            raise PlanError(f"{base_shapes_file}: no base shape for '{name}'")
        if base is None:
            base = [src_shape[k] * base_width // src.width if is_infinite(a, policy) else None
                    for k, a in enumerate(p.axes)]
        base_shapes[name] = list(base)
        fan_in = shape[p.fan_in] if p.fan_in is not None else None
        init = init_for(p.role, fan_in, base[p.fan_in] if p.fan_in is not None else None, options)
        noise_name, role, note = name, p.role, ""
        if tied and name == readout:  # stays tied: the same bytes as the embedding
            emb = next(q for q in arch.globals if q.name.format(p=prefix) == embedding)
            role, init, noise_name, note = emb.role, init_for(emb.role, None, None, options), embedding, "tied"
        shrink, perturb = options.shrink, options.perturb
        if p.role == Role.BUFFER:
            shrink, perturb, note = 1.0, 0.0, "buffer, copied"
        elif p.role in NORM_ROLES and options.norms == "copy":
            shrink, init, note = 1.0, Constant(init.value, on_source=0.0), "copied, new units at init"
        if src_name is None:
            note = "new layer, pure init"
        elif src_name != name:
            note = note or f"from {src_name}"
        tensors.append(TensorPlan(name, src_name, src_shape if src_name else None, shape,
                                  output_dtype(dtype, options.dtype), role, maps, shrink, perturb, init,
                                  noise_name, note))

    warnings = []
    plan = Plan(arch.name, src, dst, options, tensors, _grown_config(arch, source.config, dst, policy),
                base_shapes, sources, warnings, sum(math.prod(s) for _, s in source.tensors.values()))
    if plan.growth > GROWTH_WARNING:
        warnings.append(f"growth factor {plan.growth:g} (width x depth); beyond about {GROWTH_WARNING} "
                        "warm-starting was seen to stop paying off (around 2 is the most reliable)")
    return plan


def _grown_config(arch: Architecture, config: dict | None, dst: Sizes, policy: str) -> dict | None:
    """config.json for the grown model: every size key that is present, updated."""
    if config is None:
        return None
    out = dict(config)
    values = {"width": dst.width, "ffn": dst.ffn, "heads": dst.heads, "kv_heads": dst.kv_heads,
              "head_dim": dst.head_dim, "layers": dst.layers}
    for size, keys in arch.keys.items():
        if size not in values:
            continue
        for k in keys:
            if k in out and (out[k] is not None or (size == "ffn" and dst.ffn != (arch.ffn_default or 0) * dst.width)):
                out[k] = values[size]
    return out

