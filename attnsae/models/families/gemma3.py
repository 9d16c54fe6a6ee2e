"""Gemma 3: Llama's layout plus q/k norms, post-attention and post-MLP norms, gains stored as (gain - 1),
embeddings scaled by sqrt(d_model), sliding-window layers with their own rotary base, logit soft-cap."""

from __future__ import annotations

from ..config import ModelConfig
from .llama import check_rope, convert_decoder

MODEL_TYPES = ("gemma3_text", "gemma3")  # transformers' config.model_type values this file converts


def config_from_hf(hc) -> ModelConfig:
    hc = getattr(hc, "text_config", hc)
    rope = getattr(hc, "rope_parameters", None) or {}
    full, local = rope.get("full_attention", rope), rope.get("sliding_attention", {})
    check_rope(full)
    check_rope(local)
    return ModelConfig(
        family="gemma3", n_layers=hc.num_hidden_layers, d_model=hc.hidden_size, n_heads=hc.num_attention_heads,
        n_kv_heads=hc.num_key_value_heads, d_head=hc.head_dim, d_mlp=hc.intermediate_size,
        d_vocab=hc.vocab_size, n_ctx=hc.max_position_embeddings, norm_eps=hc.rms_norm_eps,
        rope_theta=float(full.get("rope_theta", getattr(hc, "rope_theta", 1e6))),
        rope_local_theta=float(local.get("rope_theta", getattr(hc, "rope_local_base_freq", 1e4))),
        sliding_window=hc.sliding_window, layer_types=list(hc.layer_types),
        attn_scale=hc.query_pre_attn_scalar**-0.5, final_logit_softcap=hc.final_logit_softcapping,
        tied_embeddings=bool(getattr(hc, "tie_word_embeddings", True)), bos_token_id=hc.bos_token_id,
    )


def convert_post_norms(new: dict, g, cfg: ModelConfig) -> dict:
    """The norms Gemma 2 and 3 put around attention and the MLP (HF's post_attention_layernorm is the norm after
    attention, not before the MLP as in Llama)."""
    for i in range(cfg.n_layers):
        p, b = f"layers.{i}.", f"blocks.{i}."
        new[b + "ln1_post_w"] = g(p + "post_attention_layernorm.weight")
        new[b + "ln2_w"] = g(p + "pre_feedforward_layernorm.weight")
        new[b + "ln2_post_w"] = g(p + "post_feedforward_layernorm.weight")
    return new


def convert(sd: dict, cfg: ModelConfig) -> dict:
    new, g = convert_decoder(sd, cfg)
    for i in range(cfg.n_layers):
        p, b = f"layers.{i}.", f"blocks.{i}."
        new[b + "q_norm_w"] = g(p + "self_attn.q_norm.weight")
        new[b + "k_norm_w"] = g(p + "self_attn.k_norm.weight")
    return convert_post_norms(new, g, cfg)
