"""Mixtral: Llama's attention, and in every layer a router ([experts,
width], fan-in infinite: a readout in μP's terms) over experts that are
each a Llama MLP (w1 gate, w3 up, w2 down). Every expert grows like a dense
MLP with its own noise stream; the expert count and top-k are kept."""

from ..architectures import tensors
from .llama import ATTENTION, LLAMA, LLAMA_KEYS

ARCHITECTURES = (LLAMA.variant(
    name="mixtral", model_types=("mixtral",), classes=("MixtralForCausalLM",), aliases=(),
    upcycles=("llama", "mistral"), upcycle_init=("block_sparse_moe.gate.weight",),
    dense_rows={"block_sparse_moe.experts.{e}.w1.weight": "mlp.gate_proj.weight",
                "block_sparse_moe.experts.{e}.w3.weight": "mlp.up_proj.weight",
                "block_sparse_moe.experts.{e}.w2.weight": "mlp.down_proj.weight"},
    keys={**LLAMA_KEYS, "experts": ("num_local_experts",)},
    blocks=tensors("input_layernorm.weight  W  norm_gain" + ATTENTION + """
        post_attention_layernorm.weight             W      norm_gain
        block_sparse_moe.gate.weight                NE W   output@1
        block_sparse_moe.experts.{e}.w1.weight      F W    hidden@1
        block_sparse_moe.experts.{e}.w3.weight      F W    hidden@1
        block_sparse_moe.experts.{e}.w2.weight      W F    hidden@1
    """)),)
