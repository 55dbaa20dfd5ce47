"""Qwen3-MoE: Qwen3's attention with per-head q/k norms; each sparse layer
has a router ([experts, width]) over routed experts of moe_intermediate_size
and no shared expert; the layers in mlp_only_layers are a dense MLP."""

from ..architectures import tensors
from .llama import ATTENTION, MLP
from .qwen2_moe import MOE_KEYS, QWEN2_MOE

ARCHITECTURES = (QWEN2_MOE.variant(
    name="qwen3_moe", model_types=("qwen3_moe",), classes=("Qwen3MoeForCausalLM",),
    keys={**MOE_KEYS, "experts": ("num_experts", "num_local_experts")},
    upcycles=("qwen3",), upcycle_init=("mlp.gate.weight",),
    blocks=tensors("input_layernorm.weight  W  norm_gain" + ATTENTION + """
        self_attn.q_norm.weight                      HD     norm_gain
        self_attn.k_norm.weight                      HD     norm_gain
        post_attention_layernorm.weight              W      norm_gain
        mlp.gate.weight                              NE W   output@1   optional
        mlp.experts.{e}.gate_proj.weight             MF W   hidden@1   optional
        mlp.experts.{e}.up_proj.weight               MF W   hidden@1   optional
        mlp.experts.{e}.down_proj.weight             W MF   hidden@1   optional
    """ + MLP.replace("hidden@1", "hidden@1   optional"))),)
