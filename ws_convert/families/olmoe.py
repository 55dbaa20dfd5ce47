"""OLMoE: OLMo 2's q/k norms over all heads, pre-norm blocks, and in every
layer a router ([experts, width], fan-in infinite) over experts that are
each a Llama MLP. Every expert grows like a dense MLP with its own noise
stream; the expert count and top-k are kept."""

from ..architectures import tensors
from .llama import ATTENTION, LLAMA, LLAMA_KEYS
from .olmo2 import QK_NORM

ARCHITECTURES = (LLAMA.variant(
    name="olmoe", model_types=("olmoe",), classes=("OlmoeForCausalLM",), aliases=(), caveats=(QK_NORM,),
    keys={**LLAMA_KEYS, "experts": ("num_experts",)},
    blocks=tensors("input_layernorm.weight  W  norm_gain" + ATTENTION + """
        self_attn.q_norm.weight                 Q      norm_gain
        self_attn.k_norm.weight                 KV     norm_gain
        post_attention_layernorm.weight         W      norm_gain
        mlp.gate.weight                         NE W   output@1
        mlp.experts.{e}.gate_proj.weight        F W    hidden@1
        mlp.experts.{e}.up_proj.weight          F W    hidden@1
        mlp.experts.{e}.down_proj.weight        W F    hidden@1
    """)),)
