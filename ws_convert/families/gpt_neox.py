"""GPT-NeoX (Pythia): a fused query_key_value laid out per head as
[head, (q, k, v), head_dim], rotary over the first quarter of each head by
default, parallel attention and MLP, LayerNorms and projections with biases.
Older checkpoints name the readout embed_out."""

from ..architectures import Architecture, tensors

ARCHITECTURES = (Architecture(
    name="gpt_neox", model_types=("gpt_neox",), classes=("GPTNeoXForCausalLM",),
    keys={"width": ("hidden_size",), "ffn": ("intermediate_size",), "heads": ("num_attention_heads",),
          "layers": ("num_hidden_layers",), "vocab": ("vocab_size",), "ctx": ("max_position_embeddings",)},
    prefixes=("gpt_neox.",), layer="{p}layers.{i}.",
    globals=tensors("""
        {p}embed_in.weight           V W   input
        {p}final_layer_norm.weight   W     norm_gain
        {p}final_layer_norm.bias     W     norm_bias
        lm_head.weight               V W   output@1   optional
        embed_out.weight             V W   output@1   optional
    """),
    blocks=tensors("""
        input_layernorm.weight             W             norm_gain
        input_layernorm.bias               W             norm_bias
        post_attention_layernorm.weight    W             norm_gain
        post_attention_layernorm.bias      W             norm_bias
        attention.query_key_value.weight   Q:Q+KV+KV W   hidden@1
        attention.query_key_value.bias     Q:Q+KV+KV     vector     optional
        attention.dense.weight             W Q           hidden@1
        attention.dense.bias               W             vector     optional
        mlp.dense_h_to_4h.weight           F W           hidden@1
        mlp.dense_h_to_4h.bias             F             vector
        mlp.dense_4h_to_h.weight           W F           hidden@1
        mlp.dense_4h_to_h.bias             W             vector
    """),
    rotary="half", defaults={"partial_rotary_factor": 0.25},
    tied=("lm_head.weight", "{p}embed_in.weight")),)
