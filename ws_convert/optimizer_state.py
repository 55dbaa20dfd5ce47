"""Growing an AdamW state with the weights' maps (docs/DESIGN.md, "Optimizer
state").

A moment grows where its weight grows: the same source positions, the
operator's shrink, no noise, zero for new units. Only the scales differ.
The next gradient of a grown weight is the source's gradient placed like the
weight but without the fan-in division (a copy of an input unit sees the
same input), and divided by the number of copies of its output unit (the
tensors that read those copies divide by them; μP's readout divides by the
width multiplier instead). So the first moment takes that factor c and the
second c squared: Adam's normalized step m / sqrt(v) is then the source's,
and μP's learning rates (a hidden matrix's divided by the width multiplier)
turn it into the step that keeps a function-preserving growth's function.

The trainer's `optimizer.pt` names its parameters ("param_names", in the
optimizer's index order); the grown state is written in the same form,
keyed by the grown model's names, and `train --resume-optimizer` maps it
onto its own optimizer by name.
"""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import torch

from .architectures import Role
from .errors import CheckpointError, PlanError
from .families import by_name
from .op import Constant, szp
from .plan import Plan, TensorPlan
from .szp_spec import Segment
from .writer import OPTIMIZER_NAME

MOMENTS = ("exp_avg", "exp_avg_sq")


def _load(path: Path) -> dict:
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a damaged or foreign file
        raise CheckpointError(path, f"cannot be read as an optimizer state ({type(exc).__name__})") from None
    if not isinstance(record, dict):
        raise CheckpointError(path, "not an optimizer state")
    return record


def hf_parameter_names(config: dict) -> list[str]:
    """The parameter names of the Hugging Face model `config` describes, in
    the order `model.parameters()` gives them (built on the meta device)."""
    try:
        import transformers
    except ImportError:
        raise PlanError("a PyTorch optimizer state beside a Hugging Face model is matched to its parameters "
                        "through transformers, which is not installed") from None
    fields = {k: v for k, v in config.items() if k != "model_type"}
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(
            transformers.AutoConfig.for_model(config["model_type"], **fields))
    return [n for n, _ in model.named_parameters()]


def read_state(path: str | Path, config: dict | None = None) -> tuple[dict, dict[str, dict]]:
    """(the file's record, {parameter name: its AdamW state}). The trainer's
    optimizer.pt names its parameters; a PyTorch `optimizer.state_dict()` of
    one parameter group is matched to the Hugging Face model `config`
    describes, in its parameter order (as `AdamW(model.parameters())`)."""
    path = Path(path)
    record = _load(path)
    return record, _by_name(record, path, config)


def _by_name(record: dict, path: Path, config: dict | None) -> dict[str, dict]:
    """{parameter name: its AdamW state} of a loaded optimizer state (see read_state)."""
    if isinstance(record.get("optimizer"), dict) and isinstance(record.get("param_names"), list):
        names, state = record["param_names"], record["optimizer"].get("state", {})
    elif {"state", "param_groups"} <= record.keys():
        groups = record["param_groups"]
        if not isinstance(groups, list) or len(groups) != 1:
            raise CheckpointError(path, f"has {len(groups) if isinstance(groups, list) else 'no'} parameter "
                                        "groups; an optimizer state without parameter names is matched to the "
                                        "model only when it has one group (AdamW(model.parameters()))")
        if config is None or "model_type" not in config:
            raise CheckpointError(path, "names no parameters, and no config.json says which model it belongs to")
        names, state = hf_parameter_names(config), record["state"]
        if len(groups[0].get("params", [])) != len(names):
            raise CheckpointError(path, f"holds {len(groups[0].get('params', []))} parameters, the "
                                        f"{config['model_type']} model of its config.json {len(names)}")
    else:
        raise CheckpointError(path, "not an optimizer state: neither ws-convert's trainer's nor a PyTorch "
                                    "optimizer.state_dict()")
    return {names[i]: s for i, s in state.items() if isinstance(i, int) and 0 <= i < len(names)}


def moment_maps(t: TensorPlan, readout_scale: float, power: int) -> tuple[tuple[Segment, ...], ...]:
    """The weight's maps with the moment's scales: no fan-in division, and
    each output position divided by its source position's number of copies
    (for a μP readout, by `readout_scale`), to the power `power`."""
    fan_in = t.fan_in
    out = []
    for k, segs in enumerate(t.maps):
        if k == fan_in:
            out.append(tuple(s._replace(scale=1.0) for s in segs))
            continue
        copies = Counter()
        for s in segs:
            copies.update(range(s.src, s.src + s.length))
        pieces = []
        for s in segs:  # split where the number of copies changes
            start = s.src
            for p in range(s.src + 1, s.src + s.length + 1):
                if p == s.src + s.length or copies[p] != copies[start]:
                    pieces.append(Segment(s.dst + start - s.src, start, p - start, (1.0 / copies[start]) ** power))
                    start = p
        out.append(tuple(pieces))
    if readout_scale != 1.0 and fan_in is not None:
        out = [tuple(s._replace(scale=s.scale * readout_scale ** power) for s in segs) if k == fan_in else segs
               for k, segs in enumerate(out)]
    return tuple(out)


def grow_state(plan: Plan, path: str | Path, config: dict | None = None) -> bytes:
    """The grown optimizer state of `plan`'s checkpoint, from the source's at
    `path` (`config`: the source's config.json), in the source's form: the
    trainer's by parameter name, or a PyTorch state_dict in the grown Hugging
    Face model's parameter order."""
    record, states = read_state(path, config)
    steps = {float(s["step"]) for s in states.values() if "step" in s}
    if len(steps) > 1:
        raise CheckpointError(Path(path), f"its parameters are at different steps ({sorted(steps)[:3]})")
    step = torch.tensor(steps.pop() if steps else 0.0)
    mup = any(a.mup_readout for a in by_name(plan.arch))
    mup_readout = plan.source.width / plan.target.width if mup else 1.0
    grown: dict[str, dict] = {}
    for t in plan.tensors:
        readout = mup_readout if t.role == Role.OUTPUT else 1.0
        state = states.get(t.source) if t.source is not None else None
        if t.source is not None and state is None:
            if t.noise_name != t.name:  # a tied readout: the embedding's parameter holds its state
                continue
            raise CheckpointError(Path(path), f"holds no state for parameter '{t.source}'")
        entry = {"step": step.clone()}
        for power, key in enumerate(MOMENTS, start=1):
            src = None if state is None or t.verbatim else state[key].to(torch.float32).contiguous()
            if src is not None and tuple(src.shape) != tuple(t.src_shape or ()):
                raise CheckpointError(Path(path), f"state '{key}' of '{t.source}' has shape {list(src.shape)}, "
                                                  f"the weight {list(t.src_shape or ())}")
            maps = moment_maps(t, readout, power) if src is not None else tuple(() for _ in t.shape)
            entry[key] = szp(src, t.shape, maps, shrink=t.shrink ** power, perturb=0.0, init=Constant(0.0),
                             tid=0, out_dtype=torch.float32)
        grown[t.name] = entry
    if "param_names" in record:
        names = list(grown)
        out = {"optimizer": {"state": {i: grown[n] for i, n in enumerate(names)}, "param_groups": []},
               "param_names": names, "step": 0, "grown_from": str(Path(path)), "source_step": int(step.item())}
    else:
        names = hf_parameter_names(plan.config)
        missing = [n for n in names if n not in grown]
        if missing:
            raise PlanError(f"the grown model has a parameter '{missing[0]}' that no planned tensor fills")
        out = {"state": {i: grown[n] for i, n in enumerate(names)},
               "param_groups": [{**record["param_groups"][0], "params": list(range(len(names)))}]}
    buffer = io.BytesIO()
    torch.save(out, buffer)
    return buffer.getvalue()


def parameter_names(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> list[str]:
    """The names of `model`'s parameters in `optimizer`'s index order (that of
    its state_dict), as the trainer records them."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def load_into(optimizer: torch.optim.Optimizer, model: torch.nn.Module, path: str | Path) -> None:
    """Load a grown optimizer state into `optimizer` of `model` by parameter
    name (a PyTorch state_dict: in the model's parameter order), keeping the
    optimizer's own settings."""
    record = _load(Path(path))
    if "param_names" in record:
        by_name = _by_name(record, Path(path), None)
    else:
        order = [n for n, _ in model.named_parameters()]
        by_name = {order[i]: s for i, s in record.get("state", {}).items() if isinstance(i, int) and i < len(order)}
    own = optimizer.state_dict()
    ordered = parameter_names(optimizer, model)
    missing = [n for n in ordered if n not in by_name]
    if missing:
        raise PlanError(f"{path}: holds no optimizer state for '{missing[0]}' ({len(missing)} such)")
    own["state"] = {i: by_name[n] for i, n in enumerate(ordered)}
    optimizer.load_state_dict(own)


__all__ = ["OPTIMIZER_NAME", "grow_state", "load_into", "moment_maps", "parameter_names", "read_state"]
