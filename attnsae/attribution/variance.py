"""How much of a feature's activation variance each DFA part explains, aggregated over many tokens.

For parts x_c of the pre-activation y = sum_c x_c + bias, the share of part c is

    FVE_c = E[x_c y] / E[y^2]

over the tokens where the feature's activation exceeds a threshold: each part's share of the
variance of y about zero (not about its mean, which on a thresholded set would measure only
the small spread above the threshold). Shares of a full decomposition sum to exactly 1; a
share is negative when a part works against the rest. This is the paper's "head 1.6 explains
94%" (app. E.3) and "'board' source tokens explain > 99.9% above activation 5".
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.windows import token_batches
from .dfa import attention_parts, dfa_by_head, dfa_by_source
from .heads import layer_of


class Moments:
    """Running sums for E[x_c y] / E[y^2] with parts of any shape [..., C] (float64)."""

    def __init__(self, part_shape=()):
        self.n = 0
        self.syy = 0.0
        self.sxy = torch.zeros(part_shape, dtype=torch.float64)

    def add(self, y: torch.Tensor, x: torch.Tensor) -> None:
        """y [N], x [N, ...parts]."""
        y, x = y.double(), x.double()
        self.add_sums(y, torch.einsum("n,n...->...", y, x))

    def add_sums(self, y: torch.Tensor, sxy: torch.Tensor) -> None:
        """y [N] with sum_n x_c y over those N already taken."""
        y = y.double()
        self.n += len(y)
        self.syy += float((y * y).sum())
        self.sxy += sxy

    def shares(self) -> torch.Tensor:
        if self.n == 0 or self.syy == 0:
            return torch.full_like(self.sxy, float("nan"))
        return self.sxy / self.syy


def variance_explained(model, sae, feature: int, windows: np.ndarray, thresholds=(0.0,), source_tokens=(),
                       batch_size: int = 16, top_sources: int = 20, progress: bool = True) -> dict:
    """Per activation threshold: each head's FVE, each source token id's FVE (summed over heads), and the
    combined FVE of `source_tokens` (token ids), over tokens where this feature's activation > threshold."""
    layer, first = layer_of(sae), sae.cfg.first_pos
    n_heads, vocab = model.cfg.n_heads, model.cfg.d_vocab
    chosen = torch.zeros(vocab, dtype=torch.bool)
    chosen[list(source_tokens)] = True
    acc = {t: {"heads": Moments((n_heads,)), "tokens": Moments((vocab,)), "chosen": Moments(())} for t in thresholds}
    with torch.no_grad():
        for tokens in tqdm(token_batches(windows, batch_size), total=-(-len(windows) // batch_size),
                           desc=f"DFA aggregate, feature {feature}", disable=not progress):
            parts = attention_parts(model, tokens, layer)
            by_head, _ = dfa_by_head(sae, parts["z"], [feature])
            by_head = by_head[:, first:, 0]  # [b, p, n_heads]
            y = by_head.sum(-1)
            act = sae.encode(parts["z"].flatten(2).float())[:, first:, feature]
            src = dfa_by_source(sae, parts["pattern"], parts["v"], [feature])[:, first:, 0].sum(-2)  # [b, p, src]
            src_tok = tokens[:, None, :].expand_as(src)
            for t, a in acc.items():
                m = act > t
                if not m.any():
                    continue
                a["heads"].add(y[m], by_head[m])
                tok, c = src_tok[m].flatten(), src[m].double()
                a["tokens"].add_sums(y[m], torch.zeros(vocab, dtype=torch.float64).index_add_(0, tok, (c * y[m, None]).flatten()))
                a["chosen"].add(y[m], (src[m] * chosen[src_tok[m]]).sum(-1))
    out = {"feature": feature, "layer": layer, "n_heads": n_heads, "thresholds": []}
    for t, a in acc.items():
        tok_share = a["tokens"].shares()
        order = tok_share.nan_to_num(-1e9).argsort(descending=True)[:top_sources]
        out["thresholds"].append({
            "threshold": t, "n_tokens": a["heads"].n,
            "head_fve": a["heads"].shares().tolist(),
            "source_token_fve": [(int(i), float(tok_share[i])) for i in order if a["heads"].n > 1],
            "chosen_tokens_fve": float(a["chosen"].shares()) if len(source_tokens) else None,
        })
    return out

