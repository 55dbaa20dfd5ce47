"""StarCoder2: Llama's attention names with biases, LayerNorms with biases,
a two-matrix MLP (c_fc, c_proj), tied embeddings by default."""

from ..architectures import tensors
from .llama import ATTENTION, LLAMA

ARCHITECTURES = (LLAMA.variant(
    name="starcoder2", model_types=("starcoder2",), classes=("Starcoder2ForCausalLM",), aliases=(),
    tie_default=True,
    globals=tensors("""
        {p}embed_tokens.weight   V W   input
        {p}norm.weight           W     norm_gain
        {p}norm.bias             W     norm_bias
        lm_head.weight           V W   output@1   optional
    """),
    blocks=tensors(ATTENTION + """
        input_layernorm.weight            W     norm_gain
        input_layernorm.bias              W     norm_bias
        post_attention_layernorm.weight   W     norm_gain
        post_attention_layernorm.bias     W     norm_bias
        mlp.c_fc.weight                   F W   hidden@1
        mlp.c_fc.bias                     F     vector     optional
        mlp.c_proj.weight                 W F   hidden@1
        mlp.c_proj.bias                   W     vector     optional
    """)),)
