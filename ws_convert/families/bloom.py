"""BLOOM: ALiBi positions, a LayerNorm right after the embeddings, a fused
query_key_value laid out per head as [head, (q, k, v), head_dim], an MLP
always 4 x width wide."""

from ..architectures import Architecture, Caveat, tensors

ALIBI = Caveat("heads", "ALiBi slopes depend on the head count, so adding heads changes every head's position bias: "
                        "zero-padding cannot keep the function (--head-policy head-dim keeps the heads and slopes)")

ARCHITECTURES = (Architecture(
    name="bloom", model_types=("bloom",), classes=("BloomForCausalLM",),
    keys={"width": ("n_embed", "hidden_size"), "heads": ("num_attention_heads", "n_head"),
          "layers": ("num_hidden_layers", "n_layer"), "vocab": ("vocab_size",)},
    prefixes=("transformer.", ""), layer="{p}h.{i}.",
    globals=tensors("""
        {p}word_embeddings.weight              V W   input
        {p}word_embeddings_layernorm.weight    W     norm_gain
        {p}word_embeddings_layernorm.bias      W     norm_bias
        {p}ln_f.weight                         W     norm_gain
        {p}ln_f.bias                           W     norm_bias
        lm_head.weight                         V W   output@1   optional
    """),
    blocks=tensors("""
        input_layernorm.weight                  W             norm_gain
        input_layernorm.bias                    W             norm_bias
        self_attention.query_key_value.weight   Q:Q+KV+KV W   hidden@1
        self_attention.query_key_value.bias     Q:Q+KV+KV     vector
        self_attention.dense.weight             W Q           hidden@1
        self_attention.dense.bias               W             vector
        post_attention_layernorm.weight         W             norm_gain
        post_attention_layernorm.bias           W             norm_bias
        mlp.dense_h_to_4h.weight                F W           hidden@1
        mlp.dense_h_to_4h.bias                  F             vector
        mlp.dense_4h_to_h.weight                W F           hidden@1
        mlp.dense_4h_to_h.bias                  W             vector
    """),
    tied=("lm_head.weight", "{p}word_embeddings.weight"), tie_default=True, ffn_default=4, caveats=(ALIBI,),
    not_clonable="BLOOM's ALiBi slopes depend on the head count, so copied heads attend differently"),)
