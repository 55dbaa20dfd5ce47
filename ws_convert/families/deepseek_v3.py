"""DeepSeek-V3: not grown. Its multi-head latent attention projects keys and
values for all heads through one shared low-rank latent (kv_lora_rank),
with a decoupled rotary part shared by every head: there is no per-head
block that zero-padding could keep in place, and no defensible way to
widen the latent along with the heads. Refused in one line rather than
grown into a model whose attention is scrambled."""

ARCHITECTURES = ()
REFUSED = {"deepseek_v3": "DeepSeek-V3's multi-head latent attention shares one low-rank key/value latent and one "
                          "rotary key across all heads, so no head layout can be kept when growing it; not grown"}
