"""The Python API, mirroring the command line."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from .hub import resolve
from .plan import GrowthOptions, Plan, Source, detect, make_plan, source_sizes
from .reader import open_checkpoint


def plan(src: str | Path, to_width: int | None = None, *, base_shapes: str | Path | None = None,
         allow_pickle: bool = False, revision: str | None = None, **options) -> Plan:
    """The per-tensor plan for growing `src` (a path or a Hub repo id) to
    `to_width`; nothing is written. `options` are GrowthOptions' fields
    (to_depth, head_policy, shrink, ...)."""
    with open_checkpoint(resolve(src, revision).path, allow_pickle=allow_pickle) as ckpt:
        return make_plan(Source.of(ckpt), GrowthOptions(to_width=to_width, **options), base_shapes)


def inspect(src: str | Path, *, arch: str | None = None, num_heads: int | None = None,
            num_kv_heads: int | None = None, allow_pickle: bool = False, revision: str | None = None) -> dict:
    """Architecture, sizes, dtypes, parameter count and shards of a checkpoint (a path or a Hub repo id)."""
    with open_checkpoint(resolve(src, revision).path, allow_pickle=allow_pickle) as ckpt:
        source = Source.of(ckpt)
        info = {
            "path": str(ckpt.path),
            "files": [{"name": f.name, "bytes": f.stat().st_size} for f in ckpt.files],
            "tensors": len(ckpt.tensors),
            "parameters": sum(i.numel for i in ckpt.tensors.values()),
            "bytes": sum(i.nbytes for i in ckpt.tensors.values()),
            "dtypes": dict(Counter(i.dtype for i in ckpt.tensors.values())),
            "config": ckpt.config is not None,
        }
    found, prefix = detect(source, arch)
    info["arch"] = found.name if found else "generic"
    if found is not None and found.layout:
        info["layout"] = found.layout
    if found is not None:
        opts = GrowthOptions(to_width=0, num_heads=num_heads, num_kv_heads=num_kv_heads)
        sizes = source_sizes(found, prefix, source, opts)
        info.update(width=sizes.width, depth=sizes.layers, heads=sizes.heads, kv_heads=sizes.kv_heads,
                    head_dim=sizes.head_dim, ffn=sizes.ffn, vocab=sizes.vocab, ctx=sizes.ctx,
                    rotary_dim=sizes.rotary_dim)
    return info


__all__ = ["plan", "inspect"]
