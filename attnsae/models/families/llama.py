"""Llama (SmolLM2): RMSNorm, rotary positions, grouped-query attention, SiLU-gated MLP, no biases."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..config import ModelConfig

MODEL_TYPES = ("llama",)  # transformers' config.model_type values this file converts

# transformers' hidden_act -> ours (transformer._ACTIVATIONS)
ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu"}


def check_rope(rope: dict) -> None:
    if rope and rope.get("rope_type", "default") != "default":
        raise NotImplementedError(f"rope scaling {rope.get('rope_type')} is not supported yet")


def act_fn(hc) -> str:
    name = getattr(hc, "hidden_activation", None) or hc.hidden_act
    if name not in ACTIVATIONS:
        raise NotImplementedError(f"activation {name!r} is not supported (supported: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


def config_from_hf(hc, family: str = "llama", **extra) -> ModelConfig:
    """The config of a Llama-style decoder (Llama, Mistral, Qwen2, Gemma 1 and 2): rotary, gated MLP, RMSNorm;
    sliding-window layers where the config names them (every layer for Mistral's `sliding_window`)."""
    rope = getattr(hc, "rope_parameters", None) or {}
    check_rope(rope)
    window = getattr(hc, "sliding_window", None)
    layer_types = getattr(hc, "layer_types", None) or (["sliding_attention"] * hc.num_hidden_layers if window else None)
    return ModelConfig(**dict(
        family=family, n_layers=hc.num_hidden_layers, d_model=hc.hidden_size, n_heads=hc.num_attention_heads,
        n_kv_heads=hc.num_key_value_heads, d_head=getattr(hc, "head_dim", None) or hc.hidden_size // hc.num_attention_heads,
        d_mlp=hc.intermediate_size, d_vocab=hc.vocab_size, n_ctx=hc.max_position_embeddings,
        norm_eps=hc.rms_norm_eps, rope_theta=float(rope.get("rope_theta", getattr(hc, "rope_theta", 10000.0))),
        sliding_window=window if layer_types and "sliding_attention" in layer_types else None,
        layer_types=list(layer_types) if layer_types else None, act_fn=act_fn(hc),
        tied_embeddings=bool(hc.tie_word_embeddings), bos_token_id=hc.bos_token_id) | extra)


def convert_decoder(sd: dict, cfg: ModelConfig) -> tuple[dict, Callable[[str], torch.Tensor]]:
    """The parts Llama-style decoders share (embeddings, attention, gated MLP, input norm): (state, getter)."""
    def g(k):
        return sd[f"model.{k}"]

    new = {"W_E": g("embed_tokens.weight"), "ln_final_w": g("norm.weight")}
    if not cfg.tied_embeddings:
        new["W_U_untied"] = sd["lm_head.weight"].T
    for i in range(cfg.n_layers):
        p, b = f"layers.{i}.", f"blocks.{i}."
        for n, hfn in zip("QKVO", ("q_proj", "k_proj", "v_proj", "o_proj"), strict=True):
            new[b + f"W_{n}"] = g(p + f"self_attn.{hfn}.weight").T
        new[b + "W_gate"] = g(p + "mlp.gate_proj.weight").T
        new[b + "W_in"] = g(p + "mlp.up_proj.weight").T
        new[b + "W_out"] = g(p + "mlp.down_proj.weight").T
        new[b + "ln1_w"] = g(p + "input_layernorm.weight")
    return new, g


def convert(sd: dict, cfg: ModelConfig) -> dict:
    new, g = convert_decoder(sd, cfg)
    for i in range(cfg.n_layers):
        new[f"blocks.{i}.ln2_w"] = g(f"layers.{i}.post_attention_layernorm.weight")
    return new
