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
