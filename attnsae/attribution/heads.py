"""Weight-based head attribution (paper eq. 2): how much of feature i's decoder row comes from head k.

    h_{i,k} = |d_{i,k}| / sum_j |d_{i,j}|,   d_{i,k} = head k's d_head slice of decoder row i.
"""

from __future__ import annotations

import torch


def require_hook_z(sae) -> None:
    """Head attribution and DFA split an SAE's input into heads: it must be a whole layer's hook_z."""
    spec = sae.cfg.hook_spec
    if spec is None or not spec.is_layer_z:
        raise ValueError(f"this needs an SAE trained on a whole layer's attn.hook_z, not {str(spec) if spec else None!r}")


def layer_of(sae) -> int:
    """The layer of an SAE on a whole layer's hook_z (refuses any other SAE)."""
    require_hook_z(sae)
    return sae.cfg.layer


def head_attribution(sae, n_heads: int) -> torch.Tensor:
    """[d_sae, n_heads] scores; each row sums to 1 (rows of all-zero decoders are all zero)."""
    if sae.cfg.d_in % n_heads:
        raise ValueError(f"SAE d_in={sae.cfg.d_in} is not a multiple of n_heads={n_heads}")
    norms = sae.W_dec.detach().float().view(sae.cfg.d_sae, n_heads, -1).norm(dim=-1)
    return norms / norms.sum(-1, keepdim=True).clamp_min(1e-12)


def top_features_by_head(scores: torch.Tensor, live: torch.Tensor, k: int = 10) -> list[list[tuple[int, float]]]:
    """For each head, the k live features with the highest attribution to it: [(feature, score)]."""
    masked = scores.masked_fill(~live[:, None], float("-inf"))
    k = min(k, int(live.sum()))
    vals, idx = masked.topk(k, dim=0) if k else (masked[:0], masked[:0].long())
    return [[(int(i), float(v)) for v, i in zip(vals[:, h], idx[:, h])] for h in range(scores.shape[1])]
