"""GPT-BigCode (StarCoder, SantaCoder): GPT-2's shape with Linear weights
as [out, in]; c_attn is [q heads | one k | one v] with multi-query (the kv
head stays one as heads are added), or per head [q, k, v] without it."""

from ..architectures import Architecture, tensors
from .gpt2 import GPT2_GLOBALS


def blocks(qkv: str) -> tuple:
    """The block's tensors, with c_attn's output axis `qkv`."""
    return tensors(f"""
        ln_1.weight          W         norm_gain
        ln_1.bias            W         norm_bias
        attn.c_attn.weight   {qkv} W   hidden@1
        attn.c_attn.bias     {qkv}     vector
        attn.c_proj.weight   W Q       hidden@1
        attn.c_proj.bias     W         vector
        ln_2.weight          W         norm_gain
        ln_2.bias            W         norm_bias
        mlp.c_fc.weight      F W       hidden@1
        mlp.c_fc.bias        F         vector
        mlp.c_proj.weight    W F       hidden@1
        mlp.c_proj.bias      W         vector
    """)


MULTI_QUERY = Architecture(
    name="gpt_bigcode", layout="multi-query", model_types=("gpt_bigcode",), classes=("GPTBigCodeForCausalLM",),
    keys={"width": ("hidden_size", "n_embd"), "ffn": ("n_inner",), "heads": ("num_attention_heads", "n_head"),
          "kv_heads": ("num_key_value_heads",), "layers": ("num_hidden_layers", "n_layer"), "vocab": ("vocab_size",),
          "ctx": ("max_position_embeddings", "n_positions")},
    prefixes=("transformer.",), layer="{p}h.{i}.",
    globals=GPT2_GLOBALS,
    blocks=blocks("Q+KV+KV"), fixed={"kv_heads": 1},
    tied=("lm_head.weight", "{p}wte.weight"), tie_default=True, ffn_default=4,
    when={"multi_query": True}, defaults={"multi_query": True})

ARCHITECTURES = (MULTI_QUERY, MULTI_QUERY.variant(layout="multi-head", blocks=blocks("Q:Q+KV+KV"), fixed={},
                                                  when={"multi_query": False}))
