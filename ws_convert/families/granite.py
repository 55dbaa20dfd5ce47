"""Granite: Llama's tensors and keys; its multipliers (embedding, residual,
attention, logits) are config constants that growth keeps."""

from .llama import LLAMA

ARCHITECTURES = (LLAMA.variant(name="granite", model_types=("granite",), classes=("GraniteForCausalLM",),
                               aliases=()),)
