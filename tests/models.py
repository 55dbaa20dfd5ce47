"""Tiny Hugging Face models built from local configs, for the planning tests."""

from __future__ import annotations

import pytest

transformers = pytest.importorskip("transformers")


def tiny(kind: str, width: int = 64, heads: int = 4, kv_heads: int = 2, layers: int = 2):
    """(model class, config) of a tiny model of the given family."""
    common = dict(hidden_size=width, intermediate_size=2 * width, num_attention_heads=heads,
                  num_key_value_heads=kv_heads, num_hidden_layers=layers, vocab_size=97,
                  max_position_embeddings=64)
    if kind == "gpt2":
        return transformers.GPT2LMHeadModel, transformers.GPT2Config(
            n_embd=width, n_head=heads, n_layer=layers, vocab_size=97, n_positions=64)
    if kind == "llama":
        return transformers.LlamaForCausalLM, transformers.LlamaConfig(**common)
    if kind == "mistral":
        return transformers.MistralForCausalLM, transformers.MistralConfig(**common, sliding_window=None)
    if kind == "qwen2":
        return transformers.Qwen2ForCausalLM, transformers.Qwen2Config(**common)
    if kind == "qwen3":
        return transformers.Qwen3ForCausalLM, transformers.Qwen3Config(**common, head_dim=width // heads)
    raise ValueError(kind)


FAMILIES = ["gpt2", "llama", "mistral", "qwen2", "qwen3"]


# Every natively grown family, as (transformers class, config class, config) at width 32 with 4 heads of 8,
# 2 kv heads where the family has them, an ffn of 48, a vocabulary of 61 and 24 positions: sizes apart from
# each other, so a wrong axis cannot pass for a right one.
_LLAMA_LIKE = dict(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
                   num_hidden_layers=2, vocab_size=61, max_position_embeddings=24, pad_token_id=0, bos_token_id=1,
                   eos_token_id=2)
_GPT_LIKE = dict(n_embd=32, n_head=4, n_layer=2, vocab_size=61, n_positions=24, pad_token_id=0, bos_token_id=1,
                 eos_token_id=2)
FAMILY_CASES = {
    "llama": ("LlamaForCausalLM", "LlamaConfig", _LLAMA_LIKE),
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", dict(_LLAMA_LIKE, head_dim=8)),
    "granite": ("GraniteForCausalLM", "GraniteConfig", dict(_LLAMA_LIKE, embedding_multiplier=1.5,
                                                              residual_multiplier=0.7, logits_scaling=2.0)),
    "smollm3": ("SmolLM3ForCausalLM", "SmolLM3Config", dict(_LLAMA_LIKE, no_rope_layer_interval=2)),
    "gemma": ("GemmaForCausalLM", "GemmaConfig", dict(_LLAMA_LIKE, head_dim=8)),
    "gemma2": ("Gemma2ForCausalLM", "Gemma2Config", dict(_LLAMA_LIKE, head_dim=8, query_pre_attn_scalar=8)),
    "gemma3_text": ("Gemma3ForCausalLM", "Gemma3TextConfig", dict(_LLAMA_LIKE, head_dim=8, query_pre_attn_scalar=8,
                                                                  sliding_window=4)),
    "olmo": ("OlmoForCausalLM", "OlmoConfig", _LLAMA_LIKE),
    "olmo2": ("Olmo2ForCausalLM", "Olmo2Config", _LLAMA_LIKE),
    "phi": ("PhiForCausalLM", "PhiConfig", dict(_LLAMA_LIKE, qk_layernorm=True)),
    "phi3": ("Phi3ForCausalLM", "Phi3Config", _LLAMA_LIKE),
    "stablelm": ("StableLmForCausalLM", "StableLmConfig", dict(_LLAMA_LIKE, use_qkv_bias=True)),
    "starcoder2": ("Starcoder2ForCausalLM", "Starcoder2Config", _LLAMA_LIKE),
    "cohere": ("CohereForCausalLM", "CohereConfig", dict(_LLAMA_LIKE, use_qk_norm=True)),
    "gpt_neox": ("GPTNeoXForCausalLM", "GPTNeoXConfig", dict(_LLAMA_LIKE, num_key_value_heads=None)),
    "gpt_neo": ("GPTNeoForCausalLM", "GPTNeoConfig", dict(
        hidden_size=32, num_heads=4, num_layers=2, vocab_size=61, max_position_embeddings=24,
        attention_types=[[["global", "local"], 1]], window_size=3)),
    "gptj": ("GPTJForCausalLM", "GPTJConfig", dict(_GPT_LIKE, rotary_dim=4)),
    "falcon": ("FalconForCausalLM", "FalconConfig", dict(
        hidden_size=32, num_attention_heads=4, num_kv_heads=2, num_hidden_layers=2, vocab_size=61,
        max_position_embeddings=24, new_decoder_architecture=True, bias=True)),
    "falcon-mq": ("FalconForCausalLM", "FalconConfig", dict(
        hidden_size=32, num_attention_heads=4, num_hidden_layers=2, vocab_size=61, max_position_embeddings=24,
        new_decoder_architecture=False, multi_query=True, parallel_attn=False)),
    "falcon-mha": ("FalconForCausalLM", "FalconConfig", dict(
        hidden_size=32, num_attention_heads=4, num_hidden_layers=2, vocab_size=61, max_position_embeddings=24,
        new_decoder_architecture=False, multi_query=False, bias=True)),
    "gpt_bigcode": ("GPTBigCodeForCausalLM", "GPTBigCodeConfig", _GPT_LIKE),
    "gpt_bigcode-mha": ("GPTBigCodeForCausalLM", "GPTBigCodeConfig", dict(_GPT_LIKE, multi_query=False)),
    "opt": ("OPTForCausalLM", "OPTConfig", dict(
        hidden_size=32, ffn_dim=48, num_attention_heads=4, num_hidden_layers=2, vocab_size=61,
        max_position_embeddings=24, word_embed_proj_dim=16, pad_token_id=0)),
    "bloom": ("BloomForCausalLM", "BloomConfig", dict(hidden_size=32, n_head=4, n_layer=2, vocab_size=61)),
    "mixtral": ("MixtralForCausalLM", "MixtralConfig", dict(_LLAMA_LIKE, num_local_experts=3, num_experts_per_tok=2)),
    "olmoe": ("OlmoeForCausalLM", "OlmoeConfig", dict(_LLAMA_LIKE, num_experts=3, num_experts_per_tok=2)),
    "qwen2_moe": ("Qwen2MoeForCausalLM", "Qwen2MoeConfig", dict(
        _LLAMA_LIKE, num_experts=3, num_experts_per_tok=2, moe_intermediate_size=24,
        shared_expert_intermediate_size=40, mlp_only_layers=[1])),  # layer 1 dense
    "qwen3_moe": ("Qwen3MoeForCausalLM", "Qwen3MoeConfig", dict(
        _LLAMA_LIKE, head_dim=8, num_experts=3, num_experts_per_tok=2, moe_intermediate_size=24)),
}


def family_model(case: str, **overrides):
    """(model class, config) of the tiny model FAMILY_CASES names."""
    cls, config_cls, kwargs = FAMILY_CASES[case]
    return getattr(transformers, cls), getattr(transformers, config_cls)(**{**kwargs, **overrides})


def perturbed(model, seed: int = 0):
    """The model with every parameter drawn at random (nothing trivially 0 or 1)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
    return model
