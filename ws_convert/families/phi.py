"""Phi (1, 1.5, 2): parallel attention and MLP after one LayerNorm, biases
everywhere (the readout too), rotary over the first part of each head
(partial_rotary_factor, 0.5 by default), optional per-head q/k LayerNorms."""

from ..architectures import Architecture, tensors
from .llama import LLAMA_KEYS

ARCHITECTURES = (Architecture(
    name="phi", model_types=("phi",), classes=("PhiForCausalLM",), keys=LLAMA_KEYS,
    prefixes=("model.",), layer="{p}layers.{i}.",
    globals=tensors("""
        {p}embed_tokens.weight      V W   input
        {p}final_layernorm.weight   W     norm_gain
        {p}final_layernorm.bias     W     norm_bias
        lm_head.weight              V W   output@1
        lm_head.bias                V     vector
    """),
    blocks=tensors("""
        input_layernorm.weight        W     norm_gain
        input_layernorm.bias          W     norm_bias
        self_attn.q_proj.weight       Q W   hidden@1
        self_attn.q_proj.bias         Q     vector
        self_attn.k_proj.weight       KV W  hidden@1
        self_attn.k_proj.bias         KV    vector
        self_attn.v_proj.weight       KV W  hidden@1
        self_attn.v_proj.bias         KV    vector
        self_attn.q_layernorm.weight  HD    norm_gain  optional
        self_attn.q_layernorm.bias    HD    norm_bias  optional
        self_attn.k_layernorm.weight  HD    norm_gain  optional
        self_attn.k_layernorm.bias    HD    norm_bias  optional
        self_attn.dense.weight        W Q   hidden@1
        self_attn.dense.bias          W     vector
        mlp.fc1.weight                F W   hidden@1
        mlp.fc1.bias                  F     vector
        mlp.fc2.weight                W F   hidden@1
        mlp.fc2.bias                  W     vector
    """),
    rotary="half", defaults={"partial_rotary_factor": 0.5},
    tied=("lm_head.weight", "{p}embed_tokens.weight")),)
