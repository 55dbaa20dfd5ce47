"""StableLM: Llama's names with LayerNorms that have biases, optional q/k/v
biases, rotary over a quarter of each head by default, and (with
use_parallel_residual) no post-attention norm. Its optional q/k LayerNorms
are one module per head, which this layout does not take."""

from ..architectures import tensors
from .llama import ATTENTION, LLAMA, LLAMA_KEYS, MLP

ARCHITECTURES = (LLAMA.variant(
    name="stablelm", model_types=("stablelm",), classes=("StableLmForCausalLM",), aliases=(),
    keys={k: v for k, v in LLAMA_KEYS.items() if k != "head_dim"},
    when={"qk_layernorm": False}, defaults={"qk_layernorm": False, "partial_rotary_factor": 0.25},
    globals=tensors("""
        {p}embed_tokens.weight   V W   input
        {p}norm.weight           W     norm_gain
        {p}norm.bias             W     norm_bias
        lm_head.weight           V W   output@1   optional
    """),
    blocks=tensors(ATTENTION + """
        input_layernorm.weight            W     norm_gain
        input_layernorm.bias              W     norm_bias
        post_attention_layernorm.weight   W     norm_gain  optional
        post_attention_layernorm.bias     W     norm_bias  optional
    """ + MLP)),)
