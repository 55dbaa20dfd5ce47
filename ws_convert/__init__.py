"""ws-convert: grow a trained small μP model into a larger one with SZP.

SZP (Mallik et al., "Warmstarting for Scaling Language Models", arXiv
2411.07340): shrink the small weights, zero-pad them into the larger shapes,
and perturb with the large model's μP initialization.

Importing the package does not import torch: `ws-convert grow` on a CPU
never needs it (importing it takes longer than growing a gigabyte). The
tensor-level op (`szp`, `szp_reference`) loads it on first use.
"""

from __future__ import annotations

from ._version import __version__
from .api import inspect, plan
from .engine import GrowReport, grow, grow_state_dict
from .szp_spec import Constant, Normal, Segment, pad_maps, tensor_id
from .verify import verify

_TENSOR_OPS = ("szp", "szp_reference")


def __getattr__(name: str):
    if name in _TENSOR_OPS:
        from . import op

        return getattr(op, name)
    raise AttributeError(f"module 'ws_convert' has no attribute {name!r}")


__all__ = ["Constant", "GrowReport", "Normal", "Segment", "grow", "grow_state_dict", "inspect", "pad_maps",
           "plan", "szp", "szp_reference", "tensor_id", "verify", "__version__"]
