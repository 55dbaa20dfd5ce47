"""Falcon, in its three layouts of query_key_value:
* new decoder (40B, 180B, Falcon2): per kv head, its group of q heads, then
  its k and v: [kv head, q per kv + 2, head_dim];
* multi-query (7B): [q heads | one k | one v], the kv head staying one;
* classic multi-head: per head [q, k, v].
Parallel attention and MLP, rotary over whole heads or ALiBi."""

from ..architectures import Architecture, Caveat, tensors

ALIBI = Caveat("heads", "ALiBi slopes depend on the head count, so adding heads changes every head's position bias: "
                        "zero-padding cannot keep the function (--head-policy head-dim keeps the heads and slopes)",
               config={"alibi": True})

KEYS = {"width": ("hidden_size",), "ffn": ("ffn_hidden_size",), "heads": ("n_head", "num_attention_heads"),
        "kv_heads": ("num_kv_heads",),
        "layers": ("n_layer", "num_hidden_layers"), "vocab": ("vocab_size",), "ctx": ("max_position_embeddings",)}

GLOBALS = tensors("""
    {p}word_embeddings.weight   V W   input
    {p}ln_f.weight              W     norm_gain
    {p}ln_f.bias                W     norm_bias
    lm_head.weight              V W   output@1   optional
""")


def blocks(qkv: str) -> tuple:
    """The block's tensors, with query_key_value's output axis `qkv`."""
    return tensors(f"""
        self_attention.query_key_value.weight   {qkv} W   hidden@1
        self_attention.query_key_value.bias     {qkv}     vector     optional
        self_attention.dense.weight             W Q       hidden@1
        self_attention.dense.bias               W         vector     optional
        input_layernorm.weight                  W         norm_gain  optional
        input_layernorm.bias                    W         norm_bias  optional
        ln_attn.weight                          W         norm_gain  optional
        ln_attn.bias                            W         norm_bias  optional
        ln_mlp.weight                           W         norm_gain  optional
        ln_mlp.bias                             W         norm_bias  optional
        post_attention_layernorm.weight         W         norm_gain  optional
        post_attention_layernorm.bias           W         norm_bias  optional
        mlp.dense_h_to_4h.weight                F W       hidden@1
        mlp.dense_h_to_4h.bias                  F         vector     optional
        mlp.dense_4h_to_h.weight                W F       hidden@1
        mlp.dense_4h_to_h.bias                  W         vector     optional
    """)


NEW_DECODER = Architecture(
    name="falcon", layout="new decoder", model_types=("falcon",), classes=("FalconForCausalLM",),
    keys=KEYS, prefixes=("transformer.",), layer="{p}h.{i}.",
    globals=GLOBALS, blocks=blocks("KV:Q+KV+KV"), rotary="half",
    tied=("lm_head.weight", "{p}word_embeddings.weight"), tie_default=True, ffn_default=4,
    when={"new_decoder_architecture": True},
    defaults={"new_decoder_architecture": False, "multi_query": True, "alibi": False}, caveats=(ALIBI,))

ARCHITECTURES = (
    NEW_DECODER,
    NEW_DECODER.variant(layout="multi-query", fixed={"kv_heads": 1}, blocks=blocks("Q+KV+KV"),
                        when={"new_decoder_architecture": False, "multi_query": True}),
    NEW_DECODER.variant(layout="multi-head", blocks=blocks("Q:Q+KV+KV"),
                        when={"new_decoder_architecture": False, "multi_query": False}),
)
