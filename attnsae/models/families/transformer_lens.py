"""Checkpoints that exist only in TransformerLens's format (Neel Nanda's GELU-1L...4L, SoLU-1L...12L,
attn-only-1L...4L with their shortformer positions): a folder
with TransformerLens's `config.json` (d_model, n_layers, n_heads, d_head, d_mlp, d_vocab, n_ctx, act_fn, attn_only,
normalization_type, positional_embedding_type / shortformer_pos) and its state dict under TransformerLens's
parameter names (`model_final.pth`, loaded tensors-only, or `model.safetensors`). Not a transformers model type."""

from __future__ import annotations

from ..config import ModelConfig
from . import llama

MODEL_TYPES = ()  # no transformers model_type: `load_checkpoint` reads the folder

ACTIVATIONS = llama.ACTIVATIONS | {"solu_ln": "solu_ln"}  # TL names activations as transformers does, plus SoLU


def is_checkpoint(cfg: dict) -> bool:
    """A TransformerLens config, not a transformers one."""
    return "model_type" not in cfg and {"d_model", "n_layers", "n_heads", "d_head"} <= set(cfg)


def config_from_tl(c: dict) -> ModelConfig:
    norm = c.get("normalization_type", c.get("normalization"))
    pos = c.get("positional_embedding_type", "shortformer" if c.get("shortformer_pos") else "standard")
    missing = [why for bad, why in (
        (norm != "LN", f"normalization {norm!r} (only LN is supported)"),
        (pos not in ("standard", "shortformer"), f"positional embedding {pos!r} (supported: standard, shortformer)"),
        (c["act_fn"] not in ACTIVATIONS, f"activation {c['act_fn']!r} (supported: {', '.join(ACTIVATIONS)})"),
        (bool(c.get("final_rms")) or bool(c.get("gated_mlp")), "final RMS norm or gated MLP"),
    ) if bad]
    if missing:
        raise NotImplementedError(f"this TransformerLens checkpoint is not supported: {'; '.join(missing)}")
    return ModelConfig(
        family="transformer_lens", n_layers=c["n_layers"], d_model=c["d_model"], n_heads=c["n_heads"], d_head=c["d_head"],
        d_mlp=c.get("d_mlp") or 0, d_vocab=c["d_vocab"], n_ctx=c["n_ctx"], norm_eps=c.get("eps", 1e-5),
        act_fn=ACTIVATIONS[c["act_fn"]], attn_only=bool(c.get("attn_only")), shortformer_pos=pos == "shortformer",
        tied_embeddings=False,
        bos_token_id=c.get("bos_token_id"))


def convert(sd: dict, cfg: ModelConfig) -> dict:
    """TransformerLens's names and per-head shapes -> ours (heads fused)."""
    new = {"W_E": sd["embed.W_E"], "W_pos": sd["pos_embed.W_pos"], "W_U_untied": sd["unembed.W_U"],
           "b_U": sd["unembed.b_U"], "ln_final_w": sd["ln_final.w"], "ln_final_b": sd["ln_final.b"]}
    for i in range(cfg.n_layers):
        p, b = f"blocks.{i}.", f"blocks.{i}."
        for n in "QKV":
            new[b + f"W_{n}"] = sd[p + f"attn.W_{n}"].permute(1, 0, 2).flatten(1)  # [h, d, dh] -> [d, h*dh]
            new[b + f"b_{n}"] = sd[p + f"attn.b_{n}"].flatten()
        new[b + "W_O"], new[b + "b_O"] = sd[p + "attn.W_O"].flatten(0, 1), sd[p + "attn.b_O"]  # [h, dh, d] -> [h*dh, d]
        new[b + "ln1_w"], new[b + "ln1_b"] = sd[p + "ln1.w"], sd[p + "ln1.b"]
        if not cfg.attn_only:
            new[b + "ln2_w"], new[b + "ln2_b"] = sd[p + "ln2.w"], sd[p + "ln2.b"]
            for n in ("W_in", "b_in", "W_out", "b_out"):
                new[b + n] = sd[p + f"mlp.{n}"]
            if cfg.act_fn == "solu_ln":
                new[b + "mlp_ln_w"], new[b + "mlp_ln_b"] = sd[p + "mlp.ln.w"], sd[p + "mlp.ln.b"]
    return new
