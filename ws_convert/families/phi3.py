"""Phi-3: Llama's structure with fused projections, qkv_proj as
[q | k | v] and gate_up_proj as [gate | up], each part grown on its own."""

from ..architectures import tensors
from .llama import LLAMA

ARCHITECTURES = (LLAMA.variant(
    name="phi3", model_types=("phi3",), classes=("Phi3ForCausalLM",), aliases=(),
    blocks=tensors("""
        input_layernorm.weight            W          norm_gain
        self_attn.qkv_proj.weight         Q+KV+KV W  hidden@1
        self_attn.o_proj.weight           W Q        hidden@1
        post_attention_layernorm.weight   W          norm_gain
        mlp.gate_up_proj.weight           F+F W      hidden@1
        mlp.down_proj.weight              W F        hidden@1
    """)),)
