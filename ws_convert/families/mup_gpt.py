"""The bundled μP GPT (ws_convert/model.py): [out, in] Linear weights,
rotary over whole heads, an untied readout."""

from ..architectures import Architecture, tensors

MUP_GPT = Architecture(
    name="mup-gpt",
    model_types=("ws_convert_gpt",),
    classes=("GPT",),
    keys={"width": ("width",), "ffn": ("ffn",), "heads": ("heads",), "layers": ("depth",),
          "vocab": ("vocab_size",), "ctx": ("context",), "base_width": ("base_width",)},
    prefixes=("",),
    layer="{p}blocks.{i}.",
    globals=tensors("""
        {p}wte.weight       V W   input
        {p}ln_f.weight      W     norm_gain
        {p}lm_head.weight   V W   output@1
    """),
    blocks=tensors("""
        ln1.weight      W     norm_gain
        attn.q.weight   Q W   hidden@1   zero=zero_query
        attn.k.weight   KV W  hidden@1
        attn.v.weight   KV W  hidden@1
        attn.o.weight   W Q   hidden@1
        ln2.weight      W     norm_gain
        fc.weight       F W   hidden@1
        proj.weight     W F   hidden@1
    """),
    rotary="half",
    tie_key=None,
    mup_readout=True,
    ffn_default=4,  # GPTConfig: a missing or null ffn is 4 x width
    defaults={"zero_query": True},  # GPTConfig's
)

ARCHITECTURES = (MUP_GPT,)
