"""The direct path from an attention layer's output to the logits, through the norms after it.

Norms are linear once their per-token scale (the RMS or std they divide by: TransformerLens's
hook_scale) is frozen. With the scales given this is the exact direct contribution at that token;
without them they are dropped, which keeps every token's logit ranking (the scale is one positive
number per token).
"""

from __future__ import annotations

import torch

from .heads import layer_of


def norm_gain(model, w: torch.Tensor) -> torch.Tensor:
    """A norm's gain from its stored weight."""
    return w.detach().float() + model.cfg.norm_gain_offset  # Gemma stores norm gains as (gain - 1)


def through_final_norm(model, layer: int, out: torch.Tensor, post_scale=None, final_scale=None) -> torch.Tensor:
    """[..., d_model] attention-layer output -> what it adds to the unembedding input: Gemma's
    post-attention norm gain, LayerNorm's centring, the final norm gain (divided by the scales if given)."""
    c, out = model.cfg, out.float()
    if c.post_norms:
        out = out * norm_gain(model, model.blocks[layer].ln1_post_w)
        if post_scale is not None:
            out = out / post_scale.float()
    if c.norm == "layernorm":
        out = out - out.mean(-1, keepdim=True)
    out = out * norm_gain(model, model.ln_final_w)
    return out if final_scale is None else out / final_scale.float()


def head_direct_effect(model, layer: int, z: torch.Tensor, directions: torch.Tensor, final_scale,
                       post_scale=None) -> torch.Tensor:
    """[b, n_heads]: each head's direct contribution along one unembedding direction per row (directions
    [d_model, b], e.g. W_U[:, answer] or W_U[:, io] - W_U[:, s]), from its z [b, h, d_head] at one position,
    through the norms after the layer with that position's scales ([b, 1]) frozen."""
    out = torch.einsum("bhd,hdm->bhm", z.float(), model.blocks[layer].W_O_heads.float())
    out = through_final_norm(model, layer, out, None if post_scale is None else post_scale[:, None], final_scale[:, None])
    return torch.einsum("bhm,mb->bh", out, directions.float())


def convention(model) -> str:
    """How through_final_norm(..) @ W_U approximates a direct logit effect, in words for a page."""
    c = model.cfg
    gain = f" ({c.norm_gain_offset:g} + w)" if c.norm_gain_offset else ""
    steps = ["W_O d_i"] + ([f"post-attention norm gain{gain}"] if c.post_norms else []) \
        + (["LayerNorm centering"] if c.norm == "layernorm" else []) + [f"final norm gain{gain}"]
    return "W_U · " + " · ".join(reversed(steps)) + "; norm scales (1/RMS) ignored, token ranking unaffected"


LOGIT_HIST_BINS = 40  # SAEDashboard's logits histogram


def logit_effects(model, sae, features, k: int = 20) -> tuple[str, list[dict]]:
    """Approximate direct logit effect W_U . norms . W_O d_i of each feature: (convention, [{top, bottom, hist}]);
    hist is the effect on every vocabulary token as {heights, values} (bar centres), 40 equal bins.

    Norm scales (division by the RMS / std) are per-token positive numbers, so they are dropped:
    token rankings are unaffected. Gains are kept, and LayerNorm's centering."""
    layer = layer_of(sae)
    d = sae.W_dec.detach().float()[torch.as_tensor(features, dtype=torch.long)]
    logits = through_final_norm(model, layer, d @ model.blocks[layer].W_O.detach().float()) @ model.W_U.detach().float()
    top, bottom = logits.topk(k, dim=-1), logits.topk(k, dim=-1, largest=False)
    return convention(model), [{"top": (top.indices[i], top.values[i]), "bottom": (bottom.indices[i], bottom.values[i]),
                                "hist": _histogram(logits[i])} for i in range(len(features))]


def _histogram(values: torch.Tensor) -> dict:
    lo, hi = float(values.min()), float(values.max())
    hi = hi if hi > lo else lo + 1  # a constant effect still gets bins of width 1/40
    heights = torch.histc(values, bins=LOGIT_HIST_BINS, min=lo, max=hi)
    width = (hi - lo) / LOGIT_HIST_BINS
    return {"heights": heights.tolist(), "values": [lo + (i + 0.5) * width for i in range(LOGIT_HIST_BINS)]}
