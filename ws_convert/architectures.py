"""The schema of a model family, which planning (plan.py) reads: the tensors a
family has, the kind of every axis in storage order, fused and per-head
interleaved layouts, μP roles, tied names, which config keys hold which
sizes, how norm gains are stored, and what growth cannot keep. The families
themselves are data, one file each, in ws_convert/families/.

A family file writes its tensors as a table, one tensor a line:

    self_attn.q_proj.weight            Q W           hidden@1
    attention.query_key_value.weight   Q:Q+KV+KV W   hidden@1   optional

name, then one token per axis, then the μP role (`@k`: axis k is fan-in),
then `optional` where the tensor may be absent and `zero=KEY` where the
model initialises it to zero when its config's KEY is true (the bundled
GPT's zero query), so growth adds no noise there either. A name holding
`{e}` is one tensor per expert of a mixture of experts. An axis token is a
kind (W width, F ffn, MF and SF a routed and a shared expert's ffn, Q heads x head_dim, KV kv-heads x head_dim, HD
head_dim, NH and NKV the head and kv-head counts, NE the expert count, V
vocab, C context, E the embedding projection, X fixed), kinds side by side
(`Q+KV+KV`: [q | k | v]), or blocks repeated per head or per kv head
(`Q:Q+KV+KV`: for each head its q, k and v; `KV:Q+KV+KV`: for each kv head
its group of q heads, then k and v).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum


class Kind(str, Enum):
    """What an axis measures. WIDTH, the FFNs, Q, KV and EMBED grow with width
    (μP-infinite); HEAD (head_dim alone) grows only under the head-dim
    policy, HEADS (the head count) only under the heads policy."""

    WIDTH = "width"
    FFN = "ffn"
    MOE_FFN = "moe_ffn"  # each routed expert's MLP size, where it differs from the dense one (Qwen MoE)
    SHARED_FFN = "shared_ffn"  # a shared expert's MLP size
    Q = "q"  # heads x head_dim
    KV = "kv"  # kv-heads x head_dim
    HEAD = "head"  # head_dim
    HEADS = "heads"  # the head count
    KV_HEADS = "kv_heads"  # the kv-head count
    EXPERTS = "experts"  # a mixture of experts' expert count (a router's output axis)
    EMBED = "embed"  # a token embedding narrower than the width, projected in and out (OPT)
    VOCAB = "vocab"
    CTX = "ctx"
    FIXED = "fixed"


class Role(str, Enum):
    """μP role (docs/DESIGN.md section 4), which fixes the init at the target."""

    HIDDEN = "hidden"  # matrix, fan_in and fan_out infinite
    INPUT = "input"  # embedding, fan_out infinite
    OUTPUT = "output"  # readout, fan_in infinite
    VECTOR = "vector"  # bias
    NORM_GAIN = "norm_gain"
    NORM_BIAS = "norm_bias"
    BUFFER = "buffer"  # not a parameter (a causal mask): copied as is


@dataclass(frozen=True)
class Interleaved:
    """An axis of blocks repeated per unit: for each head (unit Q) or each kv
    head (unit KV), its share of every part side by side. GPT-NeoX's
    query_key_value is Interleaved(Q, (Q, KV, KV)): per head, its q, k and v."""

    unit: Kind  # Kind.Q: one unit per head; Kind.KV: one per kv head
    parts: tuple[Kind, ...]


# An axis is one kind, several kinds side by side (GPT-2's c_attn is [q | k | v]), or interleaved per unit.
Axis = Kind | tuple[Kind, ...] | Interleaved

KIND_TOKENS = {"W": Kind.WIDTH, "F": Kind.FFN, "MF": Kind.MOE_FFN, "SF": Kind.SHARED_FFN, "Q": Kind.Q, "KV": Kind.KV,
               "HD": Kind.HEAD, "NH": Kind.HEADS, "NKV": Kind.KV_HEADS, "NE": Kind.EXPERTS, "E": Kind.EMBED,
               "V": Kind.VOCAB, "C": Kind.CTX, "X": Kind.FIXED}


@dataclass(frozen=True)
class Param:
    """One tensor: its name ('{p}' is the model prefix, '{i}' the layer),
    its axes in storage order, its role, and which axis is fan-in."""

    name: str
    axes: tuple[Axis, ...]
    role: Role
    fan_in: int | None = None
    optional: bool = False
    zero_key: str | None = None  # a config key that, when true, makes the model's init of this tensor zero


@dataclass(frozen=True)
class Caveat:
    """What growth cannot keep of the function, said in `plan`: when the
    width or the head count changes, and (if `config` is given) the config
    holds those values."""

    on: str  # "width" or "heads"
    text: str
    config: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Architecture:
    name: str
    model_types: tuple[str, ...]  # config.json "model_type" values
    classes: tuple[str, ...]  # the transformers classes of its causal LMs (config.json "architectures")
    # size -> config keys that hold it: the first present one is read (transformers lets an alias
    # override the family's own name), the last is the family's own name, written when none is present
    keys: Mapping[str, tuple[str, ...]]
    prefixes: tuple[str, ...]  # model prefixes seen in checkpoints ('{p}')
    layer: str  # layer name prefix, '{p}' and '{i}' filled in
    globals: tuple[Param, ...]
    blocks: tuple[Param, ...]  # per layer, names relative to `layer`
    rotary: str | None = None  # "half" (pairs j, j + r/2), "interleaved" (pairs 2j, 2j + 1) or None
    rotary_dim_key: str | None = None  # a config key giving the rotary dims per head (None there: all of them)
    tied: tuple[str, str] | None = None  # (readout, embedding) sharing weights when tied
    tie_key: str | None = "tie_word_embeddings"
    mup_readout: bool = False  # the readout divides by the width multiplier itself (μP's MuReadout)
    # why function-preserving operators cannot keep this family's function, if they cannot
    not_clonable: str | None = None
    tie_default: bool = False
    ffn_default: int | None = None  # ffn = this x width when the config leaves it empty
    aliases: tuple[str, ...] = ()
    per_layer: tuple[str, ...] = ()  # config keys holding a list with one entry per layer
    per_layer_runs: tuple[str, ...] = ()  # config keys holding the same as [[entries, repeat], ...] runs
    # (list of dense layer indices, sparse step) config keys of a mixture of experts whose layers may be dense
    dense_layers: tuple[str, str] | None = None
    # Upcycling into this mixture of experts: the dense model_types it takes, the dense row each expert
    # row starts from, the rows that start at their init (routers, a shared expert), and the config
    # values an upcycled model needs.
    upcycles: tuple[str, ...] = ()
    dense_rows: Mapping[str, str] = field(default_factory=dict)
    upcycle_init: tuple[str, ...] = ()
    upcycle_config: Mapping[str, object] = field(default_factory=dict)
    norm_offset: float = 0.0  # norm gains are stored as gain - norm_offset (Gemma: 1 + w)
    fixed: Mapping[str, int] = field(default_factory=dict)  # sizes this layout fixes (multi-query: kv_heads 1)
    when: Mapping[str, object] = field(default_factory=dict)  # config values selecting this layout
    defaults: Mapping[str, object] = field(default_factory=dict)  # the family's values of keys a config omits
    layout: str = ""  # which of the family's layouts, for messages
    caveats: tuple[Caveat, ...] = ()

    @property
    def nullable(self) -> tuple[str, ...]:
        """Sizes a source config may set to null, read as derived from the
        others: head_dim = width / heads, kv-heads = heads, the embedding
        projection = width, and ffn = ffn_default x width where the family
        has one."""
        return ("head_dim", "kv_heads", "embed", *(("ffn",) if self.ffn_default else ()))

    @property
    def title(self) -> str:
        return f"{self.name} ({self.layout})" if self.layout else self.name

    def selects(self, config: Mapping[str, object]) -> bool:
        """Whether `config` is of this layout (the family's defaults filling omitted keys)."""
        return all(config.get(k, self.defaults.get(k)) == v for k, v in self.when.items())

    def variant(self, **changes) -> Architecture:
        """This layout with some fields changed: a family that differs from another in a few."""
        return replace(self, **changes)


def _axis(token: str, where: str) -> Axis:
    def kind(t: str) -> Kind:
        if t not in KIND_TOKENS:
            raise ValueError(f"{where}: unknown axis kind {t!r}; known: {', '.join(KIND_TOKENS)}")
        return KIND_TOKENS[t]
    unit, _, parts = token.rpartition(":")
    kinds = tuple(kind(t) for t in parts.split("+"))
    if unit:
        return Interleaved(kind(unit), kinds)
    return kinds[0] if len(kinds) == 1 else kinds


def tensors(table: str) -> tuple[Param, ...]:
    """Parse a family's tensor table (see the module docstring)."""
    params = []
    for line in filter(str.strip, table.splitlines()):
        name, *tokens = line.split()
        flags = [t for t in tokens if t == "optional" or t.startswith("zero=")]
        *axes, role = tokens[:len(tokens) - len(flags)]
        role, _, fan_in = role.partition("@")
        zero = next((f.removeprefix("zero=") for f in flags if f.startswith("zero=")), None)
        params.append(Param(name, tuple(_axis(a, name) for a in axes), Role(role),
                            int(fan_in) if fan_in else None, "optional" in flags, zero))
    return tuple(params)
