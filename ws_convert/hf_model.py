"""Hugging Face families under μP, for the trainer: a natively grown
family's own transformers class built from a config.json, with mup's base
shapes, a μP readout (logits divided by the width multiplier, as
`mup.MuReadout` does; a tied readout stays tied through
`mup.MuSharedReadout`), and μP's attention scale once heads have widened.

A model directory here is what `grow` writes and the trainer continues:
`config.json`, `model.safetensors`, `base_shapes.bsh` and the tokenizer
files. Where head_dim has grown with width (`--head-policy head-dim`), the
attention scale is the base's times d0 / head_dim, d0 being head_dim at the
base width: 1/sqrt(d0) x d0/head_dim = sqrt(d0)/head_dim for most families,
so μP's 1/head_dim beyond the base. The config records d0 as `ws_convert_attention_base_head_dim`
so a later run, or a grown copy, keeps it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from .architectures import Architecture, Param, Role
from .errors import CheckpointError, WsConvertError
from .families import by_name, of_model_type

BASE_SHAPES_NAME = "base_shapes.bsh"
BASE_HEAD_DIM_KEY = "ws_convert_attention_base_head_dim"


def _transformers():
    try:
        import transformers
    except ImportError:
        raise WsConvertError("training a Hugging Face family needs the transformers package "
                             "(pip install transformers)") from None
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # the trainer shows its own progress
    return transformers


class CausalLM(nn.Module):
    """A transformers causal LM seen as the trainer sees a model: token ids in, logits out."""

    def __init__(self, hf: nn.Module, arch: Architecture) -> None:
        super().__init__()
        self.hf, self.arch = hf, arch
        # kept apart from the parameters, which sharding replaces by ones without mup's infshape
        self.base_shapes = {n: list(p.infshape.base_shape()) for n, p in hf.named_parameters()}
        self.readout = readout_name(hf)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=idx, use_cache=False).logits

    @property
    def config(self):
        return self.hf.config


def family(config: dict, where: str) -> Architecture:
    """The native family of a config, refused in one line if there is none."""
    layouts = of_model_type(str(config.get("model_type")))
    arch = next((a for a in layouts if a.selects(config)), None)
    if arch is None:
        raise CheckpointError(where, f"model_type {config.get('model_type')!r} is not a family ws-convert trains "
                                     "(the natively grown ones: see ws-convert grow --help)")
    if "experts" in arch.keys:
        raise CheckpointError(where, f"{arch.name} is a mixture of experts, which ws-convert grows but does not "
                                     "train yet (its routers need μP's readout treatment)")
    return arch


def _params(arch: Architecture, hf: nn.Module) -> dict[str, Param]:
    """Each parameter name of the model and its row in the family's table."""
    layers = hf.config.num_hidden_layers
    table = {}
    for prefix in arch.prefixes:
        table.update({p.name.format(p=prefix): p for p in arch.globals})
        table.update({(arch.layer + p.name).format(p=prefix, i=i): p for i in range(layers) for p in arch.blocks})
    return table


def _mu_readout(hf: nn.Module, tied: bool) -> None:
    """Replace the readout by mup's, keeping its weights (and its tie)."""
    from mup import MuReadout, MuSharedReadout

    old = hf.get_output_embeddings()
    if not isinstance(old, nn.Linear):
        raise WsConvertError(f"{type(hf).__name__}: its readout is a {type(old).__name__}, not a Linear that μP's "
                             "readout can take")
    if tied:
        new = MuSharedReadout(hf.get_input_embeddings().weight, bias=False)
    else:
        new = MuReadout(old.in_features, old.out_features, bias=old.bias is not None, readout_zero_init=False)
        new.weight, new.bias = old.weight, old.bias
    hf.set_output_embeddings(new)


def _attention_scale(hf: nn.Module, base_head_dim: float) -> None:
    """μP's attention scale where heads have widened past d0 = base_head_dim:
    the scale the family uses at the base width (its query_pre_attn_scalar
    or attention_multiplier where the config has one, else 1/sqrt(d0)),
    times d0 / head_dim."""
    config = hf.config
    if getattr(config, "query_pre_attn_scalar", None):
        base_scale = config.query_pre_attn_scalar ** -0.5
    elif getattr(config, "attention_multiplier", None):
        base_scale = config.attention_multiplier
    else:
        base_scale = base_head_dim ** -0.5
    for module in hf.modules():
        head_dim = getattr(module, "head_dim", None)
        if not isinstance(head_dim, int) or head_dim == base_head_dim:
            continue
        if not isinstance(getattr(module, "scaling", None), float):
            raise WsConvertError(f"{type(module).__name__} computes its attention scale from head_dim, so a head "
                                 f"widened from {base_head_dim:g} to {head_dim} cannot get μP's scale; grow it with "
                                 "--head-policy heads")
        module.scaling = base_scale * base_head_dim / head_dim


def _infshapes(base: dict[str, list[int | None]], hf: nn.Module, where: str) -> None:
    from mup import set_base_shapes
    from mup.infshape import InfShape

    names = {n for n, _ in hf.named_parameters()}
    if set(base) != names:
        extra, missing = sorted(set(base) - names), sorted(names - set(base))
        raise CheckpointError(where, f"base shapes do not name the model's parameters (extra {extra[:3]}, "
                                     f"missing {missing[:3]})")
    set_base_shapes(hf, {n: InfShape.from_base_shape(base[n]) for n in names}, rescale_params=False)


def _scratch_base_shapes(transformers, config, arch: Architecture, base_width: int) -> dict[str, list[int | None]]:
    """The base shapes of a family config at `base_width`: sizes that grow
    with width scaled to it (heads added, head_dim kept), compared with
    twice that to tell the axes that grow (mup's convention)."""
    raw = config.to_dict()

    def at(width: int) -> dict[str, nn.Parameter]:
        ratio = width / size_of(raw, arch, "width")
        changes = {key: int(raw[key] * ratio) for size in ("width", "ffn", "heads", "kv_heads")
                   if (key := _key(raw, arch, size)) and raw.get(key)}
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(type(config).from_dict({**raw, **changes}))
        _mu_readout(model, bool(raw.get("tie_word_embeddings")))
        return dict(model.named_parameters())
    base, double = at(base_width), at(2 * base_width)
    return {n: [b if b != d else None for b, d in zip(p.shape, double[n].shape)] for n, p in base.items()}


def _key(config: dict, arch: Architecture, size: str) -> str | None:
    """The config key holding `size`: the first present, else the family's own."""
    keys = arch.keys.get(size, ())
    return next((k for k in keys if config.get(k) is not None), keys[-1] if keys else None)


def size_of(config: dict, arch: Architecture, size: str) -> int | None:
    key = _key(config, arch, size)
    return config.get(key) if key else None


def read_base_shapes(path: Path) -> dict[str, list[int | None]]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CheckpointError(path, f"base shapes cannot be read ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise CheckpointError(path, "base shapes are not a mapping of tensor names to base shapes")
    return data


def _base_head_dim(directory: Path, config: dict, base: dict, arch: Architecture, head_dim: int) -> float:
    """head_dim at the base width: recorded by an earlier run, else derived
    from how grow widened the heads (the embedding's base shape gives the
    base width), else this head_dim."""
    if config.get(BASE_HEAD_DIM_KEY):
        return float(config[BASE_HEAD_DIM_KEY])
    record = directory / "ws_convert.json"
    if record.is_file() and json.loads(record.read_text()).get("options", {}).get("head_policy") == "head-dim":
        embedding = next((base[n] for p in arch.prefixes if (n := arch.globals[0].name.format(p=p)) in base), None)
        if embedding and embedding[-1]:
            return head_dim * embedding[-1] / size_of(config, arch, "width")
    return float(head_dim)


def load(directory: str | Path) -> CausalLM:
    """A grown (or trained) family model from its directory, under μP."""
    transformers = _transformers()
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(directory, "no config.json")
    raw = json.loads(config_path.read_text())
    arch = family(raw, str(config_path))
    bsh = directory / BASE_SHAPES_NAME
    if not bsh.is_file():
        raise CheckpointError(directory, f"no {BASE_SHAPES_NAME}: μP needs the base shapes (grow writes them)")
    base = read_base_shapes(bsh)
    # transformers' own loading: it knows the names a family's checkpoints use (GPT-NeoX's embed_out)
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32,
                                                                 output_loading_info=True)
    wrong = {k: info[k][:3] for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(k)}
    if wrong:
        raise CheckpointError(directory, f"tensors do not match its {arch.name} model ({wrong})")
    hf.train()
    tied = bool(getattr(hf.config, "tie_word_embeddings", False))
    _mu_readout(hf, tied)
    if tied:
        base.pop(readout_name(hf), None)  # stored once, as the embedding
    _infshapes(_renamed(base, {n for n, _ in hf.named_parameters()}), hf, str(bsh))
    head_dim = raw.get("head_dim") or size_of(raw, arch, "width") // size_of(raw, arch, "heads")
    base_hd = _base_head_dim(directory, raw, base, arch, head_dim)
    _attention_scale(hf, base_hd)
    hf.config.__dict__[BASE_HEAD_DIM_KEY] = base_hd
    return CausalLM(hf, arch)


def _renamed(base: dict, names: set[str]) -> dict:
    """Base shapes under the model's parameter names: a checkpoint may store
    one tensor under another name (GPT-NeoX's embed_out for lm_head); a
    single such pair is matched, anything more is left to be refused."""
    extra, missing = set(base) - names, names - set(base)
    if len(extra) == 1 and len(missing) == 1:
        base = dict(base)
        base[missing.pop()] = base.pop(extra.pop())
    return base


def readout_name(hf: nn.Module) -> str:
    return next(n for n, m in hf.named_modules() if m is hf.get_output_embeddings()) + ".weight"


def build(name: str, *, width: int, depth: int, heads: int, kv_heads: int | None, ffn: int | None,
          vocab: int, context: int, base_width: int, init_std: float, seed: int,
          tokens: dict | None = None) -> CausalLM:
    """A fresh μP model of family `name`: zero readout, zero query where the
    family has a query projection of its own, hidden matrices at
    init_std * sqrt(base_fan_in / fan_in), embeddings at init_std."""
    transformers = _transformers()
    try:
        layouts = by_name(name)
    except KeyError:
        layouts = ()
    if not layouts:
        raise WsConvertError(f"--arch {name!r} is not a family the trainer builds")
    arch = layouts[0]
    model_type = name if name in arch.model_types else arch.model_types[0]
    sizes = {"width": width, "ffn": ffn or 4 * width, "heads": heads, "kv_heads": kv_heads or heads,
             "layers": depth, "vocab": vocab, "ctx": context}
    kwargs = {arch.keys[s][-1]: v for s, v in sizes.items() if s in arch.keys}
    if "head_dim" in arch.keys:
        kwargs[arch.keys["head_dim"][-1]] = width // heads
    kwargs.update(tokens or {})
    try:
        config = transformers.AutoConfig.for_model(model_type, **kwargs)
    except (ValueError, TypeError) as exc:
        raise WsConvertError(f"--arch {name}: {exc}") from None
    config.__dict__[BASE_HEAD_DIM_KEY] = float(width // heads)
    zero = {p.zero_key for p in arch.blocks if p.zero_key}
    for key in zero:  # the config says how the model started, so growing it adds no noise there either
        config.__dict__[key] = True
    base = _scratch_base_shapes(transformers, config, arch, base_width or width)
    torch.manual_seed(seed)
    hf = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    _mu_readout(hf, tied)
    _infshapes(base, hf, f"--arch {name}")
    table = _params(arch, hf)
    with torch.no_grad():
        for pname, p in hf.named_parameters():
            _mu_init(pname, p, table.get(pname), arch, init_std, zero)
    return CausalLM(hf, arch)


def _mu_init(name: str, p: torch.Tensor, spec: Param | None, arch: Architecture, init_std: float,
             zero: set[str]) -> None:
    if spec is None:
        raise WsConvertError(f"parameter '{name}' is not in the {arch.name} family's table")
    if spec.zero_key in zero:
        p.zero_()
    elif spec.role == Role.HIDDEN:
        fan_in = spec.fan_in
        base_fan_in = p.infshape[fan_in].base_dim or p.shape[fan_in]
        p.normal_(0.0, init_std * math.sqrt(base_fan_in / p.shape[fan_in]))
    elif spec.role == Role.INPUT:
        p.normal_(0.0, init_std)
    elif spec.role == Role.NORM_GAIN:
        p.fill_(1.0 - arch.norm_offset)
    else:  # readout (zero), biases, norm biases
        p.zero_()


def write(model: CausalLM, directory: Path, metadata: dict[str, str],
          state: dict[str, torch.Tensor] | None = None) -> None:
    """config.json, model.safetensors (a tied readout stored once, as the
    family does) and base_shapes.bsh into `directory`; `state` (named as in
    the wrapper, 'hf.' first) stands for the model's own where it is sharded."""
    from safetensors.torch import save_file

    from .plan import write_base_shapes

    hf = model.hf
    tied = bool(getattr(hf.config, "tie_word_embeddings", False))
    state = {k.removeprefix("hf."): v for k, v in state.items()} if state is not None else hf.state_dict()
    state = {k: v.detach().contiguous().cpu() for k, v in state.items() if not (tied and k == model.readout)}
    save_file(state, directory / "model.safetensors", metadata={"format": "pt", **metadata})
    (directory / "config.json").write_text(hf.config.to_json_string())
    (directory / BASE_SHAPES_NAME).write_text(write_base_shapes(model.base_shapes))
