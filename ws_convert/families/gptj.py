"""GPT-J: parallel attention and MLP after one LayerNorm, q/k/v without
biases, rotary over the first rotary_dim dims of each head in interleaved
pairs (2j, 2j + 1), a readout with a bias."""

from ..architectures import Architecture, tensors

ARCHITECTURES = (Architecture(
    name="gptj", model_types=("gptj",), classes=("GPTJForCausalLM",),
    keys={"width": ("hidden_size", "n_embd"), "ffn": ("n_inner",), "heads": ("num_attention_heads", "n_head"),
          "layers": ("num_hidden_layers", "n_layer"), "vocab": ("vocab_size",),
          "ctx": ("max_position_embeddings", "n_positions")},
    prefixes=("transformer.",), layer="{p}h.{i}.",
    globals=tensors("""
        {p}wte.weight      V W   input
        {p}ln_f.weight     W     norm_gain
        {p}ln_f.bias       W     norm_bias
        lm_head.weight     V W   output@1
        lm_head.bias       V     vector
    """),
    blocks=tensors("""
        ln_1.weight          W         norm_gain
        ln_1.bias            W         norm_bias
        attn.q_proj.weight   Q W       hidden@1
        attn.k_proj.weight   KV W      hidden@1
        attn.v_proj.weight   KV W      hidden@1
        attn.out_proj.weight W Q       hidden@1
        attn.bias            X X C C   buffer     optional
        attn.masked_bias               buffer     optional
        mlp.fc_in.weight     F W       hidden@1
        mlp.fc_in.bias       F         vector
        mlp.fc_out.weight    W F       hidden@1
        mlp.fc_out.bias      W         vector
    """),
    rotary="interleaved", rotary_dim_key="rotary_dim",
    tied=("lm_head.weight", "{p}wte.weight"), ffn_default=4),)
