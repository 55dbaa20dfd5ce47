"""The bundled μP GPT: small enough to hold in your head.

Pre-norm blocks (RMSNorm), rotary positions, causal attention through
`scaled_dot_product_attention` with μP's 1/head_dim scale, a GELU MLP, and an
untied `mup.MuReadout`. Base shapes come from `base_width` (mup's
`set_base_shapes` against the same model at the base width), and the init is
μP's with zero readout and zero query by default. A checkpoint is one
safetensors file whose `__metadata__["config"]` holds the config, so
`ws-convert grow model.safetensors --to-width N` needs no side files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import CheckpointError
from .reader import Checkpoint, open_checkpoint

MODEL_TYPE = "ws_convert_gpt"


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 256
    context: int = 256
    width: int = 128
    depth: int = 4
    heads: int = 4
    ffn: int = 0  # 0: 4 x width
    base_width: int = 0  # 0: the width itself
    init_std: float = 0.02
    zero_query: bool = True
    zero_readout: bool = True
    rope_theta: float = 10000.0
    model_type: str = MODEL_TYPE

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context", "width", "depth", "heads", "ffn", "base_width"):
            value, least = getattr(self, name), 0 if name in ("ffn", "base_width") else 1  # 0: the default
            if type(value) is not int or value < least:
                raise ValueError(f"{name} must be a whole number of at least {least}, not {value!r}")
        if self.width % self.heads or (self.width // self.heads) % 2:
            raise ValueError(f"width {self.width} must split into {self.heads} heads of even size")
        object.__setattr__(self, "ffn", self.ffn or 4 * self.width)
        object.__setattr__(self, "base_width", self.base_width or self.width)

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def rotary(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate-half rotary embedding of x: (batch, heads, time, head_dim)."""
    t, d = x.shape[-2], x.shape[-1]
    inv = theta ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    angles = torch.outer(torch.arange(t, device=x.device, dtype=torch.float32), inv)
    cos, sin = torch.cat([angles.cos()] * 2, -1).to(x.dtype), torch.cat([angles.sin()] * 2, -1).to(x.dtype)
    half = torch.cat([-x[..., d // 2:], x[..., : d // 2]], -1)
    return x * cos + half * sin


class Attention(nn.Module):
    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.c = c
        self.q = nn.Linear(c.width, c.width, bias=False)
        self.k = nn.Linear(c.width, c.width, bias=False)
        self.v = nn.Linear(c.width, c.width, bias=False)
        self.o = nn.Linear(c.width, c.width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        split = lambda y: y.view(b, t, self.c.heads, self.c.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        q, k = rotary(q, self.c.rope_theta), rotary(k, self.c.rope_theta)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0 / self.c.head_dim)  # μP: 1/d
        return self.o(y.transpose(1, 2).reshape(b, t, self.c.width))


class Block(nn.Module):
    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.RMSNorm(c.width)
        self.attn = Attention(c)
        self.ln2 = nn.RMSNorm(c.width)
        self.fc = nn.Linear(c.width, c.ffn, bias=False)
        self.proj = nn.Linear(c.ffn, c.width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.proj(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        from mup import MuReadout

        self.config = c
        self.wte = nn.Embedding(c.vocab_size, c.width)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.depth))
        self.ln_f = nn.RMSNorm(c.width)
        self.lm_head = MuReadout(c.width, c.vocab_size, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def param_count(c: GPTConfig) -> int:
    """The model's parameters, counted without allocating them."""
    with torch.device("meta"):
        return sum(p.numel() for p in GPT(c).parameters())


def flops_per_token(c: GPTConfig) -> float:
    """Training FLOPs per token: 6 x parameters (forward and backward of
    every weight) plus the attention scores, 12 x depth x width x context.
    What "equal compute" means wherever runs of different widths are compared."""
    return 6 * param_count(c) + 12 * c.depth * c.width * c.context


def base_shapes(c: GPTConfig) -> dict[str, list[int | None]]:
    """mup base shapes: the model's shapes at base_width, null where an axis
    does not grow with width (found by comparing with twice the base)."""
    with torch.device("meta"):
        base = GPT(replace(c, width=c.base_width, ffn=c.ffn * c.base_width // c.width,
                           heads=c.heads * c.base_width // c.width, base_width=c.base_width))
        delta = GPT(replace(c, width=2 * c.base_width, ffn=2 * c.ffn * c.base_width // c.width,
                            heads=2 * c.heads * c.base_width // c.width, base_width=c.base_width))
    deltas = dict(delta.named_parameters())
    return {n: [b if b != d else None for b, d in zip(p.shape, deltas[n].shape)]
            for n, p in base.named_parameters()}


def build(c: GPTConfig, init: bool = True) -> GPT:
    """A μP GPT: base shapes set, and (with `init`) freshly μP-initialized."""
    from mup import set_base_shapes
    from mup.infshape import InfShape

    model = GPT(c)
    set_base_shapes(model, {n: InfShape.from_base_shape(b) for n, b in base_shapes(c).items()},
                    rescale_params=False)
    if init:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() == 1:
                    nn.init.ones_(p)  # norm gains
                elif name == "wte.weight":
                    nn.init.normal_(p, std=c.init_std)
                elif name == "lm_head.weight" and c.zero_readout:
                    nn.init.zeros_(p)
                elif name.endswith("attn.q.weight") and c.zero_query:
                    nn.init.zeros_(p)
                else:  # hidden: variance 1/fan_in relative to the base
                    base_fan_in = p.infshape[1].base_dim or p.shape[1]
                    nn.init.normal_(p, std=c.init_std * math.sqrt(base_fan_in / p.shape[1]))
    return model


def config_json(c: GPTConfig) -> str:
    """The text of config.json beside a checkpoint."""
    return json.dumps(c.to_dict(), indent=2, sort_keys=True) + "\n"


def save_weights(model: GPT, path: str | Path, metadata: Mapping[str, str] | None = None,
                 state: Mapping[str, torch.Tensor] | None = None) -> None:
    """model.safetensors with the config (and `metadata`) in __metadata__;
    `state` stands for the model's own where it is sharded."""
    from safetensors.torch import save_file

    config = json.dumps(model.config.to_dict(), sort_keys=True)
    state = {k: v.detach().contiguous().cpu() for k, v in (state or model.state_dict()).items()}
    save_file(state, path, metadata={"format": "pt", "config": config, **(metadata or {})})


def save(model: GPT, path: str | Path) -> None:
    """model.safetensors with the config in __metadata__, and config.json beside it."""
    path = Path(path)
    save_weights(model, path)
    (path.parent / "config.json").write_text(config_json(model.config))


def _config_of(ckpt: Checkpoint) -> GPTConfig:
    if not ckpt.config or ckpt.config.get("model_type") != MODEL_TYPE:
        raise CheckpointError(ckpt.path, f"not a {MODEL_TYPE} checkpoint (no such config)")
    try:
        c = GPTConfig.from_dict(ckpt.config)
        base_shapes(c)  # the base model must exist too
    except (TypeError, ValueError) as exc:
        raise CheckpointError(ckpt.path, f"config does not describe a model: {exc}") from None
    return c


def read_config(path: str | Path) -> GPTConfig:
    """The config of a μP GPT checkpoint, without loading its weights;
    anything else is refused with a CheckpointError."""
    with open_checkpoint(path) as ckpt:
        return _config_of(ckpt)


def load(path: str | Path) -> GPT:
    """A μP GPT from a checkpoint written by `save` or grown by ws-convert."""
    with open_checkpoint(path) as ckpt:
        model = build(_config_of(ckpt), init=False)
        state = {n: ckpt.tensor(n).clone() for n in ckpt.tensors}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(ckpt.path, f"tensors do not match the model (missing {missing[:3]}, "
                                         f"unexpected {unexpected[:3]})")
    return model
