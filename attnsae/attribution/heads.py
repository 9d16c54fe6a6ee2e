"""Weight-based head attribution (paper eq. 2): how much of feature i's decoder row comes from head k.

    h_{i,k} = |d_{i,k}| / sum_j |d_{i,j}|,   d_{i,k} = head k's d_head slice of decoder row i.
"""

from __future__ import annotations

import torch


def require_hook_z(sae) -> None:
    """Head attribution and DFA split an SAE's input into heads: it must be a whole layer's hook_z."""
    spec = sae.cfg.hook_spec
    if spec is None or not spec.is_layer_z:
        hint = ("; for query / key SAEs of one head, `attnsae qk-study` has their dashboards and analyses"
                if spec is not None and spec.kind in ("q", "k", "rot_q", "rot_k") else "")
        raise ValueError(f"this needs an SAE trained on a whole layer's attn.hook_z, not {str(spec) if spec else None!r}"
                         + hint)


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


RANKINGS = ("attribution", "dfa")


def head_ranking(attribution: torch.Tensor, head_fve: torch.Tensor, rank_by: str = "attribution") -> torch.Tensor:
    """[d_sae, n_heads] scores to rank each head's features by: weight-based attribution (eq. 2), or the DFA
    variance share of the head on the tokens where the feature fires (the every-head study recommends it;
    features that never fired rank last)."""
    if rank_by not in RANKINGS:
        raise ValueError(f"rank_by must be one of {RANKINGS}, not {rank_by!r}")
    return attribution if rank_by == "attribution" else head_fve.float().nan_to_num(float("-inf"))


def ranking_agreement(attribution: torch.Tensor, head_fve: torch.Tensor, live: torch.Tensor, k: int = 10) -> torch.Tensor:
    """[n_heads]: the fraction of each head's top-k live features by attribution that are also in its top k by DFA
    variance share (1: the two rankings choose the same features)."""
    a = top_features_by_head(head_ranking(attribution, head_fve, "attribution"), live, k)
    d = top_features_by_head(head_ranking(attribution, head_fve, "dfa"), live, k)
    return torch.tensor([len({f for f, _ in x} & {f for f, _ in y}) / max(1, len(x)) for x, y in zip(a, d)])
