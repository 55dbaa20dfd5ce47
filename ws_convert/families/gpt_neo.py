"""GPT-Neo: GPT-2's shape with separate q/k/v projections (no biases),
learned positions, global and local attention layers listed per layer in
attention_types runs. It does not scale attention scores by 1/sqrt(head_dim)."""

from ..architectures import Architecture, tensors
from .gpt2 import GPT2_GLOBALS

ARCHITECTURES = (Architecture(
    name="gpt_neo", model_types=("gpt_neo",), classes=("GPTNeoForCausalLM",),
    keys={"width": ("hidden_size",), "ffn": ("intermediate_size",), "heads": ("num_attention_heads", "num_heads"),
          "layers": ("num_hidden_layers", "num_layers"), "vocab": ("vocab_size",),
          "ctx": ("max_position_embeddings",)},
    prefixes=("transformer.",), layer="{p}h.{i}.",
    globals=GPT2_GLOBALS,
    blocks=tensors("""
        ln_1.weight                        W         norm_gain
        ln_1.bias                          W         norm_bias
        attn.attention.q_proj.weight       Q W       hidden@1
        attn.attention.k_proj.weight       KV W      hidden@1
        attn.attention.v_proj.weight       KV W      hidden@1
        attn.attention.out_proj.weight     W Q       hidden@1
        attn.attention.out_proj.bias       W         vector
        attn.attention.bias                X X C C   buffer     optional
        attn.attention.masked_bias                   buffer     optional
        ln_2.weight                        W         norm_gain
        ln_2.bias                          W         norm_bias
        mlp.c_fc.weight                    F W       hidden@1
        mlp.c_fc.bias                      F         vector
        mlp.c_proj.weight                  W F       hidden@1
        mlp.c_proj.bias                    W         vector
    """),
    tied=("lm_head.weight", "{p}wte.weight"), tie_default=True, ffn_default=4,
    per_layer=("attention_layers",), per_layer_runs=("attention_types",)),)
