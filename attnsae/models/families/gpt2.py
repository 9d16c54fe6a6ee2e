"""GPT-2: LayerNorm, learned positions, biases everywhere, GELU MLP; Conv1D weights are already x @ W."""

from __future__ import annotations

from ..config import ModelConfig

MODEL_TYPES = ("gpt2",)  # transformers' config.model_type values this file converts


def config_from_hf(hc) -> ModelConfig:
    return ModelConfig(
        family="gpt2", n_layers=hc.n_layer, d_model=hc.n_embd, n_heads=hc.n_head,
        d_head=hc.n_embd // hc.n_head, d_mlp=hc.n_inner or 4 * hc.n_embd, d_vocab=hc.vocab_size,
        n_ctx=hc.n_positions, norm_eps=hc.layer_norm_epsilon, bos_token_id=hc.bos_token_id,
    )


def convert(sd: dict, cfg: ModelConfig) -> dict:
    def g(k):
        return sd[f"transformer.{k}"]

    new = {"W_E": g("wte.weight"), "W_pos": g("wpe.weight"), "ln_final_w": g("ln_f.weight"), "ln_final_b": g("ln_f.bias")}
    d = cfg.d_model
    for i in range(cfg.n_layers):
        p, b = f"h.{i}.", f"blocks.{i}."
        w, bias = g(p + "attn.c_attn.weight"), g(p + "attn.c_attn.bias")  # Q, K, V side by side
        for j, n in enumerate("QKV"):
            new[b + f"W_{n}"], new[b + f"b_{n}"] = w[:, j * d:(j + 1) * d], bias[j * d:(j + 1) * d]
        new[b + "W_O"], new[b + "b_O"] = g(p + "attn.c_proj.weight"), g(p + "attn.c_proj.bias")
        new[b + "ln1_w"], new[b + "ln1_b"] = g(p + "ln_1.weight"), g(p + "ln_1.bias")
        new[b + "ln2_w"], new[b + "ln2_b"] = g(p + "ln_2.weight"), g(p + "ln_2.bias")
        new[b + "W_in"], new[b + "b_in"] = g(p + "mlp.c_fc.weight"), g(p + "mlp.c_fc.bias")
        new[b + "W_out"], new[b + "b_out"] = g(p + "mlp.c_proj.weight"), g(p + "mlp.c_proj.bias")
    return new
