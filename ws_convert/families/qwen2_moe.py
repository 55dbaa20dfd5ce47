"""Qwen2-MoE: Qwen2's attention; each sparse layer has a router ([experts,
width]) over routed experts of moe_intermediate_size, plus one shared
expert of shared_expert_intermediate_size behind a one-unit gate ([1,
width]); the layers in mlp_only_layers (or off the decoder_sparse_step) are
a dense MLP instead. Every expert grows like a dense MLP with its own noise
stream; when the depth grows, the dense layers follow their source layers."""

from ..architectures import tensors
from .llama import ATTENTION, LLAMA, LLAMA_KEYS, MLP

MOE_KEYS = {**LLAMA_KEYS, "moe_ffn": ("moe_intermediate_size",)}
# upcycled from the dense model: every expert starts from its MLP; the top-k weights sum to 1, as one MLP's
EXPERT_ROWS = {f"mlp.experts.{{e}}.{proj}.weight": f"mlp.{proj}.weight"
               for proj in ("gate_proj", "up_proj", "down_proj")}
UPCYCLED = {"norm_topk_prob": True, "mlp_only_layers": [], "decoder_sparse_step": 1}

QWEN2_MOE = LLAMA.variant(
    name="qwen2_moe", model_types=("qwen2_moe",), classes=("Qwen2MoeForCausalLM",), aliases=(),
    keys={**MOE_KEYS, "shared_ffn": ("shared_expert_intermediate_size",), "experts": ("num_experts",)},
    dense_layers=("mlp_only_layers", "decoder_sparse_step"),
    upcycles=("qwen2",), dense_rows=EXPERT_ROWS, upcycle_config=UPCYCLED,
    upcycle_init=("mlp.gate.weight", "mlp.shared_expert.gate_proj.weight", "mlp.shared_expert.up_proj.weight",
                  "mlp.shared_expert.down_proj.weight", "mlp.shared_expert_gate.weight"),
    blocks=tensors("input_layernorm.weight  W  norm_gain" + ATTENTION + """
        post_attention_layernorm.weight              W      norm_gain
        mlp.gate.weight                              NE W   output@1   optional
        mlp.experts.{e}.gate_proj.weight             MF W   hidden@1   optional
        mlp.experts.{e}.up_proj.weight               MF W   hidden@1   optional
        mlp.experts.{e}.down_proj.weight             W MF   hidden@1   optional
        mlp.shared_expert.gate_proj.weight           SF W   hidden@1   optional
        mlp.shared_expert.up_proj.weight             SF W   hidden@1   optional
        mlp.shared_expert.down_proj.weight           W SF   hidden@1   optional
        mlp.shared_expert_gate.weight                X W    output@1   optional
    """ + MLP.replace("hidden@1", "hidden@1   optional")))

ARCHITECTURES = (QWEN2_MOE,)
