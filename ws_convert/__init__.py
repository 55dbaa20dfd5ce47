"""ws-convert: grow a trained small μP model into a larger one with SZP.

SZP (Mallik et al., "Warmstarting for Scaling Language Models", arXiv
2411.07340): shrink the small weights, zero-pad them into the larger shapes,
and perturb with the large model's μP initialization.
"""

from ._version import __version__
from .api import inspect, plan
from .engine import GrowReport, grow, grow_state_dict
from .noise import tensor_id
from .szp import Constant, Normal, Segment, pad_maps, szp, szp_reference
from .verify import verify


__all__ = ["Constant", "GrowReport", "Normal", "Segment", "grow", "grow_state_dict", "inspect", "pad_maps",
           "plan", "szp", "szp_reference", "tensor_id", "verify", "__version__"]
