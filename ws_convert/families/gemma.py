"""Gemma: Llama's tensor names, but every norm gain stored as 1 + w, and
embeddings scaled by sqrt(hidden_size)."""

from ..architectures import Caveat
from .llama import LLAMA

EMBED_SCALE = Caveat("width", "Gemma multiplies its embeddings by sqrt(hidden_size), so the grown model scales every "
                              "token's embedding by sqrt(width ratio) more: zero-padding cannot keep the function")

GEMMA = LLAMA.variant(name="gemma", model_types=("gemma",), classes=("GemmaForCausalLM",), aliases=(),
                      norm_offset=1.0, tie_default=True, caveats=(EMBED_SCALE,),
                      not_clonable="Gemma multiplies its embeddings by sqrt(hidden_size), which copies of "
                                   "units cannot keep")

ARCHITECTURES = (GEMMA,)
