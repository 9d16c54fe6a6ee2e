"""Query/key SAEs trained for the attention pattern too (the seed's proposed future direction).

A TopK query SAE and a TopK key SAE of one head are trained together on whole windows with

    loss = |q_hat - q|^2 / Var q + |k_hat - k|^2 / Var k + pattern_coeff * KL(real pattern || pattern from q_hat, k_hat)

(per input; KL in nats per query position). TopK fixes L0 = k on both sides, so runs with pattern_coeff 0 (MSE only)
and > 0 compare at equal L0 by construction. The model's q, k and real scores for the training windows are computed
once and kept in memory (`QKData`); BOS keeps its real q and k, as in the splice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ...data.harvest import flatten_hook
from ...data.windows import token_batches
from ...models.hooks import act_name, parse
from ...sae import SAE, SAEConfig
from .heads import QKHead, to_scoring_space
from .pattern import pattern_kl


@dataclass
class QKData:
    q: torch.Tensor  # [n, ctx, d_head] fp32, the SAEs' space
    k: torch.Tensor
    scores: torch.Tensor  # [n, ctx, ctx] the head's real scores (-inf above the diagonal)


@torch.no_grad()
def qk_data(model, qk: QKHead, windows: np.ndarray, batch_size: int = 16) -> QKData:
    q_spec, k_spec = parse(qk.q_spec), parse(qk.k_spec)
    names = [q_spec.name, k_spec.name, act_name("attn_scores", qk.layer)]
    qs, ks, ss = [], [], []
    for tokens in token_batches(windows, batch_size):
        cache = model.run_with_cache(tokens.to(model.device), names)[1]
        qs.append(flatten_hook(cache[q_spec.name], q_spec.head).float().cpu())
        ks.append(flatten_hook(cache[k_spec.name], k_spec.head).float().cpu())
        ss.append(cache[names[2]][:, qk.head].float().cpu())
    return QKData(torch.cat(qs), torch.cat(ks), torch.cat(ss))


def _topk_sae(model, spec: str, k: int, d_sae: int, x: torch.Tensor, ctx: int, seed: int) -> SAE:
    s = parse(spec)
    sae = SAE(SAEConfig(d_in=x.shape[-1], d_sae=d_sae, architecture="topk", k=k, model_name=model.cfg.name,
                        hook_name=s.name, hook_head_index=s.head, processing=model.processing.to_dict(),
                        context_size=ctx, first_pos=1))
    sae.reset_parameters(torch.Generator().manual_seed(seed))
    with torch.no_grad():
        sae.b_dec.copy_(x[:, 1:].flatten(0, 1).mean(0))
    return sae


def recon_scores(model, qk: QKHead, q_hat: torch.Tensor, k_hat: torch.Tensor) -> torch.Tensor:
    """[b, ctx, ctx] scores from q_hat, k_hat [b, ctx, d_head] (the SAEs' space), causal-masked."""
    pos = torch.arange(q_hat.shape[1])
    q = to_scoring_space(model, qk, q_hat, pos, "q")
    k = to_scoring_space(model, qk, k_hat, pos, "k")
    s = q @ k.transpose(1, 2) * model.cfg.attn_scale
    mask = torch.ones(s.shape[-1], s.shape[-1], dtype=torch.bool).tril()
    return s.masked_fill(~mask, float("-inf"))


def train_pair(model, qk: QKHead, data: QKData, k: int = 8, expansion: int = 16, pattern_coeff: float = 0.0,
               steps: int = 600, batch_windows: int = 8, lr: float = 1e-3, seed: int = 0,
               progress: bool = True) -> tuple[SAE, SAE, list[dict]]:
    """(query SAE, key SAE, history) trained together on `data` with the loss above."""
    d = data.q.shape[-1]
    ctx = data.q.shape[1]
    q_sae = _topk_sae(model, qk.q_spec, k, expansion * d, data.q, ctx, seed)
    k_sae = _topk_sae(model, qk.k_spec, k, expansion * d, data.k, ctx, seed + 1)
    var_q, var_k = data.q[:, 1:].flatten(0, 1).var(0).sum(), data.k[:, 1:].flatten(0, 1).var(0).sum()
    params = [*q_sae.parameters(), *k_sae.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    history = []
    for step in tqdm(range(steps), desc=f"train q/k pair (pattern x{pattern_coeff:g})", disable=not progress, leave=False):
        idx = torch.randint(0, len(data.q), (batch_windows,), generator=g)
        q, kk, real = data.q[idx], data.k[idx], data.scores[idx]
        q_hat = torch.cat([q[:, :1], q_sae(q[:, 1:]).reconstruction], 1)
        k_hat = torch.cat([kk[:, :1], k_sae(kk[:, 1:]).reconstruction], 1)
        mse = (q_hat - q).pow(2).sum(-1)[:, 1:].mean() / var_q + (k_hat - kk).pow(2).sum(-1)[:, 1:].mean() / var_k
        kl = pattern_kl(real, recon_scores(model, qk, q_hat, k_hat)).mean()
        loss = mse + pattern_coeff * kl
        opt.zero_grad(set_to_none=True)
        loss.backward(inputs=params)  # the scoring space's model weights (norms, rotary) stay as they are
        opt.step()
        with torch.no_grad():
            for sae in (q_sae, k_sae):
                sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True))
        if step % 50 == 0 or step == steps - 1:
            history.append({"step": step, "mse": mse.item(), "kl": kl.item()})
    return q_sae.eval(), k_sae.eval(), history
