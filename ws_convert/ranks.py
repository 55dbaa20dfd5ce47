"""Many processes, one output: under `torchrun`, grow splits the plan's
tensors by bytes across the ranks. Rank 0 opens the output's temporary
directory (every shard laid out as planned), every rank writes its own
tensors at their planned offsets into those shards, and rank 0 commits once
every rank has said it succeeded; a failure on any rank leaves no output.
The bytes are those of one process: every output byte is a function of the
source, the knobs and the seed, whoever computes it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from .plan import TensorPlan
from .safetensors_spec import ITEMSIZE


def world() -> tuple[int, int]:
    """(rank, number of processes) from torchrun's environment; (0, 1) alone."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def share(tensors: Sequence[TensorPlan], rank: int, size: int) -> list[TensorPlan]:
    """This rank's tensors: a contiguous run of the plan holding about 1/size
    of its output bytes (a tensor goes where its first byte falls)."""
    sizes = [t.numel * ITEMSIZE[t.dtype] for t in tensors]
    total = sum(sizes) or 1
    mine, before = [], 0
    for t, n in zip(tensors, sizes):
        if before * size // total == rank:
            mine.append(t)
        before += n
    return mine


class Group:
    """The ranks' process group (gloo: the collectives carry a few flags and a
    path, whatever device computes), opened here unless the caller has one."""

    def __enter__(self) -> Group:
        import torch.distributed as dist

        self._owned = not dist.is_initialized()
        if self._owned:
            dist.init_process_group("gloo")
        return self

    def __exit__(self, *exc) -> None:
        import torch.distributed as dist

        if self._owned:
            dist.destroy_process_group()

    def broadcast(self, value: object) -> object:
        """Rank 0's `value`, on every rank."""
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def all_ok(self, ok: bool) -> bool:
        """Whether every rank is ok (every rank must call it)."""
        import torch
        import torch.distributed as dist

        failed = torch.tensor([0 if ok else 1])
        dist.all_reduce(failed)
        return failed.item() == 0
