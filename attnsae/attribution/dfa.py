"""Direct feature attribution (paper eq. 3): a feature's pre-activation split into exact linear parts.

By head:             f_pre_i(z) = sum_k w_{i,k} . z_k  +  bias_i,   bias_i = b_enc_i - w_i . b_dec
By source position:  z_k[dest] = sum_src A_k[dest, src] v_{kv(k)}[src]   (pattern frozen), so
                     w_{i,k} . z_k[dest] = sum_src A_k[dest, src] (w_{i,k} . v_{kv(k)}[src]).

w_i is column i of W_enc split into n_heads slices of d_head; with grouped-query attention the
value vector is the one of the query head's kv group. The parts sum to the pre-activation up to
floating-point rounding (tests hold this on every supported family).
"""

from __future__ import annotations

import torch

from ..models.hooks import act_name
from .heads import layer_of


def encoder_by_head(sae, n_heads: int, features=None) -> torch.Tensor:
    """W_enc as [n_heads, d_head, F] (F = the chosen features, default all)."""
    w = sae.W_enc.detach().float()
    if features is not None:
        w = w[:, torch.as_tensor(features, dtype=torch.long)]
    return w.reshape(n_heads, sae.cfg.d_in // n_heads, w.shape[-1])


def dfa_bias(sae, features=None) -> torch.Tensor:
    """The input-independent part of each pre-activation: b_enc - W_enc^T b_dec (if b_dec is subtracted)."""
    b = sae.b_enc.detach().float()
    if sae.cfg.apply_b_dec_to_input:
        b = b - sae.b_dec.detach().float() @ sae.W_enc.detach().float()
    return b if features is None else b[torch.as_tensor(features, dtype=torch.long)]


def dfa_by_head(sae, z: torch.Tensor, features=None) -> tuple[torch.Tensor, torch.Tensor]:
    """z [..., n_heads, d_head] -> (parts [..., F, n_heads], bias [F]); parts.sum(-1) + bias = pre-activation."""
    w = encoder_by_head(sae, z.shape[-2], features)
    return torch.einsum("...hd,hdf->...fh", z.float(), w), dfa_bias(sae, features)


def dfa_by_source(sae, pattern: torch.Tensor, v: torch.Tensor, features=None) -> torch.Tensor:
    """Each source position's contribution through each head, with the attention pattern frozen.

    pattern [..., n_heads, dest, src], v [..., src, n_kv_heads, d_head] -> [..., dest, F, n_heads, src];
    summed over src it equals dfa_by_head's parts at each dest."""
    n_heads, n_kv = pattern.shape[-3], v.shape[-2]
    w = encoder_by_head(sae, n_heads, features)
    v_per_head = v.float().repeat_interleave(n_heads // n_kv, dim=-2)  # query head k reads kv head k // group
    vw = torch.einsum("...shd,hdf->...fhs", v_per_head, w)  # w_{i,k} . v_k[src]
    return pattern.float().transpose(-3, -2).unsqueeze(-3) * vw.unsqueeze(-4)


def attention_parts(model, tokens: torch.Tensor, layer: int) -> dict[str, torch.Tensor]:
    """z, pattern and v of one layer from a forward that stops right after hook_z."""
    return attention_parts_many(model, tokens, [layer])[layer]


def attention_parts_many(model, tokens: torch.Tensor, layers) -> dict[int, dict[str, torch.Tensor]]:
    """{layer: z, pattern and v} of several layers from one forward that stops after the last one's hook_z."""
    names = {(layer, k): act_name(k, layer) for layer in layers for k in ("z", "pattern", "v")}
    _, cache = model.run_with_cache(tokens, list(names.values()), stop_early=True)
    parts = {layer: {} for layer in layers}
    for (layer, k), name in names.items():
        parts[layer][k] = cache[name]
    return parts


def feature_dfa(model, sae, tokens: torch.Tensor, features) -> dict[str, torch.Tensor]:
    """Everything DFA says about `features` on `tokens` [b, p]: pre-activations [b, p, F], by head
    [b, p, F, n_heads], bias [F] and by source [b, p, F, n_heads, src]."""
    parts = attention_parts(model, tokens, layer_of(sae))
    by_head, bias = dfa_by_head(sae, parts["z"], features)
    by_source = dfa_by_source(sae, parts["pattern"], parts["v"], features)
    return {"pre": by_head.sum(-1) + bias, "by_head": by_head, "bias": bias, "by_source": by_source}
