"""Executing a plan: every planned tensor through the fused SZP op."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .noise import tensor_id
from .plan import GrowthOptions, Plan, Source, TensorPlan, make_plan
from .safetensors_spec import DTYPES, NAMES
from .szp import szp


def run_tensor(t: TensorPlan, src: torch.Tensor | None, seed: int, *, rows: tuple[int, int] | None = None,
               src_row_start: int = 0, out: torch.Tensor | None = None, threads: int | None = None,
               device: torch.device | str | None = None) -> torch.Tensor:
    """Output rows `rows` (default all) of one planned tensor; `src` holds the
    source rows from `src_row_start` (or is None for pure init)."""
    return szp(src, t.shape, t.maps, shrink=t.shrink, perturb=t.perturb, init=t.init, seed=seed,
               tid=tensor_id(t.noise_name), rows=rows, src_shape=t.src_shape, src_row_start=src_row_start,
               out=out, out_dtype=DTYPES[t.dtype], threads=threads, device=device)


def grow_state_dict(state_dict: Mapping[str, torch.Tensor], to_width: int, *, config: dict | None = None,
                    base_shapes: str | None = None, threads: int | None = None,
                    **options) -> tuple[dict[str, torch.Tensor], Plan]:
    """Grow an in-memory state dict (tensors on any one device); the same
    bytes as growing the same weights from files. `options` are GrowthOptions'
    fields (shrink, perturb, seed, head_policy, to_depth, ...)."""
    source = Source("state_dict", {n: (NAMES[t.dtype], tuple(t.shape)) for n, t in state_dict.items()}, config)
    plan = make_plan(source, GrowthOptions(to_width=to_width, **options), base_shapes)
    grown = {}
    for t in plan.tensors:
        src = state_dict[t.source].contiguous() if t.source is not None else None
        device = src.device if src is not None else next(iter(state_dict.values())).device
        grown[t.name] = run_tensor(t, src, plan.options.seed, threads=threads, device=device)
    return grown, plan
