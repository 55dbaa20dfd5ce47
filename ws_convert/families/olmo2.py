"""OLMo 2: norms after attention and MLP, and q/k RMS norms taken over all
heads at once (so their gains grow with the width)."""

from ..architectures import Caveat, tensors
from .llama import ATTENTION, LLAMA, MLP

QK_NORM = Caveat("width", "q and k are normalised over all heads at once (OLMo 2, OLMoE), so the grown heads change "
                          "how the old ones are normalised: zero-padding cannot keep the function")

ARCHITECTURES = (LLAMA.variant(
    name="olmo2", model_types=("olmo2",), classes=("Olmo2ForCausalLM",), aliases=(), caveats=(QK_NORM,),
    blocks=tensors(ATTENTION + """
        self_attn.q_norm.weight             Q     norm_gain
        self_attn.k_norm.weight             KV    norm_gain
        post_attention_layernorm.weight     W     norm_gain
        post_feedforward_layernorm.weight   W     norm_gain
    """ + MLP)),)
