"""Cohere (Command R): parallel attention and MLP after one LayerNorm
without bias, GPT-J style interleaved rotary pairs, optional q/k norms with
one gain row per head, tied embeddings."""

from ..architectures import tensors
from .llama import ATTENTION, LLAMA, LLAMA_GLOBALS, MLP

ARCHITECTURES = (LLAMA.variant(
    name="cohere", model_types=("cohere",), classes=("CohereForCausalLM",), aliases=(), tie_default=True,
    rotary="interleaved", globals=LLAMA_GLOBALS,
    blocks=tensors("input_layernorm.weight  W  norm_gain" + ATTENTION + """
        self_attn.q_norm.weight   NH HD   norm_gain  optional
        self_attn.k_norm.weight   NKV HD  norm_gain  optional
    """ + MLP)),)
