"""Gemma 3 (text): Gemma 2's layout plus per-head q/k norms, which store
their gains as 1 + w too."""

from ..architectures import tensors
from .gemma2 import GEMMA2, GEMMA2_BLOCKS

ARCHITECTURES = (GEMMA2.variant(name="gemma3_text", model_types=("gemma3_text",), classes=("Gemma3ForCausalLM",),
                                blocks=GEMMA2_BLOCKS + tensors("""
                                    self_attn.q_norm.weight   HD   norm_gain
                                    self_attn.k_norm.weight   HD   norm_gain
                                """)),)
