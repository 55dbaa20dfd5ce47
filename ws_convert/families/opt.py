"""OPT: learned positions with an offset of 2 rows (kept as they are), q/k/v
and out projections with biases, a two-matrix MLP (fc1, fc2), and token
embeddings of word_embed_proj_dim projected in and out where that differs
from the width."""

from ..architectures import Architecture, tensors

ARCHITECTURES = (Architecture(
    name="opt", model_types=("opt",), classes=("OPTForCausalLM",),
    keys={"width": ("hidden_size",), "ffn": ("ffn_dim",), "heads": ("num_attention_heads",),
          "layers": ("num_hidden_layers",), "vocab": ("vocab_size",), "ctx": ("max_position_embeddings",),
          "embed": ("word_embed_proj_dim",)},
    prefixes=("model.decoder.", "decoder."), layer="{p}layers.{i}.",
    globals=tensors("""
        {p}embed_tokens.weight       V E   input
        {p}embed_positions.weight    X W   input
        {p}project_in.weight         W E   hidden@1    optional
        {p}project_out.weight        E W   hidden@1    optional
        {p}final_layer_norm.weight   W     norm_gain   optional
        {p}final_layer_norm.bias     W     norm_bias   optional
        lm_head.weight               V E   output@1    optional
    """),
    blocks=tensors("""
        self_attn.q_proj.weight          Q W    hidden@1
        self_attn.k_proj.weight          KV W   hidden@1
        self_attn.v_proj.weight          KV W   hidden@1
        self_attn.q_proj.bias            Q      vector     optional
        self_attn.k_proj.bias            KV     vector     optional
        self_attn.v_proj.bias            KV     vector     optional
        self_attn.out_proj.weight        W Q    hidden@1
        self_attn.out_proj.bias          W      vector     optional
        self_attn_layer_norm.weight      W      norm_gain  optional
        self_attn_layer_norm.bias        W      norm_bias  optional
        fc1.weight                       F W    hidden@1
        fc1.bias                         F      vector     optional
        fc2.weight                       W F    hidden@1
        fc2.bias                         W      vector     optional
        final_layer_norm.weight          W      norm_gain  optional
        final_layer_norm.bias            W      norm_bias  optional
    """),
    tied=("lm_head.weight", "{p}embed_tokens.weight"), tie_default=True),)
