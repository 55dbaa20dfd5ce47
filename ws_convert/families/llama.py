"""Llama and the families that share its tensors and config keys: Mistral,
Qwen2 (q/k/v biases), Qwen3 (per-head q/k norms). Rotary over whole heads,
rotate-half pairs."""

from ..architectures import Architecture, tensors

LLAMA_KEYS = {
    "width": ("hidden_size",), "ffn": ("intermediate_size",), "heads": ("num_attention_heads",),
    "kv_heads": ("num_key_value_heads",), "head_dim": ("head_dim",), "layers": ("num_hidden_layers",),
    "vocab": ("vocab_size",), "ctx": ("max_position_embeddings",),
}

# Llama's attention and MLP, which many families share under the same names.
ATTENTION = """
    self_attn.q_proj.weight   Q W   hidden@1   zero=zero_query
    self_attn.k_proj.weight   KV W  hidden@1
    self_attn.v_proj.weight   KV W  hidden@1
    self_attn.q_proj.bias     Q     vector     optional
    self_attn.k_proj.bias     KV    vector     optional
    self_attn.v_proj.bias     KV    vector     optional
    self_attn.o_proj.weight   W Q   hidden@1
    self_attn.o_proj.bias     W     vector     optional
"""
MLP = """
    mlp.gate_proj.weight      F W   hidden@1
    mlp.up_proj.weight        F W   hidden@1
    mlp.down_proj.weight      W F   hidden@1
    mlp.gate_proj.bias        F     vector     optional
    mlp.up_proj.bias          F     vector     optional
    mlp.down_proj.bias        W     vector     optional
"""

LLAMA_GLOBALS = tensors("""
    {p}embed_tokens.weight   V W   input
    {p}norm.weight           W     norm_gain
    lm_head.weight           V W   output@1   optional
""")

LLAMA = Architecture(
    name="llama",
    model_types=("llama", "mistral", "qwen2", "qwen3"),
    classes=("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"),
    aliases=("mistral", "qwen2", "qwen3"),
    keys=LLAMA_KEYS,
    prefixes=("model.",),
    layer="{p}layers.{i}.",
    globals=LLAMA_GLOBALS,
    blocks=tensors("input_layernorm.weight  W  norm_gain" + ATTENTION + """
        self_attn.q_norm.weight           HD    norm_gain  optional
        self_attn.k_norm.weight           HD    norm_gain  optional
        post_attention_layernorm.weight   W     norm_gain
    """ + MLP),
    rotary="half",
    tied=("lm_head.weight", "{p}embed_tokens.weight"),
    per_layer=("layer_types",),
)

ARCHITECTURES = (LLAMA,)
