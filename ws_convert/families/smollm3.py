"""SmolLM3: Llama's tensors and keys, tied embeddings by default, and a
per-layer list of which layers use rotary positions."""

from .llama import LLAMA

ARCHITECTURES = (LLAMA.variant(name="smollm3", model_types=("smollm3",), classes=("SmolLM3ForCausalLM",),
                               aliases=(), tie_default=True, per_layer=("layer_types", "no_rope_layers")),)
