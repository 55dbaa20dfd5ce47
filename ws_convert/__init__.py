"""ws-convert: grow a trained small μP model into a larger one with SZP.

SZP (Mallik et al., "Warmstarting for Scaling Language Models", arXiv
2411.07340): shrink the small weights, zero-pad them into the larger shapes,
and perturb with the large model's μP initialization.
"""

from .noise import tensor_id
from .szp import Constant, Normal, Segment, pad_maps, szp, szp_reference

__version__ = "0.1.0"

__all__ = ["Constant", "Normal", "Segment", "pad_maps", "szp", "szp_reference", "tensor_id",
           "__version__"]
