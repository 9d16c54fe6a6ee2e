"""How well a head's attention survives its query / key SAEs: the pattern from reconstructed q, from reconstructed
k and from both against the real one (KL per query position), the head's induction and previous-token scores
recomputed from them, and, on one prompt, which features set the score between a chosen query and key position.

Reconstructions are spliced at the SAEs' own hooks and heads, positions >= the SAE's first_pos (the BOS key and
query stay real: they are the same in every window, and BOS is where heads park attention). A key SAE's splice moves
the pattern of every query head sharing its key head; the KL is reported for each of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from ...data.windows import token_batches
from ...evals.splice import sae_hook
from ...models.hooks import act_name
from ...plotting import pyplot, save
from ...results import Result
from ..head_scores import behaviour_scores, repeated_random_tokens
from .heads import QKHead, head_score

VARIANTS = ("q", "k", "both")  # which side is reconstructed


def splices(q_sae=None, k_sae=None, which: str = "both") -> list:
    """The hooks that splice the reconstruction of the query side, the key side or both."""
    out = []
    if which in ("q", "both") and q_sae is not None:
        out.append((q_sae.cfg.hook_name, sae_hook(q_sae)))
    if which in ("k", "both") and k_sae is not None:
        out.append((k_sae.cfg.hook_name, sae_hook(k_sae)))
    return out


@torch.no_grad()
def scores(model, tokens: torch.Tensor, layer: int, hooks=(), resid: torch.Tensor | None = None) -> torch.Tensor:
    """Every head's attention scores at `layer` ([b, heads, dest, src], fp32, -inf above the diagonal) under `hooks`;
    the forward runs from `resid` (blocks.{layer}.hook_resid_pre, computed when not given) and stops at the scores."""
    name = act_name("attn_scores", layer)
    if resid is None:
        resid = model.run_with_cache(tokens, [act_name("resid_pre", layer)])[1][act_name("resid_pre", layer)]
    return model.forward_from(layer, resid, list(hooks), cache=[name], stop_early=True)[1][name].float()


def pattern_kl(real_scores: torch.Tensor, other_scores: torch.Tensor, first_pos: int = 1) -> torch.Tensor:
    """KL(real pattern || other pattern) in nats per query position >= first_pos: [..., dest]."""
    lp, lq = torch.log_softmax(real_scores, -1), torch.log_softmax(other_scores, -1)
    p = lp.exp()
    kl = torch.where(p > 0, p * (lp - lq), torch.zeros_like(p)).sum(-1)
    return kl[..., first_pos:]


@dataclass
class PatternFidelity(Result):
    """pattern_fidelity.json: the head's pattern KL under each reconstruction, and its scores on repeated random tokens
    from real and reconstructed q and k."""

    name: ClassVar[str] = "pattern_fidelity"
    head: str
    served: list[int]  # query heads sharing the key head
    n_tokens: int
    kl: dict  # variant -> mean KL(real || reconstructed) per query position, nats, for the head
    kl_served: dict  # variant -> {query head: KL}: a key splice moves every served head
    head_scores: dict = field(default_factory=dict)  # variant ("real", "q", "k", "both") -> {induction, previous, duplicate}

    def summary(self) -> str:
        kl = ", ".join(f"{v} {self.kl[v]:.4f}" for v in self.kl)
        sc = "; ".join(f"{v}: ind {s['induction']:.3f} prev {s['previous']:.3f}" for v, s in self.head_scores.items())
        return f"{self.head}: pattern KL (nats/query) {kl}\n  scores {sc}"


@torch.no_grad()
def pattern_fidelity(model, qk: QKHead, q_sae=None, k_sae=None, windows: np.ndarray | None = None, batch_size: int = 16,
                     n_repeat: int = 50, repeat_batch: int = 32, seed: int = 0) -> PatternFidelity:
    """KL(real || reconstructed pattern) of the head over `windows`, for reconstructed q, k and both (those the given
    SAEs allow), and the induction / previous-token / duplicate scores of the head on repeated random tokens."""
    has = {"q": q_sae is not None, "k": k_sae is not None}
    variants = [v for v in VARIANTS if (has["q"] and has["k"] if v == "both" else has[v])]
    first = max(s.cfg.first_pos for s in (q_sae, k_sae) if s is not None)
    sums = {v: torch.zeros(len(qk.served), dtype=torch.float64) for v in variants}
    n = 0
    for tokens in token_batches(windows, batch_size):
        tokens = tokens.to(model.device)
        resid = model.run_with_cache(tokens, [act_name("resid_pre", qk.layer)])[1][act_name("resid_pre", qk.layer)]
        real = scores(model, tokens, qk.layer, resid=resid)[:, list(qk.served)]
        for v in variants:
            other = scores(model, tokens, qk.layer, splices(q_sae, k_sae, v), resid)[:, list(qk.served)]
            sums[v] += pattern_kl(real, other, first).double().sum((0, 2)).cpu()
        n += tokens.shape[0] * (tokens.shape[1] - first)
    i = qk.served.index(qk.head)
    kl = {v: float(sums[v][i] / n) for v in variants}
    kl_served = {v: {h: float(s / n) for h, s in zip(qk.served, sums[v])} for v in variants if v != "q"}
    tokens = repeated_random_tokens(model, n_repeat, repeat_batch, seed).to(model.device)
    resid = model.run_with_cache(tokens, [act_name("resid_pre", qk.layer)])[1][act_name("resid_pre", qk.layer)]
    hs = {}
    for v in ("real", *variants):
        s = scores(model, tokens, qk.layer, splices(q_sae, k_sae, v) if v != "real" else (), resid)
        hs[v] = {k: float(x) for k, x in behaviour_scores(torch.softmax(s[:, qk.head:qk.head + 1], -1), n_repeat).items()}
    return PatternFidelity(head=qk.name, served=list(qk.served), n_tokens=n, kl=kl, kl_served=kl_served, head_scores=hs)


@dataclass
class PromptPattern(Result):
    """prompt_pattern.json: the head's real and reconstructed pattern on one prompt, and the features whose removal
    moves the score between one query and one key position most."""

    name: ClassVar[str] = "prompt_pattern"
    head: str
    tokens: list[str]
    real: list  # [dest][src] attention
    reconstructed: list
    kl: float  # mean over query positions >= 1
    query_pos: int
    key_pos: int
    score: float  # the reconstructed score at (query_pos, key_pos)
    query_features: list  # [{feature, act, delta}]: delta = score without the feature - score
    key_features: list

    def summary(self) -> str:
        top = sorted(self.query_features + self.key_features, key=lambda r: abs(r["delta"]), reverse=True)[:5]
        moves = ", ".join(f"{r['side']}{r['feature']} {r['delta']:+.2f}" for r in top)
        return (f"{self.head} on {len(self.tokens)} tokens: pattern KL {self.kl:.4f}; score {self.tokens[self.query_pos]!r}"
                f" -> {self.tokens[self.key_pos]!r} = {self.score:.2f}; removing moves it most: {moves}")

    def plot(self, out) -> list:
        plt = pyplot()
        fig, axes = plt.subplots(1, 3, figsize=(15, 5.6), gridspec_kw={"width_ratios": [1, 1, 1.1]})
        labels = [t.replace("\n", "\\n") for t in self.tokens]
        for ax, a, title in ((axes[0], self.real, "real"), (axes[1], self.reconstructed, "from reconstructed q and k")):
            ax.imshow(np.asarray(a, dtype=float), cmap="Blues", vmin=0, vmax=1)
            ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
            ax.set_yticks(range(len(labels)), labels, fontsize=7)
            ax.set_title(f"{self.head} pattern, {title}\n(rows: query, columns: key)", fontsize=9)
        ax = axes[2]
        rows = sorted(self.query_features + self.key_features, key=lambda r: r["delta"])
        rows = rows[:6] + rows[-6:] if len(rows) > 12 else rows
        ax.barh(range(len(rows)), [r["delta"] for r in rows], color=["#c0392b" if r["side"] == "q" else "#2e6fb0" for r in rows])
        ax.set_yticks(range(len(rows)), [f"{r['side']}{r['feature']}" for r in rows], fontsize=7)
        ax.axvline(0, color="k", lw=0.5)
        ax.set_title(f"score change on removing one feature\n{labels[self.query_pos]!r} -> {labels[self.key_pos]!r} "
                     "(red: query, blue: key)", fontsize=9)
        return [save(fig, out / "prompt_pattern.png")]


@torch.no_grad()
def prompt_pattern(model, qk: QKHead, q_sae, k_sae, tokens: torch.Tensor, token_strs: list[str],
                   query_pos: int | None = None, key_pos: int | None = None) -> PromptPattern:
    """The real and reconstructed pattern of the head on one prompt (tokens [p]), and, at (query_pos, key_pos)
    (default: the last position and the non-BOS position it attends to most), the change in the reconstructed score
    when each active query feature (at query_pos) or key feature (at key_pos) is removed from the decoded vector."""
    tokens = tokens.reshape(1, -1).to(model.device)
    p = tokens.shape[1]
    query_pos = p - 1 if query_pos is None else query_pos
    if not 0 < query_pos < p:
        raise ValueError(f"query position {query_pos} is outside the prompt's 1..{p - 1}")
    real_s = scores(model, tokens, qk.layer)[0, qk.head]
    rec_s = scores(model, tokens, qk.layer, splices(q_sae, k_sae))[0, qk.head]
    if key_pos is None:
        key_pos = 1 + int(real_s[query_pos, 1:query_pos + 1].argmax()) if query_pos > 0 else 0
    if not 0 <= key_pos <= query_pos:
        raise ValueError(f"key position {key_pos} must lie in 0..{query_pos} (keys after the query are masked)")
    _, cache = model.run_with_cache(tokens, [q_sae.cfg.hook_name, k_sae.cfg.hook_name])
    x_q = cache[q_sae.cfg.hook_name][0, query_pos, qk.head].float()
    x_k = cache[k_sae.cfg.hook_name][0, key_pos, qk.kv_head].float()
    fq, fk = q_sae.encode(x_q), k_sae.encode(x_k)
    # as the splice: positions before an SAE's first_pos (BOS) keep their real vector and have no features
    if query_pos < q_sae.cfg.first_pos:
        fq = torch.zeros_like(fq)
    q_hat = q_sae.decode(fq) if query_pos >= q_sae.cfg.first_pos else x_q
    if key_pos < k_sae.cfg.first_pos:
        fk = torch.zeros_like(fk)
    k_hat = k_sae.decode(fk) if key_pos >= k_sae.cfg.first_pos else x_k
    base = float(head_score(model, qk, q_hat, k_hat, query_pos, key_pos))

    def ablations(f, W, side):
        idx = f.nonzero().flatten()
        if side == "q":
            new = head_score(model, qk, q_hat - f[idx, None] * W[idx], k_hat, query_pos, key_pos)
        else:
            new = head_score(model, qk, q_hat, k_hat - f[idx, None] * W[idx], query_pos, key_pos)
        return [{"side": side, "feature": int(i), "act": float(f[i]), "delta": float(d - base)} for i, d in zip(idx, new)]

    return PromptPattern(
        head=qk.name, tokens=token_strs, real=torch.softmax(real_s, -1).tolist(), reconstructed=torch.softmax(rec_s, -1).tolist(),
        kl=float(pattern_kl(real_s, rec_s).mean()), query_pos=query_pos, key_pos=key_pos, score=base,
        query_features=ablations(fq, q_sae.W_dec.float(), "q"), key_features=ablations(fk, k_sae.W_dec.float(), "k"))
