"""GPT-2 as Hugging Face stores it: Conv1D weights as [in, out], a fused
c_attn of [q | k | v], learned positions, LayerNorm with biases."""

from ..architectures import Architecture, tensors

# token and learned position embeddings, a final LayerNorm: GPT-Neo and GPT-BigCode have the same
GPT2_GLOBALS = tensors("""
    {p}wte.weight      V W   input
    {p}wpe.weight      C W   input
    {p}ln_f.weight     W     norm_gain
    {p}ln_f.bias       W     norm_bias
    lm_head.weight     V W   output@1   optional
""")

GPT2 = Architecture(
    name="gpt2",
    model_types=("gpt2",),
    classes=("GPT2LMHeadModel",),
    keys={"width": ("hidden_size", "n_embd"), "ffn": ("n_inner",), "heads": ("num_attention_heads", "n_head"),
          "layers": ("num_hidden_layers", "n_layer"), "vocab": ("vocab_size",),
          "ctx": ("max_position_embeddings", "n_positions")},
    prefixes=("transformer.", ""),
    layer="{p}h.{i}.",
    globals=GPT2_GLOBALS,
    blocks=tensors("""
        ln_1.weight          W            norm_gain
        ln_1.bias            W            norm_bias
        attn.c_attn.weight   W Q+KV+KV    hidden@0
        attn.c_attn.bias     Q+KV+KV      vector
        attn.c_proj.weight   Q W          hidden@0
        attn.c_proj.bias     W            vector
        attn.bias            X X C C      buffer     optional
        attn.masked_bias                  buffer     optional
        ln_2.weight          W            norm_gain
        ln_2.bias            W            norm_bias
        mlp.c_fc.weight      W F          hidden@0
        mlp.c_fc.bias        F            vector
        mlp.c_proj.weight    F W          hidden@0
        mlp.c_proj.bias      W            vector
    """),
    tied=("lm_head.weight", "{p}wte.weight"),
    tie_default=True,
    ffn_default=4,
)

ARCHITECTURES = (GPT2,)
