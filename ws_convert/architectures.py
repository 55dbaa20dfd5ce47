"""Architectures as data: the tensors a model family has, the kind of every
axis in storage order, fused segments, μP roles, tied names, and which
config keys hold which sizes. Planning (plan.py) reads these; nothing here
computes anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Kind(str, Enum):
    """What an axis measures. WIDTH, FFN, Q, KV grow with width (μP-infinite);
    HEAD (head_dim alone) grows only under the head-dim policy."""

    WIDTH = "width"
    FFN = "ffn"
    Q = "q"  # heads x head_dim
    KV = "kv"  # kv-heads x head_dim
    HEAD = "head"  # head_dim
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


# An axis is one kind, or a fused axis: several kinds side by side (GPT-2's c_attn is [q | k | v]).
Axis = Kind | tuple[Kind, ...]

W, F, Q, KV, HD, V, C, X = (Kind.WIDTH, Kind.FFN, Kind.Q, Kind.KV, Kind.HEAD, Kind.VOCAB, Kind.CTX,
                            Kind.FIXED)


@dataclass(frozen=True)
class Param:
    """One tensor: its name ('{p}' is the model prefix, '{i}' the layer),
    its axes in storage order, its role, and which axis is fan-in."""

    name: str
    axes: tuple[Axis, ...]
    role: Role
    fan_in: int | None = None
    optional: bool = False


@dataclass(frozen=True)
class Architecture:
    name: str
    model_types: tuple[str, ...]  # config.json "model_type" values
    # size -> config keys that hold it: the first present one is read (transformers lets an alias
    # override the family's own name), the last is the family's own name, written when none is present
    keys: dict[str, tuple[str, ...]]
    prefixes: tuple[str, ...]  # model prefixes seen in checkpoints ('{p}')
    layer: str  # layer name prefix, '{p}' and '{i}' filled in
    globals: tuple[Param, ...]
    blocks: tuple[Param, ...]  # per layer, names relative to `layer`
    rotary: bool
    tied: tuple[str, str] | None = None  # (readout, embedding) sharing weights when tied
    tie_key: str | None = "tie_word_embeddings"
    tie_default: bool = False
    ffn_default: int | None = None  # ffn = this x width when the config leaves it empty
    aliases: tuple[str, ...] = field(default_factory=tuple)
    per_layer: tuple[str, ...] = ()  # config keys holding a list with one entry per layer

    @property
    def nullable(self) -> tuple[str, ...]:
        """Sizes a source config may set to null, read as derived from the
        others: head_dim = width / heads, kv-heads = heads, and ffn =
        ffn_default x width where the family has one."""
        return ("head_dim", "kv_heads", *(("ffn",) if self.ffn_default else ()))


_LLAMA_KEYS = {
    "width": ("hidden_size",), "ffn": ("intermediate_size",), "heads": ("num_attention_heads",),
    "kv_heads": ("num_key_value_heads",), "head_dim": ("head_dim",), "layers": ("num_hidden_layers",),
    "vocab": ("vocab_size",), "ctx": ("max_position_embeddings",),
}

LLAMA = Architecture(
    name="llama",
    model_types=("llama", "mistral", "qwen2", "qwen3"),
    keys=_LLAMA_KEYS,
    prefixes=("model.",),
    layer="{p}layers.{i}.",
    globals=(
        Param("{p}embed_tokens.weight", (V, W), Role.INPUT),
        Param("{p}norm.weight", (W,), Role.NORM_GAIN),
        Param("lm_head.weight", (V, W), Role.OUTPUT, fan_in=1, optional=True),
    ),
    blocks=(
        Param("input_layernorm.weight", (W,), Role.NORM_GAIN),
        Param("self_attn.q_proj.weight", (Q, W), Role.HIDDEN, fan_in=1),
        Param("self_attn.k_proj.weight", (KV, W), Role.HIDDEN, fan_in=1),
        Param("self_attn.v_proj.weight", (KV, W), Role.HIDDEN, fan_in=1),
        Param("self_attn.q_proj.bias", (Q,), Role.VECTOR, optional=True),  # Qwen2
        Param("self_attn.k_proj.bias", (KV,), Role.VECTOR, optional=True),
        Param("self_attn.v_proj.bias", (KV,), Role.VECTOR, optional=True),
        Param("self_attn.q_norm.weight", (HD,), Role.NORM_GAIN, optional=True),  # Qwen3
        Param("self_attn.k_norm.weight", (HD,), Role.NORM_GAIN, optional=True),
        Param("self_attn.o_proj.weight", (W, Q), Role.HIDDEN, fan_in=1),
        Param("self_attn.o_proj.bias", (W,), Role.VECTOR, optional=True),
        Param("post_attention_layernorm.weight", (W,), Role.NORM_GAIN),
        Param("mlp.gate_proj.weight", (F, W), Role.HIDDEN, fan_in=1),
        Param("mlp.up_proj.weight", (F, W), Role.HIDDEN, fan_in=1),
        Param("mlp.down_proj.weight", (W, F), Role.HIDDEN, fan_in=1),
    ),
    rotary=True,
    tied=("lm_head.weight", "{p}embed_tokens.weight"),
    aliases=("mistral", "qwen2", "qwen3"),
    per_layer=("layer_types",),
)

# Hugging Face GPT-2 stores Conv1D weights as [in, out].
GPT2 = Architecture(
    name="gpt2",
    model_types=("gpt2",),
    keys={"width": ("hidden_size", "n_embd"), "ffn": ("n_inner",), "heads": ("num_attention_heads", "n_head"),
          "layers": ("num_hidden_layers", "n_layer"), "vocab": ("vocab_size",),
          "ctx": ("max_position_embeddings", "n_positions")},
    prefixes=("transformer.", ""),
    layer="{p}h.{i}.",
    globals=(
        Param("{p}wte.weight", (V, W), Role.INPUT),
        Param("{p}wpe.weight", (C, W), Role.INPUT),
        Param("{p}ln_f.weight", (W,), Role.NORM_GAIN),
        Param("{p}ln_f.bias", (W,), Role.NORM_BIAS),
        Param("lm_head.weight", (V, W), Role.OUTPUT, fan_in=1, optional=True),
    ),
    blocks=(
        Param("ln_1.weight", (W,), Role.NORM_GAIN),
        Param("ln_1.bias", (W,), Role.NORM_BIAS),
        Param("attn.c_attn.weight", (W, (Q, KV, KV)), Role.HIDDEN, fan_in=0),
        Param("attn.c_attn.bias", ((Q, KV, KV),), Role.VECTOR),
        Param("attn.c_proj.weight", (Q, W), Role.HIDDEN, fan_in=0),
        Param("attn.c_proj.bias", (W,), Role.VECTOR),
        Param("attn.bias", (X, X, C, C), Role.BUFFER, optional=True),  # old checkpoints' causal mask
        Param("attn.masked_bias", (), Role.BUFFER, optional=True),
        Param("ln_2.weight", (W,), Role.NORM_GAIN),
        Param("ln_2.bias", (W,), Role.NORM_BIAS),
        Param("mlp.c_fc.weight", (W, F), Role.HIDDEN, fan_in=0),
        Param("mlp.c_fc.bias", (F,), Role.VECTOR),
        Param("mlp.c_proj.weight", (F, W), Role.HIDDEN, fan_in=0),
        Param("mlp.c_proj.bias", (W,), Role.VECTOR),
    ),
    rotary=False,
    tied=("lm_head.weight", "{p}wte.weight"),
    tie_default=True,
    ffn_default=4,
)

# The bundled μP GPT (ws_convert/model.py): [out, in] Linear weights, rotary, untied readout.
MUP_GPT = Architecture(
    name="mup-gpt",
    model_types=("ws_convert_gpt",),
    keys={"width": ("width",), "ffn": ("ffn",), "heads": ("heads",), "layers": ("depth",),
          "vocab": ("vocab_size",), "ctx": ("context",), "base_width": ("base_width",)},
    prefixes=("",),
    layer="{p}blocks.{i}.",
    globals=(
        Param("{p}wte.weight", (V, W), Role.INPUT),
        Param("{p}ln_f.weight", (W,), Role.NORM_GAIN),
        Param("{p}lm_head.weight", (V, W), Role.OUTPUT, fan_in=1),
    ),
    blocks=(
        Param("ln1.weight", (W,), Role.NORM_GAIN),
        Param("attn.q.weight", (Q, W), Role.HIDDEN, fan_in=1),
        Param("attn.k.weight", (KV, W), Role.HIDDEN, fan_in=1),
        Param("attn.v.weight", (KV, W), Role.HIDDEN, fan_in=1),
        Param("attn.o.weight", (W, Q), Role.HIDDEN, fan_in=1),
        Param("ln2.weight", (W,), Role.NORM_GAIN),
        Param("fc.weight", (F, W), Role.HIDDEN, fan_in=1),
        Param("proj.weight", (W, F), Role.HIDDEN, fan_in=1),
    ),
    rotary=True,
    tie_key=None,
    ffn_default=4,  # GPTConfig: a missing or null ffn is 4 x width
)

ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (GPT2, LLAMA, MUP_GPT)}
NAMES = sorted([*ARCHITECTURES, *LLAMA.aliases, "generic"])


def by_name(name: str) -> Architecture | None:
    """The architecture called `name` (an alias counts); None for 'generic'."""
    for arch in ARCHITECTURES.values():
        if name == arch.name or name in arch.aliases:
            return arch
    if name == "generic":
        return None
    raise KeyError(name)
