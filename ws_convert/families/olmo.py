"""OLMo: Llama's names, but its LayerNorms have no parameters, so there is
no norm tensor to grow."""

from ..architectures import tensors
from .llama import ATTENTION, LLAMA, MLP

ARCHITECTURES = (LLAMA.variant(
    name="olmo", model_types=("olmo",), classes=("OlmoForCausalLM",), aliases=(),
    globals=tensors("""
        {p}embed_tokens.weight   V W   input
        lm_head.weight           V W   output@1   optional
    """),
    blocks=tensors(ATTENTION + MLP)),)
