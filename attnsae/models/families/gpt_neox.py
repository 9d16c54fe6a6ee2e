"""GPT-NeoX (Pythia): LayerNorm with biases, attention and MLP in parallel on the block's input, rotary on the first
part of each head (partial_rotary_factor), one fused query/key/value projection laid out head by head, an exact-GELU
MLP, untied embeddings."""

from __future__ import annotations

from ..config import ModelConfig
from .llama import act_fn, check_rope

MODEL_TYPES = ("gpt_neox",)  # transformers' config.model_type values this file converts


def config_from_hf(hc) -> ModelConfig:
    rope = getattr(hc, "rope_parameters", None) or {}
    check_rope(rope)
    d_head = hc.hidden_size // hc.num_attention_heads
    frac = rope.get("partial_rotary_factor", getattr(hc, "rotary_pct", 1.0))
    if not getattr(hc, "attention_bias", True):
        raise NotImplementedError("GPT-NeoX without attention biases is not supported")
    return ModelConfig(
        family="gpt_neox", n_layers=hc.num_hidden_layers, d_model=hc.hidden_size, n_heads=hc.num_attention_heads,
        d_head=d_head, d_mlp=hc.intermediate_size, d_vocab=hc.vocab_size, n_ctx=hc.max_position_embeddings,
        norm_eps=hc.layer_norm_eps, rope_theta=float(rope.get("rope_theta", getattr(hc, "rotary_emb_base", 10000.0))),
        rotary_dim=int(d_head * frac), act_fn=act_fn(hc), parallel_attn_mlp=bool(hc.use_parallel_residual),
        tied_embeddings=bool(hc.tie_word_embeddings), bos_token_id=hc.bos_token_id,
    )


def convert(sd: dict, cfg: ModelConfig) -> dict:
    def g(k):
        return sd[f"gpt_neox.{k}"]

    h, dh, d = cfg.n_heads, cfg.d_head, cfg.d_model
    new = {"W_E": g("embed_in.weight"), "ln_final_w": g("final_layer_norm.weight"), "ln_final_b": g("final_layer_norm.bias")}
    if not cfg.tied_embeddings:
        new["W_U_untied"] = sd["embed_out.weight" if "embed_out.weight" in sd else "lm_head.weight"].T  # transformers 5
    for i in range(cfg.n_layers):
        p, b = f"layers.{i}.", f"blocks.{i}."
        qkv_w = g(p + "attention.query_key_value.weight").view(h, 3, dh, d)  # head by head: [q, k, v] of d_head each
        qkv_b = g(p + "attention.query_key_value.bias").view(h, 3, dh)
        for j, n in enumerate("QKV"):
            new[b + f"W_{n}"] = qkv_w[:, j].reshape(h * dh, d).T
            new[b + f"b_{n}"] = qkv_b[:, j].reshape(h * dh)
        new[b + "W_O"], new[b + "b_O"] = g(p + "attention.dense.weight").T, g(p + "attention.dense.bias")
        new[b + "W_in"], new[b + "b_in"] = g(p + "mlp.dense_h_to_4h.weight").T, g(p + "mlp.dense_h_to_4h.bias")
        new[b + "W_out"], new[b + "b_out"] = g(p + "mlp.dense_4h_to_h.weight").T, g(p + "mlp.dense_4h_to_h.bias")
        for ln, hf in (("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm")):
            new[b + f"{ln}_w"], new[b + f"{ln}_b"] = g(p + f"{hf}.weight"), g(p + f"{hf}.bias")
    return new
