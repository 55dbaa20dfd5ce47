"""Upcycling: a dense model planned as its family's mixture of experts.

The dense checkpoint is seen under the mixture's names: every expert's
tensors read the dense MLP's (the mixture's `dense_rows`), so each expert is
the dense MLP through the operator, with its own noise stream (the noise is
keyed by the output tensor's name); rows the dense model lacks (routers, a
shared expert) start at their μP init. The config becomes the mixture's,
with the expert count and top-k. Then it is planned as any growth of that
mixture, width and depth included, and each tensor's source is renamed back
to the dense tensor the engine reads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from .architectures import Architecture
from .errors import PlanError
from .families import ALL
from .plan import GrowthOptions, Plan, Source, _check_grown_config, _plan_arch, shown


def mixture_of(dense: Architecture, model_type: str) -> Architecture:
    """The mixture-of-experts family a dense model_type upcycles into."""
    found = next((a for a in ALL if model_type in a.upcycles), None)
    if found is None:
        takes = sorted({t for a in ALL for t in a.upcycles})
        raise PlanError(f"--to-experts: a {dense.name} model (model_type {shown(model_type)}) has no "
                        f"mixture-of-experts counterpart here; upcycling takes {', '.join(takes)}")
    return found


def _config(dense: dict, moe: Architecture, o: GrowthOptions) -> dict:
    """The dense config as the mixture's: its model_type and class, the expert
    count and top-k, every expert's MLP (and a shared one's) of the dense size."""
    ffn = next(dense[k] for k in moe.keys["ffn"] if dense.get(k) is not None)
    out = {**dense, "model_type": moe.model_types[0], "architectures": [moe.classes[0]], **moe.upcycle_config,
           moe.keys["experts"][-1]: o.to_experts, "num_experts_per_tok": o.experts_top_k}
    for size in ("moe_ffn", "shared_ffn"):
        if size in moe.keys:
            out[moe.keys[size][-1]] = ffn
    return out


def plan_upcycle(dense: Architecture, prefix: str, source: Source, o: GrowthOptions,
                 base_file: Mapping[str, object] | None, base_path: str | Path | None) -> Plan:
    config = source.config or {}
    moe = mixture_of(dense, str(config.get("model_type") or dense.model_types[0]))
    if o.to_experts < 2:
        raise PlanError(f"--to-experts {o.to_experts}: a mixture needs at least 2 experts")
    layers = int(next(config[k] for k in dense.keys["layers"] if config.get(k) is not None))
    consumed = set(moe.dense_rows.values())  # the dense MLP lives on in the experts, not beside them
    reads = {}  # a mixture layer's row -> the dense layer's row it reads
    for p in moe.blocks:
        if p.name not in consumed and p.name not in moe.upcycle_init:
            for e in range(o.to_experts) if "{e}" in p.name else (0,):
                reads[p.name.replace("{e}", str(e))] = moe.dense_rows.get(p.name, p.name)
    renamed = {p.name.format(p=prefix): p.name.format(p=prefix) for p in moe.globals}
    for i in range(layers):
        renamed.update({moe.layer.format(p=prefix, i=i) + row: dense.layer.format(p=prefix, i=i) + d
                        for row, d in reads.items()})
    dropped = sorted(set(source.tensors) - set(renamed.values()))
    if dropped:
        raise PlanError(f"{source.path}: tensor '{dropped[0]}' has no place in a {moe.name} model ({len(dropped)} "
                        "such); upcycling would drop it, so it is refused")
    view = Source(source.path, {new: source.tensors[old] for new, old in renamed.items() if old in source.tensors},
                  _config(config, moe, o), source.metadata, source.config_path)
    plan = _plan_arch(moe, prefix, view, o, base_file, base_path, frozenset(moe.upcycle_init))
    _check_grown_config(moe, prefix, view, plan)
    for t in plan.tensors:
        t.source = renamed.get(t.source) if t.source else None
    plan.params_before = sum(math.prod(shape) for _, shape in source.tensors.values())
    plan.warnings.append(f"upcycled {dense.name} into {moe.name}: {o.to_experts} experts, top {o.experts_top_k}, each "
                         f"the dense MLP with its own noise; {', '.join(moe.upcycle_init)} at their init")
    return plan
