"""Growth planning: from a source checkpoint's headers and the requested
target, decide for every output tensor its source, shape, where each old
element lands (segments per axis), μP role and init, and the knobs applied.
Nothing is read but headers and config; nothing is written.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from fractions import Fraction
from pathlib import Path

from .architectures import Architecture, Axis, Interleaved, Kind, Param, Role
from .families import ALL, BY_NAMES, NAMES, REFUSED, by_name, of_model_type
from .errors import PlanError
from .gc_pause import collection_paused
from .safetensors_spec import ITEMSIZE
from .operators import COPYING, DEFAULT_SHRINK, METHODS, Tiled, chosen_axis, scaled, tile_axis, unit_choice
from .szp_spec import KERNEL_DTYPES, Constant, Init, NoiseSegment, Normal, Segment, f32

INFINITE = {Kind.WIDTH, Kind.FFN, Kind.MOE_FFN, Kind.SHARED_FFN, Kind.Q, Kind.KV, Kind.EMBED}
GROWTH_WARNING = 2.5  # growth factor beyond which warm-starting was seen to stop paying
HEAD_POLICIES = ("heads", "head-dim")
DEPTH_POLICIES = ("stack", "interleave", "init", "identity")
NORM_POLICIES = ("shrink", "copy")
NORM_ROLES = (Role.NORM_GAIN, Role.NORM_BIAS)
MAX_DIM = 2**63 - 1  # no axis of a tensor that can be stored is longer
MAX_LAYERS = 1 << 16  # far deeper than any model; bounds the plan's size
OP_DTYPES = " or ".join([", ".join(list(KERNEL_DTYPES)[:-1]), list(KERNEL_DTYPES)[-1]])


@dataclass(frozen=True)
class Source:
    """What planning needs of a checkpoint: tensor dtypes and shapes, config, metadata."""

    path: str
    tensors: Mapping[str, tuple[str, tuple[int, ...]]]  # name -> (safetensors dtype, shape)
    config: dict | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    config_path: str | None = None  # where the config was read, for messages

    @classmethod
    @collection_paused()
    def of(cls, ckpt) -> Source:
        """From an open reader.Checkpoint."""
        config_path = None
        if ckpt.config is not None:
            beside = Path(ckpt.path).parent / "config.json"
            config_path = str(beside) if beside.is_file() else f"{ckpt.files[0]} (__metadata__ config)"
        return cls(str(ckpt.path), {n: (i.dtype, i.shape) for n, i in ckpt.tensors.items()},
                   ckpt.config, ckpt.metadata, config_path)

    @property
    def config_name(self) -> str:
        return self.config_path or f"{self.path} (config)"


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
    embed: int | None = None  # a token embedding narrower than the width (OPT's word_embed_proj_dim)
    rotary_dim: int = 0  # dims of each head that rotary positions turn (0: none)
    experts: int = 0  # a mixture of experts' expert count (kept)
    moe_ffn: int = 0  # a routed expert's MLP size where the family has its own key for it (0: none)
    shared_ffn: int = 0  # a shared expert's MLP size (0: none)

    def of(self, kind: Kind) -> int | None:
        return self._kinds.get(kind)

    @functools.cached_property
    def _kinds(self) -> dict[Kind, int | None]:
        """Each kind's size (cached: planning asks for every axis of every tensor)."""
        return {Kind.WIDTH: self.width, Kind.FFN: self.ffn, Kind.MOE_FFN: self.moe_ffn or None,
                Kind.SHARED_FFN: self.shared_ffn or None, Kind.Q: self.heads * self.head_dim,
                Kind.KV: self.kv_heads * self.head_dim, Kind.HEAD: self.head_dim, Kind.HEADS: self.heads,
                Kind.KV_HEADS: self.kv_heads, Kind.EXPERTS: self.experts, Kind.EMBED: self.embed,
                Kind.VOCAB: self.vocab, Kind.CTX: self.ctx}

    def units(self, kind: Kind) -> int:
        """How many units an Interleaved axis of this unit kind repeats over."""
        return self.heads if kind == Kind.Q else self.kv_heads


@dataclass(frozen=True)
class GrowthOptions:
    """Every knob of a growth; defaults are those of docs/DESIGN.md."""

    to_width: int | None = None  # None: the source width (depth-only growth)
    to_ffn: int | None = None
    to_depth: int | None = None
    head_policy: str = "heads"
    depth_policy: str = "stack"
    method: str = "szp"  # the growth operator: szp | hyperclone
    shrink: float | None = None  # None: the method's own (0.4 for szp, 1 for hyperclone)
    perturb: float = 1.0
    norms: str = "shrink"  # shrink: the operator as written; copy: old norm gains/biases copied
    seed: int = 0
    init_std: float = 0.02
    readout_init: str = "zero"
    dtype: str = "keep"  # keep | float32 | bfloat16 | float16
    arch: str | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None
    to_experts: int | None = None  # upcycle a dense model into its family's mixture of experts
    experts_top_k: int = 2


@dataclass
class TensorPlan:
    """One output tensor. Not changed once planned, but not a frozen
    dataclass either: building one of those sets every field through
    object.__setattr__, seven times slower, which a checkpoint of tens of
    thousands of tensors would feel."""

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
    noise_maps: tuple[tuple[NoiseSegment, ...], ...] | None = None  # None: each position's own noise
    fan_in: int | None = None  # the axis a μP role reads (None: unknown, or none)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def row_numel(self) -> int:
        """Elements per row along axis 0 (a 0-d tensor is one row of one)."""
        return math.prod(self.shape[1:])

    def __post_init__(self) -> None:
        # output bytes per row along axis 0: a plain attribute, as the engine asks per chunk
        self.row_bytes = math.prod(self.shape[1:]) * ITEMSIZE[self.dtype]
        self.nbytes = self.row_bytes * (self.shape[0] if self.shape else 1)  # as the writer lays it out

    @property
    def noise_std(self) -> float:
        return self.init.std * self.perturb if isinstance(self.init, Normal) else 0.0

    @property
    def unchanged(self) -> bool:
        """The output is its source as it is: same shape, every element in
        place, shrink 1 and nothing added."""
        added = self.noise_std if isinstance(self.init, Normal) else \
            self.perturb * (abs(self.init.value) + abs(self.init.source_value))
        return (self.source is not None and self.src_shape == self.shape and self.shrink == 1 and added == 0
                and all(m == (Segment(0, 0, d),) or (d == 0 and m == ()) for m, d in zip(self.maps, self.shape)))

    @property
    def verbatim(self) -> bool:
        """Copied byte for byte instead of computed: a dtype the op does not
        take, which planning admits only for an unchanged copy (a buffer).
        Float buffers still go through the op, which makes NaNs canonical and
        -0 into +0, so their bytes stay what they always were."""
        return self.dtype not in KERNEL_DTYPES


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
        return sum(t.nbytes for t in self.tensors)

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
    """The architecture (None: generic) and the model prefix its names carry:
    the family --arch names or the config's model_type gives, in the layout
    the config selects (Falcon has three)."""
    config = source.config or {}
    model_type = config.get("model_type") or source.metadata.get("model_type")
    if arch_name:
        try:
            layouts = by_name(arch_name)
        except KeyError:
            raise PlanError(f"unknown --arch {arch_name!r}; known: {', '.join(NAMES)}") from None
        if not layouts:
            return None, ""
        if model_type is not None and not any(model_type in a.model_types for a in layouts):
            # a family of the same tensor names may store them differently (Gemma's norm gain is 1 + w)
            raise PlanError(f"{source.config_name}: config says model_type {shown(model_type)}, which --arch "
                            f"{arch_name} does not describe ({', '.join(layouts[0].model_types)}); its layout or "
                            "norms may differ, so it is not grown as one")
    elif model_type in REFUSED:
        raise PlanError(f"{source.config_name}: {REFUSED[model_type]}")
    elif model_type is not None:
        layouts = of_model_type(model_type)
        if not layouts:
            raise PlanError(f"{source.config_name}: model_type {shown(model_type)} is not a family ws-convert grows "
                            "natively; give --arch generic to grow it by its config where its heads are provable")
    else:
        layouts = tuple(a for a in ALL if a.name in BY_NAMES and _find_prefix(a, set(source.tensors)) is not None)
        if not layouts:
            raise PlanError(f"{source.path}: cannot tell the architecture (no model_type); give --arch "
                            f"({', '.join(NAMES)})")
    arch = next((a for a in layouts if a.selects(config)), None)
    if arch is None:
        def setting(a: Architecture) -> str:
            return ", ".join(f"{k} {shown(v)}" for k, v in a.when.items())
        held = ", ".join(dict.fromkeys(f"{k} {shown(config.get(k, layouts[0].defaults.get(k)))}"
                                       for a in layouts for k in a.when))
        raise PlanError(f"{source.config_name}: this {layouts[0].name} config has {held}; ws-convert grows "
                        f"{layouts[0].name} only with {' or '.join(setting(a) for a in layouts)}")
    prefix = _find_prefix(arch, set(source.tensors))
    if prefix is None:
        raise PlanError(f"{source.path}: no '{arch.globals[0].name.format(p=arch.prefixes[0])}' "
                        f"tensor, so this is not a {arch.title} checkpoint")
    return arch, prefix


def shown(value: object) -> str:
    """A value from a file or a caller, short and on one line, for a message."""
    if type(value) is int and abs(value) > MAX_DIM:
        return f"{'-' if value < 0 else ''}a {value.bit_length()}-bit number"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def config_sizes(keys: Mapping[str, tuple[str, ...]], source: Source,
                 nullable: tuple[str, ...]) -> dict[str, tuple[int, str]]:
    """The sizes the config gives, as size -> (value, key): the first of each
    size's keys that is present, which must hold a positive whole number (or
    null, for the `nullable` sizes)."""
    config = source.config or {}
    given = {}
    for size, names in keys.items():
        key = next((k for k in names if k in config), None)
        if key is None or (config[key] is None and size in nullable):
            continue
        value = config[key]
        if type(value) is not int or value <= 0:
            raise PlanError(f"{source.config_name}: '{key}' is {shown(value)}, not a positive whole number")
        if value > MAX_DIM:
            raise PlanError(f"{source.config_name}: '{key}' is {shown(value)}, larger than any tensor can be")
        given[size] = (value, key)
    return given


# The sizes an axis kind is made of, to say where a wrong axis size came from.
KIND_SIZES = {Kind.WIDTH: ("width",), Kind.FFN: ("ffn",), Kind.Q: ("heads", "head_dim"),
              Kind.KV: ("kv_heads", "head_dim"), Kind.HEAD: ("head_dim",), Kind.VOCAB: ("vocab",),
              Kind.CTX: ("ctx",)}


def _read_sizes(arch: Architecture, prefix: str, source: Source,
                options: GrowthOptions) -> tuple[Sizes, dict[str, str]]:
    """Sizes from config.json or metadata, then flags, then tensor shapes,
    and where each came from (for messages). Only what the sizes need of
    the tensors is checked here."""
    given = config_sizes(arch.keys, source, arch.nullable)
    value = {size: v for size, (v, _) in given.items()}
    origin = {size: f"'{key}' in {source.config_name}" for size, (_, key) in given.items()}
    for size, flag, v in (("heads", "--num-heads", options.num_heads), ("kv_heads", "--num-kv-heads",
                                                                        options.num_kv_heads)):
        if v:
            value[size], origin[size] = v, flag
    for size, v in arch.fixed.items():
        value[size], origin[size] = v, f"the {arch.title} layout"

    def derive(size: str, v: int, where: str) -> None:
        if size not in value:
            value[size], origin[size] = v, where

    def positive(*sizes: str) -> None:
        for size in sizes:
            if value[size] == 0:
                raise PlanError(f"{source.path}: {origin[size]} gives {size} 0")

    emb_name = arch.globals[0].name.format(p=prefix)
    emb = source.tensors[emb_name][1]
    if len(emb) != 2:
        raise PlanError(f"{source.path}: tensor '{emb_name}' has shape {list(emb)}, not [vocab, width]")
    derive("width", emb[1], f"the shape of '{emb_name}'")
    derive("vocab", emb[0], f"the shape of '{emb_name}'")
    positive("width", "vocab")
    for p in arch.globals:  # a position embedding holds the context
        name = p.name.format(p=prefix)
        if Kind.CTX in p.axes and name in source.tensors and len(source.tensors[name][1]) == len(p.axes):
            derive("ctx", source.tensors[name][1][p.axes.index(Kind.CTX)], f"the shape of '{name}'")
            positive("ctx")

    layer_re = re.compile(re.escape(arch.layer.format(p=prefix, i="@")).replace("@", "([0-9]+)"))
    found = set(map(int, {m.group(1) for m in map(layer_re.match, source.tensors) if m}))
    if not found and "layers" not in value:
        raise PlanError(f"{source.path}: no layer tensors ('{arch.layer.format(p=prefix, i=0)}...')")
    derive("layers", max(found, default=-1) + 1, "the layer tensors")
    layers = value["layers"]
    if len(found) != layers or max(found, default=-1) != layers - 1:
        if "layers" in given:
            raise PlanError(f"{source.path}: {origin['layers']} gives {layers} layers, but the checkpoint "
                            f"has tensors of {len(found)}")
        missing = next(i for i in range(layers) if i not in found)
        raise PlanError(f"{source.path}: layer {missing} has no tensors (layer {layers - 1} has)")
    config = source.config or {}
    for key in (*arch.per_layer, *arch.per_layer_runs):
        entries = config.get(key)
        if key in arch.per_layer_runs and entries is not None:
            entries = expand_runs(entries) if isinstance(entries, list) else entries
        if entries is not None and (not isinstance(entries, list) or len(entries) != layers):
            count = f"{len(entries)} entries" if isinstance(entries, list) else shown(config.get(key))
            raise PlanError(f"{source.config_name}: '{key}' is {count}, not one entry for each of {layers} layers")
    if arch.tie_key in config and type(config[arch.tie_key]) is not bool:
        raise PlanError(f"{source.config_name}: '{arch.tie_key}' is {shown(config[arch.tie_key])}, not true or false")

    if "heads" not in value:
        raise PlanError(f"{source.path}: the head count is not in a config.json or the metadata; "
                        "give --num-heads")
    heads, width = value["heads"], value["width"]
    derive("kv_heads", heads, origin["heads"])
    derive("head_dim", width // heads, origin["heads"])
    if value["head_dim"] == 0:
        raise PlanError(f"{source.path}: {origin['heads']} gives {heads} heads, more than the width {width} "
                        "holds (and no head_dim is given)")
    if "head_dim" not in arch.keys and heads * value["head_dim"] != width:
        raise PlanError(f"{source.path}: {origin['heads']} gives {heads} heads, which do not divide the width "
                        f"{width} ({arch.name} heads are width / heads wide)")
    rotary_dim = _rotary_dim(arch, source, value["head_dim"], origin["head_dim"])
    if heads % value["kv_heads"]:
        raise PlanError(f"{source.path}: {origin['kv_heads']} gives {value['kv_heads']} kv-heads, which do not "
                        f"divide the {heads} heads")
    if arch.ffn_default:
        derive("ffn", arch.ffn_default * width, f"{origin['width']} (ffn {arch.ffn_default} x width)")
    elif "ffn" not in value:
        up = next(name for p, name in layer_params(arch, prefix, 1) if p.axes and p.axes[0] == Kind.FFN)
        name = arch.layer.format(p=prefix, i=0) + up
        if name not in source.tensors:
            raise PlanError(f"{source.path}: missing tensor '{name}'")
        derive("ffn", (source.tensors[name][1] or (0,))[0], f"the shape of '{name}'")
    positive("ffn")
    if "embed" in arch.keys:
        derive("embed", width, origin["width"])
    if "experts" in arch.keys and "experts" not in value:
        raise PlanError(f"{source.config_name}: no expert count ('{arch.keys['experts'][-1]}'), which a {arch.name} "
                        "model needs")
    sizes = Sizes(width, value["ffn"], heads, value["kv_heads"], value["head_dim"], layers, value["vocab"],
                  value.get("ctx"), value.get("embed"), rotary_dim, value.get("experts", 0), value.get("moe_ffn", 0),
                  value.get("shared_ffn", 0))
    return sizes, origin


def _rotary_dim(arch: Architecture, source: Source, head_dim: int, origin: str) -> int:
    """How many dims of each head rotary positions turn: all (0 without
    rotary), a count the config gives, or head_dim times a fraction."""
    if not arch.rotary:
        return 0
    config = source.config or {}
    if arch.rotary_dim_key:
        key, dims = arch.rotary_dim_key, config.get(arch.rotary_dim_key)
        if dims is None:
            dims = head_dim
        elif type(dims) is not int or not 0 < dims <= head_dim:
            raise PlanError(f"{source.config_name}: '{key}' is {shown(dims)}, not a whole number from 1 to the "
                            f"head_dim {head_dim}")
    else:
        rope = config.get("rope_parameters")
        held = [(f"'{k}' in 'rope_parameters'" if h is rope else f"'{k}'", h[k])
                for h, k in ((rope, "partial_rotary_factor"), (config, "partial_rotary_factor"), (config, "rotary_pct"))
                if isinstance(h, dict) and h.get(k) is not None]
        key, factor = held[0] if held else ("the default rotary fraction",
                                            arch.defaults.get("partial_rotary_factor", 1.0))
        if type(factor) not in (int, float) or not 0 < factor <= 1:
            raise PlanError(f"{source.config_name}: {key} is {shown(factor)}, not a fraction from 0 to 1")
        dims = int(head_dim * factor)
    if dims % 2:
        if dims == head_dim:
            raise PlanError(f"{source.path}: {origin} gives head_dim {head_dim}, but rotary positions need an even one")
        raise PlanError(f"{source.config_name}: {key} turns {dims} dims of each head, but rotary positions need an "
                        "even number")
    return dims


def layer_params(arch: Architecture, prefix: str, experts: int) -> list[tuple[Param, str]]:
    """A layer's rows and their names relative to the layer, each per-expert
    row ('{e}') once for every expert (all sharing the row's Param)."""
    return [(p, (p.name.replace("{e}", str(e)) if "{e}" in p.name else p.name).format(p=prefix))
            for p in arch.blocks for e in (range(experts) if "{e}" in p.name else (0,))]


def _arch_params(arch: Architecture, prefix: str, layers: int, experts: int) -> list[tuple[Param, str]]:
    """Every tensor of the architecture with its full name (globals, then layer by layer)."""
    blocks = layer_params(arch, prefix, experts)
    return [(p, p.name.format(p=prefix)) for p in arch.globals] + [
        (p, start + name) for start in layer_starts(arch, prefix, layers) for p, name in blocks]


def layer_starts(arch: Architecture, prefix: str, layers: int) -> list[str]:
    """The name prefix of each layer's tensors."""
    return [arch.layer.format(p=prefix, i=i) for i in range(layers)]


def _check_shapes(arch: Architecture, prefix: str, source: Source, sizes: Sizes, origin: dict[str, str]) -> None:
    """Every tensor of the architecture in `source` has the shape `sizes` give it."""
    expect: dict[tuple, list[int | None]] = {}  # per axes: the rows of a table repeat over layers and experts
    right: set[tuple] = set()  # (axes, shape) pairs already found right
    shapes = source.tensors
    for p, name in _arch_params(arch, prefix, sizes.layers, sizes.experts):
        held = shapes.get(name)
        if held is None or (p.axes, held[1]) in right:
            continue
        actual = held[1]
        if len(actual) != len(p.axes):
            raise PlanError(f"{source.path}: tensor '{name}' has shape {list(actual)}, not the {len(p.axes)} "
                            f"axes of a {arch.name} '{p.name}'")
        if p.axes not in expect:
            expect[p.axes] = [axis_size(a, sizes) for a in p.axes]
        expected = expect[p.axes]
        wrong = [a for a, e, d in zip(p.axes, expected, actual) if e is not None and e != d]
        if wrong:
            kinds = [k for a in wrong for k in (a if isinstance(a, tuple) else (a,))]
            where = dict.fromkeys(origin[s] for k in kinds for s in KIND_SIZES.get(k, ()) if s in origin)
            want = [d if e is None else e for e, d in zip(expected, actual)]
            raise PlanError(f"{source.path}: tensor '{name}' has shape {list(actual)}, but {' and '.join(where)} "
                            f"{'give' if len(where) > 1 else 'gives'} it {want}")
        right.add((p.axes, actual))


def source_sizes(arch: Architecture, prefix: str, source: Source, options: GrowthOptions) -> Sizes:
    """Sizes from config.json or metadata, then flags, then tensor shapes;
    refused unless every tensor of the architecture has the shape they give."""
    sizes, origin = _read_sizes(arch, prefix, source, options)
    _check_shapes(arch, prefix, source, sizes, origin)
    return sizes


def _whole(x: Fraction) -> bool:
    return x.denominator == 1


def multi_query(arch: Architecture, src: Sizes) -> bool:
    """Whether one kv head serves every head, and stays one as heads are added."""
    return arch.fixed.get("kv_heads") == 1 or ("kv_heads" in arch.keys and src.kv_heads == 1 < src.heads)


def width_step(src: Sizes, o: GrowthOptions, arch: Architecture) -> int:
    """The least step of target widths that keeps whole (and even, where it
    must be) every size target_sizes scales with the width: a --to-width
    that is a multiple of it passes all of those checks at once."""
    w = src.width
    scaled = [(src.moe_ffn, 1), (src.shared_ffn, 1), (src.embed or 0, 1), (0 if o.to_ffn else src.ffn, 1)]
    if o.head_policy == "heads":
        scaled += [(src.heads, 1), (0 if multi_query(arch, src) else src.kv_heads, 1)]
    else:
        scaled += [(src.head_dim, 2 if arch.rotary else 1), (src.rotary_dim, 2)]
    # size * w2 / w is a multiple of k exactly when w2 is a multiple of k * w / gcd(k * w, size)
    return math.lcm(*(k * w // math.gcd(k * w, size) for size, k in scaled))


def target_sizes(src: Sizes, o: GrowthOptions, arch: Architecture) -> Sizes:
    """Target sizes, refusing anything that cannot keep the structure."""
    w, w2 = src.width, o.to_width or src.width
    step = width_step(src, o, arch)
    hint = f"a --to-width that is a multiple of {step}, such as {-(-w2 // step) * step}"
    layers = o.to_depth or src.layers
    if w2 < w:
        raise PlanError(f"--to-width {w2} is smaller than the source width {w}")
    if w2 == w and layers == src.layers and o.to_experts is None:
        raise PlanError(f"nothing to grow: the target has the source's width {w} and depth {src.layers}; "
                        "give a larger --to-width or --to-depth")
    if o.head_policy not in HEAD_POLICIES:
        raise PlanError(f"--head-policy must be one of {', '.join(HEAD_POLICIES)}")
    if o.head_policy == "heads":
        heads, kv, hd = Fraction(src.heads * w2, w), Fraction(src.kv_heads * w2, w), Fraction(src.head_dim)
        rotary = Fraction(src.rotary_dim)
        if multi_query(arch, src):
            kv = Fraction(1)
        if not _whole(heads):
            raise PlanError(f"--to-width {w2} would give {src.heads} x {w2}/{w} = {float(heads):g} heads, not a "
                            f"whole number; pick {hint}")
        if not _whole(kv):
            raise PlanError(f"--to-width {w2} would give {float(kv):g} kv-heads, which breaks the GQA group size "
                            f"{src.heads // src.kv_heads}; pick {hint}")
    else:
        heads, kv, hd = Fraction(src.heads), Fraction(src.kv_heads), Fraction(src.head_dim * w2, w)
        rotary = Fraction(src.rotary_dim * w2, w)
        if not _whole(hd) or (arch.rotary and hd % 2):
            raise PlanError(f"--to-width {w2} would give head_dim {float(hd):g}, which is not a whole"
                            f"{' even' if arch.rotary else ''} number; pick {hint}")
        if not _whole(rotary) or rotary % 2:
            raise PlanError(f"--to-width {w2} would turn {float(rotary):g} rotary dims of each head ({src.rotary_dim} "
                            f"of {src.head_dim} now), not a whole even number; pick {hint}")
    if o.to_ffn is not None:
        ffn = Fraction(o.to_ffn)
        if ffn < src.ffn:
            raise PlanError(f"--to-ffn {o.to_ffn} is smaller than the source ffn {src.ffn}")
        if "ffn" not in arch.keys and ffn != arch.ffn_default * w2:
            raise PlanError(f"--to-ffn {o.to_ffn}: a {arch.name} model's ffn is always {arch.ffn_default} x width "
                            f"({arch.ffn_default * w2} at width {w2}); its config has no size for it")
    else:
        ffn = Fraction(src.ffn * w2, w)
        if not _whole(ffn):
            raise PlanError(f"ffn {src.ffn} does not scale to a whole size at width {w2}; give --to-ffn, or pick "
                            f"{hint}")
    if layers < src.layers:
        raise PlanError(f"--to-depth {layers} is smaller than the source depth {src.layers}")
    if o.depth_policy not in DEPTH_POLICIES:
        raise PlanError(f"--depth-policy must be one of {', '.join(DEPTH_POLICIES)}")
    if o.norms not in NORM_POLICIES:
        raise PlanError(f"--norms must be one of {', '.join(NORM_POLICIES)}")
    if o.depth_policy in ("stack", "interleave") and layers % src.layers:
        raise PlanError(f"--depth-policy {o.depth_policy} repeats the {src.layers} source layers, so "
                        f"--to-depth must be a multiple of {src.layers} (got {layers}); or use init")
    experts_ffn = {}
    for size in ("moe_ffn", "shared_ffn"):  # an expert's MLP grows like the dense one
        value = Fraction(getattr(src, size) * w2, w)
        if not _whole(value):
            raise PlanError(f"{size} {getattr(src, size)} does not scale to a whole size at width {w2}; pick {hint}")
        experts_ffn[size] = int(value)
    embed = src.embed and Fraction(src.embed * w2, w)
    if embed is not None and not _whole(embed):
        raise PlanError(f"--to-width {w2} would give the embedding projection {float(embed):g} dims "
                        f"({src.embed} at width {w}), not a whole number; pick {hint}")
    return Sizes(w2, int(ffn), int(heads), int(kv), int(hd), layers, src.vocab, src.ctx,
                 None if embed is None else int(embed), int(rotary), src.experts, **experts_ffn)


def layer_sources(src_layers: int, layers: int, policy: str) -> list[int | None]:
    """Which source layer fills each target layer (None: pure init)."""
    if policy == "stack":
        return [j % src_layers for j in range(layers)]
    if policy == "interleave":
        return [j * src_layers // layers for j in range(layers)]
    if policy == "identity":
        return [s for s, _ in identity_blocks(src_layers, layers)]
    return [j if j < src_layers else None for j in range(layers)]


def identity_blocks(src_layers: int, layers: int) -> list[tuple[int, bool]]:
    """Block expansion: (source layer, is a copy) per target layer. The k new
    blocks are spread evenly, copy i after source layer (i + 1) * L // k - 1,
    so each group of layers gains a copy of its last layer."""
    k = layers - src_layers
    after = [(i + 1) * src_layers // k - 1 for i in range(k)] if k else []
    out = []
    for s in range(src_layers):
        out.append((s, False))
        out.extend((s, True) for a in after if a == s)
    return out


def writes_residual(p: Param) -> bool:
    """A block tensor that adds to the residual stream: a matrix whose output
    axis is the width (attention and MLP output projections, every expert's
    down projection) or a bias along the width. Zero in a copied block, they
    make the block the identity (a post-norm of zero is zero too)."""
    if p.role == Role.VECTOR:
        return p.axes == (Kind.WIDTH,)
    if p.role != Role.HIDDEN or len(p.axes) != 2 or p.fan_in is None:
        return False
    return p.axes[1 - p.fan_in] == Kind.WIDTH


# -- layouts ---------------------------------------------------------------

def head_segments(src: Sizes, dst: Sizes, rotary: str | None) -> tuple[Segment, ...]:
    """Where one head's dims land when the head widens: rotary pairs stay
    pairs (rotate-half pairs j with j + r/2, so each half of the rotary dims
    moves on its own; interleaved pairs are adjacent), and the dims rotary
    leaves alone follow the new rotary dims."""
    hd, r, r2 = src.head_dim, src.rotary_dim, dst.rotary_dim
    parts = ((0, 0, r // 2), (r2 // 2, r // 2, r // 2)) if rotary == "half" else ((0, 0, r),)
    return tuple(Segment(*p) for p in (*parts, (r2, r, hd - r)) if p[2])


def _part_segments(kind: Kind, per_src: int, per_dst: int, src: Sizes, dst: Sizes, policy: str,
                   head: tuple[Segment, ...]) -> list[Segment]:
    """Where one part of an axis lands (offsets within the part): whole, as
    new heads or units come after the old ones; or head by head when each
    head widens."""
    if kind not in (Kind.Q, Kind.KV, Kind.HEAD) or policy == "heads":
        return [Segment(0, 0, per_src)]
    hd, hd2 = src.head_dim, dst.head_dim
    return [Segment(h * hd2 + d, h * hd + s, n) for h in range(per_src // hd) for d, s, n, _ in head]


def axis_map(axis: Axis, src: Sizes, dst: Sizes, policy: str, rotary: str | None) -> tuple[Segment, ...]:
    """Segments of an axis: each unit (head or kv head, for an Interleaved
    axis; else one) and each part within it padded on its own. Old unit u
    stays unit u; within it, old head h of a part stays head h."""
    unit, parts = (axis.unit, axis.parts) if isinstance(axis, Interleaved) else \
        (None, axis if isinstance(axis, tuple) else (axis,))
    units_src, units_dst = (src.units(unit), dst.units(unit)) if unit else (1, 1)
    per_src = [src.of(k) // units_src for k in parts]  # each part's length within one unit
    per_dst = [dst.of(k) // units_dst for k in parts]
    head = head_segments(src, dst, rotary) if policy == "head-dim" else ()
    segs: list[Segment] = []
    for u in range(units_src):
        s_off, d_off = u * sum(per_src), u * sum(per_dst)
        for kind, n_src, n_dst in zip(parts, per_src, per_dst):
            segs += [Segment(d + d_off, s + s_off, n)
                     for d, s, n, _ in _part_segments(kind, n_src, n_dst, src, dst, policy, head)]
            s_off, d_off = s_off + n_src, d_off + n_dst
    return _merged(segs)


def _merged(segs: list[Segment]) -> tuple[Segment, ...]:
    """Adjacent segments that continue each other as one: fewer, longer copies."""
    out: list[Segment] = []
    for seg in segs:
        if out and out[-1].dst + out[-1].length == seg.dst and out[-1].src + out[-1].length == seg.src:
            out[-1] = Segment(out[-1].dst, out[-1].src, out[-1].length + seg.length)
        else:
            out.append(seg)
    return tuple(out)


def _parts(axis: Axis) -> tuple[Kind, ...]:
    return axis.parts if isinstance(axis, Interleaved) else axis if isinstance(axis, tuple) else (axis,)


def axis_size(axis: Axis, sizes: Sizes) -> int | None:
    values = [sizes.of(k) for k in _parts(axis)]
    return None if None in values else sum(values)


def is_infinite(axis: Axis, policy: str) -> bool:
    return any(k in INFINITE or (k == Kind.HEAD and policy == "head-dim")
               or (k in (Kind.HEADS, Kind.KV_HEADS) and policy == "heads") for k in _parts(axis))


# -- base shapes and roles ------------------------------------------------------

def read_base_shapes(path: str | Path) -> dict[str, object]:
    """A mup base-shapes file: YAML {name: [base_dim or null, ...]}. Each
    tensor's entry is checked where it is used (`base_shape`)."""
    import yaml

    from .reader import read_file

    raw = read_file(Path(path))  # refuses what is not a regular file, or too large, naming it
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise PlanError(f"{path}: base shapes are not UTF-8 text") from None
    except RecursionError:
        raise PlanError(f"{path}: base shapes are nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or type(exc).__name__
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise PlanError(f"{path}: base shapes are not valid YAML ({problem}{where})") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise PlanError(f"{path}: base shapes must map tensor names to lists of base sizes")
    return data


def base_shape(base_file: Mapping[str, object] | None, path: str | Path | None, name: str,
               src_name: str | None, ndim: int) -> list[int | None] | None:
    """The base shape a base-shapes file gives tensor `name` (or else its
    source), which must be `ndim` positive whole numbers or nulls; None
    without a file."""
    if base_file is None:
        return None
    key = name if name in base_file else src_name if src_name in base_file else None
    if key is None:
        raise PlanError(f"{path}: no base shape for '{name}'")
    dims = base_file[key]
    if not (isinstance(dims, list) and len(dims) == ndim
            and all(d is None or (type(d) is int and 0 < d <= MAX_DIM) for d in dims)):
        raise PlanError(f"{path}: the base shape of '{key}' is {shown(dims)}, not a list of {ndim} positive "
                        "whole numbers or nulls")
    return dims


def write_base_shapes(base: Mapping[str, list[int | None]]) -> str:
    """YAML text in mup's .bsh format (one line per tensor, sorted)."""
    @functools.cache  # a checkpoint of many tensors has few distinct base shapes
    def dims(v: tuple[int | None, ...]) -> str:
        return "[" + ", ".join("null" if d is None else str(d) for d in v) + "]"
    return "".join(f"{name}: {dims(tuple(base[name]))}\n" for name in sorted(base))


def init_for(role: Role, fan_in: int | None, base_fan_in: int | None, o: GrowthOptions) -> Init:
    """The target's μP init (docs/DESIGN.md section 4)."""
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
    """The output dtype under --dtype. It converts only what the op computes
    (F32, BF16, F16); any other dtype (integer and boolean buffers, F64, F8,
    C64), which only an unchanged copy may have, keeps its own."""
    if option == "keep" or src_dtype not in KERNEL_DTYPES:
        return src_dtype
    return {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}[option]


def _check_options(o: GrowthOptions) -> None:
    """Knobs a plan can be made of: whole sizes an output can have, finite scales."""
    for flag, value, most in (("--to-width", o.to_width, MAX_DIM), ("--to-ffn", o.to_ffn, MAX_DIM),
                              ("--to-experts", o.to_experts, MAX_LAYERS),
                              ("--to-depth", o.to_depth, MAX_LAYERS), ("--num-heads", o.num_heads, MAX_DIM),
                              ("--num-kv-heads", o.num_kv_heads, MAX_DIM)):
        if value is None:
            continue
        if type(value) is not int or value <= 0:
            raise PlanError(f"{flag} must be a positive whole number, not {shown(value)}")
        if value > most:
            raise PlanError(f"{flag} {shown(value)} is beyond the largest that can be written ({most})")
    if o.to_width is None and o.to_depth is None and o.to_experts is None:
        raise PlanError("give --to-width, --to-depth, --to-experts or several")
    if o.method != "szp" and o.head_policy != "heads":
        raise PlanError(f"--method {o.method} copies whole heads; --head-policy {o.head_policy} is for szp")
    if o.method != "szp" and o.to_experts is not None:
        raise PlanError(f"--to-experts starts every expert through szp; it does not take --method {o.method}")
    if o.to_experts is not None and not 0 < o.experts_top_k <= o.to_experts:
        raise PlanError(f"--experts-top-k {shown(o.experts_top_k)} must be from 1 to the --to-experts {o.to_experts}")
    if type(o.seed) is not int or not 0 <= o.seed < 2**64:
        raise PlanError(f"--seed must be a whole number from 0 to 2**64 - 1, not {shown(o.seed)}")
    for flag, value in (("--shrink", o.shrink), ("--perturb", o.perturb), ("--init-std", o.init_std)):
        try:
            finite = type(value) in (int, float) and math.isfinite(value)
        except OverflowError:  # an int beyond any float
            finite = False
        if not finite:
            raise PlanError(f"{flag} must be a finite number, not {shown(value)}")
    if o.readout_init not in ("zero", "normal"):
        raise PlanError("--readout-init must be zero or normal")
    if o.dtype not in ("keep", "float32", "bfloat16", "float16"):
        raise PlanError("--dtype must be keep, float32, bfloat16 or float16")


def _float32(x: float) -> bool:
    """Whether the kernel's float32 knob can hold x."""
    try:
        return math.isfinite(f32(x))
    except OverflowError:
        return False


def _check_tensors(source: Source, plan: Plan) -> None:
    """What the engine must be able to do with every planned tensor: compute
    it (or copy it unchanged), with float32 knobs, into a file that can
    address it."""
    o = plan.options
    fitting: set[tuple[float, float, int]] = set()  # knobs checked: a plan has few distinct ones (and inits)
    for t in plan.tensors:
        if t.verbatim and not t.unchanged:
            raise PlanError(f"{source.path}: tensor '{t.source or t.name}' is {t.dtype}, which the op cannot "
                            f"compute ({t.role.value}); it takes {OP_DTYPES}")
        knobs = (t.shrink, t.perturb, id(t.init))
        if knobs in fitting:
            continue
        scales = [t.shrink, t.noise_std] if isinstance(t.init, Normal) else [
            t.shrink, t.perturb * t.init.value, t.perturb * t.init.source_value]
        bad = next((x for x in scales if not _float32(x)), None)
        if bad is not None:
            raise PlanError(f"tensor '{t.name}': --shrink {o.shrink:g}, --perturb {o.perturb:g} and --init-std "
                            f"{o.init_std:g} give it a scale of {bad:g}, beyond float32")
        fitting.add(knobs)
    if plan.bytes_after > MAX_DIM:
        largest = max(plan.tensors, key=lambda t: t.numel * ITEMSIZE[t.dtype])
        raise PlanError(f"the grown checkpoint would take {plan.bytes_after} bytes (tensor '{largest.name}' "
                        f"{list(largest.shape)}), more than a file can address; pick a smaller --to-width, "
                        "--to-ffn or --to-depth")


@collection_paused()
def make_plan(source: Source, options: GrowthOptions, base_shapes_file: str | Path | None = None) -> Plan:
    """Plan a growth of `source`; raises PlanError before anything is written."""
    if options.method not in METHODS:
        raise PlanError(f"--method must be one of {', '.join(METHODS)}")
    if options.shrink is None:
        options = replace(options, shrink=DEFAULT_SHRINK[options.method])
    _check_options(options)
    base_file = read_base_shapes(base_shapes_file) if base_shapes_file else None
    arch, prefix = detect(source, options.arch)
    if arch is None and options.method != "szp":
        raise PlanError(f"--method {options.method} needs the layout of a known family; --arch generic only pads")
    if arch is not None and arch.not_clonable and options.method in COPYING:
        raise PlanError(f"--method {options.method} cannot keep a {arch.name} model's function: {arch.not_clonable}")
    if arch is not None and options.method in COPYING and not arch.mup_readout and not any(
            p.role in NORM_ROLES for p in arch.globals) and _tied(arch, source.config or {}):
        raise PlanError(f"--method {options.method}: a {arch.name} model with tied embeddings and no final norm "
                        "gain cannot keep its function (the readout cannot divide: it is the embedding)")
    if arch is None:
        from .generic import plan_generic
        plan = plan_generic(source, options, base_file, base_shapes_file)
    elif options.to_experts:
        from .upcycle import plan_upcycle
        plan = plan_upcycle(arch, prefix, source, options, base_file, base_shapes_file)
    else:
        plan = _plan_arch(arch, prefix, source, options, base_file, base_shapes_file)
        _check_grown_config(arch, prefix, source, plan)
    _check_tensors(source, plan)
    return plan


def _tied(arch: Architecture, config: Mapping[str, object]) -> bool:
    return bool(config.get(arch.tie_key, arch.tie_default)) if arch.tie_key else False


def _plan_arch(arch: Architecture, prefix: str, source: Source, options: GrowthOptions,
               base_file: Mapping[str, object] | None, base_shapes_file: str | Path | None,
               created: frozenset[str] = frozenset()) -> Plan:
    """The plan of a family model; the layer rows in `created` have no source
    and start at the init in every layer (an upcycled model's routers)."""
    src = source_sizes(arch, prefix, source, options)
    dst = target_sizes(src, options, arch)
    policy = options.head_policy
    config = source.config or {}
    tied = _tied(arch, config)
    if options.method == "net2net" and tied and not arch.mup_readout and src.embed not in (None, src.width):
        raise PlanError("--method net2net: a tied readout behind a projection (OPT's word_embed_proj_dim) cannot "
                        "divide its copies; untie it or use --method hyperclone")
    sources = layer_sources(src.layers, dst.layers, options.depth_policy)
    copies = {j for j, (_, copy) in enumerate(identity_blocks(src.layers, dst.layers)) if copy} \
        if options.depth_policy == "identity" else set()
    # μP base shapes: the source's own, or scaled to the base width its config names
    base_width = config_sizes(arch.keys, source, arch.nullable).get("base_width", (src.width,))[0]

    starts = layer_starts(arch, prefix, max(src.layers, len(sources)))
    blocks = layer_params(arch, prefix, src.experts)
    wanted: list[tuple[Param, str, str | None, str]] = []  # (spec, output name, source name, layer 0's name)
    zeroed: set[str] = set()  # the residual writers of copied blocks (--depth-policy identity)
    for p in arch.globals:
        name = p.name.format(p=prefix)
        if name in source.tensors:
            wanted.append((p, name, name, name))
        elif not p.optional:
            raise PlanError(f"{source.path}: missing tensor '{name}' of a {arch.name} checkpoint")
    for j, s in enumerate(sources):
        for p, rel in blocks:
            # a buffer is no parameter to initialise: a new layer copies layer 0's
            s_p = 0 if s is None and p.role == Role.BUFFER else s
            name, first = starts[j] + rel, starts[0] + rel
            if p.name in created:
                wanted.append((p, name, None, first))
                continue
            held = first if s_p is None else starts[s_p] + rel
            if held not in source.tensors:
                if not p.optional:
                    raise PlanError(f"{source.path}: missing tensor '{held}'")
                continue
            wanted.append((p, name, held if s_p is not None else None, first))
            if j in copies and writes_residual(p):
                zeroed.add(name)
    known = {name for _, name in _arch_params(arch, prefix, src.layers, src.experts)}
    unknown = sorted(set(source.tensors) - known)
    if unknown:
        raise PlanError(f"{source.path}: tensor '{unknown[0]}' is not part of a {arch.name} model "
                        f"({len(unknown)} such); give --arch generic to pad it anyway")

    layouts: dict[tuple, tuple] = {}
    readout, embedding = (n.format(p=prefix) for n in arch.tied) if arch.tied else (None, None)

    def kind_of(p: Param, name: str, src_name: str | None, dtype: str, src_shape: tuple[int, ...],
                base: tuple[int | None, ...] | None) -> tuple:
        """Everything planned of a tensor but its names: the same for every
        tensor of one row, layout and source presence (so, over the layers
        and experts of a checkpoint of tens of thousands of tensors, few)."""
        key = (p.axes, src_shape)
        if key not in layouts:  # the rows of a table repeat over layers and experts
            sized = [axis_size(a, src) is not None for a in p.axes]
            shape = tuple(axis_size(a, dst) if has else src_shape[k]
                          for k, (a, has) in enumerate(zip(p.axes, sized)))
            if options.method == "hyperclone":
                tiled = tuple(tile_axis(a, src, dst) if has else Tiled((Segment(0, 0, src_shape[k]),), 1, ())
                              for k, (a, has) in enumerate(zip(p.axes, sized)))
                layouts[key] = shape, tuple(t.segments for t in tiled), tiled
            else:
                placed = tuple(axis_map(a, src, dst, policy, arch.rotary) if has else (Segment(0, 0, src_shape[k]),)
                               for k, (a, has) in enumerate(zip(p.axes, sized)))
                layouts[key] = shape, placed, None
        shape, maps, tiled = layouts[key]
        if src_name is None:
            maps = tuple(() for _ in p.axes)
        if base is None:  # scaled from the source's shape
            base = tuple(src_shape[k] * base_width // src.width if is_infinite(a, policy) else None
                         for k, a in enumerate(p.axes))
        fan_in = shape[p.fan_in] if p.fan_in is not None else None
        init = init_for(p.role, fan_in, base[p.fan_in] if p.fan_in is not None else None, options)
        noise_name, role, note = None, p.role, ""
        if p.zero_key and config.get(p.zero_key, arch.defaults.get(p.zero_key)):
            init, note = Constant(0.0), f"zero at init ({p.zero_key}), no noise"
        if tied and name == readout:  # stays tied: the same bytes as the embedding
            emb = next(q for q in arch.globals if q.name.format(p=prefix) == embedding)
            role, init, noise_name, note = emb.role, init_for(emb.role, None, None, options), embedding, "tied"
        shrink, perturb = options.shrink, options.perturb
        noise_maps = None
        if p.role == Role.BUFFER:
            shrink, perturb, note = 1.0, 0.0, "buffer, copied"
        elif tiled is not None and src_name is not None:
            maps, noise_maps, init, shrink, perturb, note = _cloned(
                arch, p, name == readout and tied, p in arch.globals, tiled, maps, init, shrink, perturb, tied,
                dst.width // src.width)
        elif options.method == "net2net" and src_name is not None:
            maps, init, note = _widened(arch, p, name == readout and tied, p in arch.globals, tied, src, dst,
                                        _choices(src, dst, options.seed, name.rsplit(".", 2)[0]), src_shape, init)
        elif p.role in NORM_ROLES and options.norms == "copy":
            shrink, init, note = 1.0, Constant(init.value, on_source=0.0), "copied, new units at init"
        if p.role == Role.NORM_GAIN and arch.norm_offset:
            # the operator acts on the gain; the file holds gain - offset
            off = arch.norm_offset
            init = Constant(perturb * init.value - off, on_source=perturb * init.source_value + (shrink - 1) * off)
            perturb, note = 1.0, note or f"stored as gain - {off:g}"
        if name in zeroed:
            init, shrink, perturb, note = Constant(0.0), 0.0, 1.0, "copied block: its output starts at zero"
        elif src_name is None:
            note = "pure init" if p.name in created else "new layer, pure init"
        return (src_shape if src_name else None, shape, output_dtype(dtype, options.dtype), role, maps, shrink,
                perturb, init, noise_name, note, noise_maps, p.fan_in if not (tied and name == readout) else None,
                base)

    tensors, base_shapes = [], {}
    kinds: dict[tuple, tuple] = {}
    for p, name, src_name, first in wanted:
        # a new layer's tensor has the shape of layer 0's (source_sizes checked it); a created one, its
        # sizes', a fixed axis being one unit (a gate's)
        if p.name in created:
            dtype, src_shape = source.tensors[arch.globals[0].name.format(p=prefix)][0], tuple(
                axis_size(a, src) or 1 for a in p.axes)
        else:
            dtype, src_shape = source.tensors[src_name or first]
        if name in zeroed:
            src_name = None
        given = base_shape(base_file, base_shapes_file, name, src_name, len(p.axes))
        given = None if given is None else tuple(given)
        kind = (id(p), src_shape, dtype, src_name is None, name in zeroed, name == readout, given,
                name if options.method == "net2net" else None)  # its choices of units differ per layer
        fields = kinds.get(kind)
        if fields is None:
            fields = kinds[kind] = kind_of(p, name, src_name, dtype, src_shape, given)
        (planned_src_shape, shape, dtype_out, role, maps, shrink, perturb, init, noise_name, note, noise_maps,
         fan_in, base) = fields
        if not note and src_name is not None and src_name != name:
            note = f"from {src_name}"
        base_shapes[name] = list(base)
        tensors.append(TensorPlan(name, src_name, planned_src_shape, shape, dtype_out, role, maps, shrink, perturb,
                                  init, noise_name or name, note, noise_maps, fan_in))

    warnings = [c.text for c in arch.caveats
                if (dst.width != src.width if c.on == "width" else dst.heads != src.heads)
                and all(config.get(k, arch.defaults.get(k)) == v for k, v in c.config.items())]
    if multi_query(arch, src) and dst.heads != src.heads:
        warnings.append(f"multi-query attention: the one kv head stays one and serves all {dst.heads} heads "
                        f"(the group size grows {src.heads} -> {dst.heads})")
    plan = Plan(arch.name, src, dst, options, tensors,
                _grown_config(arch, source.config, src, dst, sources, options.dtype), base_shapes, sources,
                warnings, sum(math.prod(s) for _, s in source.tensors.values()))
    if plan.growth > GROWTH_WARNING:
        warnings.append(f"growth factor {plan.growth:g} (width x depth); beyond about {GROWTH_WARNING} "
                        "warm-starting was seen to stop paying off (around 2 is the most reliable)")
    return plan


def _cloned(arch: Architecture, p: Param, tied_readout: bool, is_global: bool, tiled: tuple[Tiled, ...],
            maps: tuple, init: Init, shrink: float, perturb: float, tied: bool,
            width_copies: int) -> tuple[tuple, tuple | None, Init, float, float, str]:
    """HyperCloning's knobs of one tensor (maps, noise maps, init, shrink,
    perturb, note). The hidden state is tiled, so a tensor that reads it
    (fan-in) divides by the copies, and its noise comes in +/- pairs along
    the fan-in copies; a tensor that does not (an embedding, a bias) is
    copied without noise. The readout divides unless μP's readout does it
    already; a tied readout cannot (it is the embedding), so the final norm
    divides instead."""
    if p.role in NORM_ROLES:
        if is_global and tied and not arch.mup_readout:
            return (maps, None, Constant(init.value, on_source=0.0), shrink / width_copies, perturb,
                    f"copied, / {width_copies} for the tied readout")
        return maps, None, Constant(init.value, on_source=0.0), shrink, perturb, "copied"
    fan = None if tied_readout else p.fan_in
    copies = tiled[fan].copies if fan is not None else 1
    if not copies:
        raise PlanError(f"--method hyperclone: the parts of the fan-in axis of '{p.name}' grow by different factors")
    divisor = 1 if p.role == Role.OUTPUT and arch.mup_readout else copies
    if divisor > 1:
        maps = tuple(scaled(m, 1 / divisor) if k == fan else m for k, m in enumerate(maps))
    noise_maps = None
    if isinstance(init, Normal):
        if copies > 1:
            noise_maps = tuple(tiled[k].pairs if k == fan else () for k in range(len(maps)))
        else:
            perturb = 0.0
    note = "tiled" + (f", fan-in / {divisor}" if divisor > 1 else "") + (", noise +/- in pairs" if noise_maps else "")
    return maps, noise_maps, init, shrink, perturb, note


def _choices(src: Sizes, dst: Sizes, seed: int, group: str) -> Callable[[Kind], tuple[int, ...]]:
    """Net2Net's unit choices of the tensors of one module (`group`, such as
    model.layers.3.mlp): the width is one choice for the whole model; a
    module's ffn and kv heads are its own; query heads follow their kv
    head's choice group by group (a new group copies an old group whole), or
    are chosen alone when one kv head serves them all."""
    memo: dict[Kind, tuple[int, ...]] = {}

    def choice(kind: Kind) -> tuple[int, ...]:
        kind = {Kind.HEADS: Kind.Q, Kind.KV_HEADS: Kind.KV}.get(kind, kind)
        if kind not in memo:
            if kind == Kind.EMBED and src.embed == src.width:  # no projection between them: one axis
                memo[kind] = choice(Kind.WIDTH)
            elif kind in (Kind.WIDTH, Kind.EMBED):
                memo[kind] = unit_choice(seed, kind.value, src.of(kind), dst.of(kind))
            elif kind in (Kind.FFN, Kind.MOE_FFN, Kind.SHARED_FFN):
                memo[kind] = unit_choice(seed, f"{group}:{kind.value}", src.of(kind), dst.of(kind))
            elif kind == Kind.KV:
                memo[kind] = unit_choice(seed, f"{group}:kv", src.kv_heads, dst.kv_heads)
            elif kind == Kind.Q and dst.kv_heads == src.kv_heads:  # multi-query: the one kv head stays
                memo[kind] = unit_choice(seed, f"{group}:q", src.heads, dst.heads)
            elif kind == Kind.Q:
                g, kv = src.heads // src.kv_heads, choice(Kind.KV)
                memo[kind] = tuple(kv[j // g] * g + j % g for j in range(dst.heads))
            else:  # what does not grow: vocabulary, positions, experts, head_dim
                memo[kind] = tuple(range(src.of(kind)))
        return memo[kind]

    return choice


def _widened(arch: Architecture, p: Param, tied_readout: bool, is_global: bool, tied: bool, src: Sizes, dst: Sizes,
             choice: Callable[[Kind], tuple[int, ...]], src_shape: tuple[int, ...], init: Init) -> tuple:
    """Net2Net's maps of one tensor, its init and note: new units copy the
    chosen old ones, a fan-in axis divides each copy by its unit's copies;
    under μP's own readout the readout also takes back the width multiplier
    it divides by; a tied readout is the embedding, so the final norm
    divides in its place. Norm gains are copied."""
    fan = None if tied_readout else p.fan_in
    if p.role in NORM_ROLES:
        init = Constant(init.value, on_source=0.0)
        fan = 0 if is_global and tied and not arch.mup_readout else None
    maps = tuple(chosen_axis(a, src, dst, choice, k == fan) if axis_size(a, src) is not None
                 else (Segment(0, 0, src_shape[k]),) for k, a in enumerate(p.axes))
    if p.role == Role.OUTPUT and arch.mup_readout and fan is not None:
        maps = tuple(scaled(m, dst.width / src.width) if k == fan else m for k, m in enumerate(maps))
    return maps, init, "new units copy old ones" + (", fan-in / copies" if fan is not None else "")


def _check_grown_config(arch: Architecture, prefix: str, source: Source, plan: Plan) -> None:
    """Never write a config that disagrees with the tensors: the grown config
    must state every size (see _grown_config) and, read back as the
    source's was, give the target's sizes, and every grown tensor the shape
    they make."""
    if plan.config is None:
        return
    o, dst = plan.options, plan.target
    for size, keys in arch.keys.items():
        if (getattr(dst, size, None) is not None and not _left_to_default(arch, size, dst)
                and all(plan.config.get(k) is None for k in keys)):
            raise PlanError(f"{source.config_name}: the grown config leaves '{keys[-1]}' out, which the families "
                            f"read differently; it must say {size} {getattr(dst, size)}")
    grown = Source(source.path, {t.name: (t.dtype, t.shape) for t in plan.tensors}, plan.config,
                   source.metadata, source.config_path)
    flags = replace(o, num_heads=o.num_heads and dst.heads, num_kv_heads=o.num_kv_heads and dst.kv_heads)
    sizes, origin = _read_sizes(arch, prefix, grown, flags)
    for f in fields(Sizes):
        got, want = getattr(sizes, f.name), getattr(dst, f.name)
        if got != want:
            key = arch.keys.get(f.name, (f.name,))[0]
            held = f"would be {shown(plan.config[key])}" if plan.config.get(key) is not None else "is not given"
            raise PlanError(f"{source.config_name}: in the grown config '{key}' {held}, which reads as "
                            f"{f.name} {got}, but the grown tensors have {f.name} {want}")
    _check_shapes(arch, prefix, grown, sizes, origin)


def _left_to_default(arch: Architecture, size: str, dst: Sizes) -> bool:
    """Whether the grown config may leave `size` out: only an ffn that is the
    family's ffn_default x width."""
    return size == "ffn" and bool(arch.ffn_default) and arch.ffn_default * dst.width == dst.ffn


DTYPE_KEYS = ("torch_dtype", "dtype")  # transformers 4 writes the first, 5 the second


def config_dtype(config: dict, option: str) -> dict:
    """A copy of the config naming the dtype --dtype converts the weights to,
    in each of DTYPE_KEYS it holds, so transformers loads the weights in it."""
    return {**config, **({} if option == "keep" else {k: option for k in DTYPE_KEYS if k in config})}


def _grown_config(arch: Architecture, config: dict | None, src: Sizes, dst: Sizes,
                  sources: list[int | None], dtype: str = "keep") -> dict | None:
    """config.json for the grown model, stating every grown size: the keys it
    holds updated, and a size it leaves out or null written out, since the
    families' defaults for a missing key differ (Qwen3's head_dim is 128,
    not width / heads). Only an ffn left to the family's ffn_default x width
    stays so while that gives the grown ffn. Per-layer lists follow the layers,
    and the dtype --dtype gives is named (config_dtype)."""
    if config is None:
        return None
    out = config_dtype(config, dtype)
    values = {"width": dst.width, "ffn": dst.ffn, "heads": dst.heads, "kv_heads": dst.kv_heads,
              "head_dim": dst.head_dim, "layers": dst.layers, "vocab": dst.vocab, "ctx": dst.ctx, "embed": dst.embed,
              "experts": dst.experts, "moe_ffn": dst.moe_ffn, "shared_ffn": dst.shared_ffn}
    for size, keys in arch.keys.items():
        if values.get(size) is None:
            continue
        held = [k for k in keys if out.get(k) is not None]
        if held:
            out.update(dict.fromkeys(held, values[size]))
        elif not _left_to_default(arch, size, dst):
            out[next((k for k in keys if k in out), keys[-1])] = values[size]
    def follow(entries: list) -> list:
        return [entries[j % src.layers if s is None else s] for j, s in enumerate(sources)]
    for key in arch.per_layer:
        if isinstance(out.get(key), list):
            out[key] = follow(out[key])
    for key in arch.per_layer_runs:
        if out.get(key) is not None:
            out[key] = [[follow(expand_runs(out[key])), 1]]
    if arch.rotary_dim_key and out.get(arch.rotary_dim_key) is not None:
        out[arch.rotary_dim_key] = dst.rotary_dim
    if arch.dense_layers and dst.layers != src.layers:
        # a new layer is dense where its source layer is (a new layer of pure init takes layer 0's form)
        listed, step = arch.dense_layers
        dense = {i for i in range(src.layers) if i in (out.get(listed) or []) or (i + 1) % (out.get(step) or 1)}
        out[listed] = [j for j, s in enumerate(sources) if (0 if s is None else s) in dense]
        out[step] = 1
    return out


def expand_runs(runs: object) -> list | None:
    """[[entries, repeat], ...] as one entry per layer; None if not of that form."""
    try:
        out = [e for entries, repeat in runs for _ in range(repeat) for e in entries]
    except (TypeError, ValueError):
        return None
    return out if all(type(r[1]) is int for r in runs) else None
