"""Gemma 2: Gemma's gains stored as 1 + w and scaled embeddings, with norms
before and after both attention and MLP, and alternating sliding layers."""

from ..architectures import tensors
from .gemma import GEMMA
from .llama import ATTENTION, MLP

GEMMA2_BLOCKS = tensors("input_layernorm.weight  W  norm_gain" + ATTENTION + """
    post_attention_layernorm.weight    W     norm_gain
    pre_feedforward_layernorm.weight   W     norm_gain
    post_feedforward_layernorm.weight  W     norm_gain
""" + MLP)

GEMMA2 = GEMMA.variant(name="gemma2", model_types=("gemma2",), classes=("Gemma2ForCausalLM",),
                       blocks=GEMMA2_BLOCKS)

ARCHITECTURES = (GEMMA2,)
