"""FSDP2 for the trainer: parameters, gradients and optimizer state sharded
across the ranks of `torchrun` with `torch.distributed.fsdp.fully_shard`,
each block its own unit, with μP intact.

Sharding replaces every parameter by a DTensor, which carries none of
mup's `infshape`. So what μP reads from it is taken before: MuAdamW's
per-parameter learning rates and weight decay (its param groups, rebuilt by
parameter name around the sharded parameters), and each μP readout's width
multiplier (fixed on the module). Checkpoints gather the full state to
rank 0, so they are the same model directories as without sharding.
"""

from __future__ import annotations

import torch
from torch import nn

OPTIMIZER_KEYS = ("lr", "betas", "eps", "weight_decay")


def blocks(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks: each becomes one FSDP unit."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    return list(max(lists, key=len)) if lists else []


def shard(model: nn.Module, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Shard `model` in place; an AdamW over the sharded parameters with
    `optimizer`'s (MuAdamW's) groups, matched by parameter name."""
    from mup import MuReadout
    from torch.distributed.fsdp import fully_shard

    names = {id(p): n for n, p in model.named_parameters()}
    groups = [({names[id(p)] for p in g["params"]}, {k: g[k] for k in OPTIMIZER_KEYS}) for g in optimizer.param_groups]
    for module in model.modules():
        if isinstance(module, MuReadout):
            module.width_mult = (lambda mult: lambda: mult)(module.width_mult())
    for block in blocks(model):
        fully_shard(block)
    fully_shard(model)
    params = dict(model.named_parameters())
    return torch.optim.AdamW([{"params": [params[n] for n in sorted(members)], **settings}
                              for members, settings in groups])


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The whole model's and optimizer's state, in CPU memory on rank 0 (a
    collective: every rank calls it; the others get empty dicts)."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options), get_optimizer_state_dict(model, optimizer, options=options)


def load_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
