"""Query features against key features: the head's score between their decoder directions.

The seed study orders query and key features by the position they stand for and takes their dot products: a
previous-token head shows a line one below the diagonal. Here each pair's score is the head's own (scaled, through
Gemma's q/k norm and the rotary embedding for pre-rotary SAEs) between unit decoder directions. With a rotary
embedding a pre-rotary pair has no single score but one per relative offset (query position - key position): the
analogue of the seed's dot products with position embeddings. So:
- the heat map puts each pair at the offset between their modal positions (blank where the key comes later);
- `curves` is the score against offset for the pairs that reach the highest score at any offset;
- token partners: each "I am [X]" query feature's best key features by their score averaged over offsets 1..ctx-1,
  with the tokens they follow; for an induction head the best partner should follow X itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ...plotting import pyplot, save
from ...results import Result
from .heads import QKHead, to_scoring_space


def _rotary(model, qk: QKHead) -> bool:
    return not qk.rotated and model.cfg.rope_theta is not None


@torch.no_grad()
def offset_scores(model, qk: QKHead, q_dirs: torch.Tensor, k_dirs: torch.Tensor, offsets):
    """Yields (offset, [nq, nk]): the head's score of every query direction against every key direction with the query
    `offset` positions after the key (one offset, 0, where the SAEs are post-rotary or the model has no rope)."""
    k = to_scoring_space(model, qk, k_dirs, torch.zeros(len(k_dirs), dtype=torch.long), "k")
    for o in offsets:
        q = to_scoring_space(model, qk, q_dirs, torch.full((len(q_dirs),), int(o)), "q")
        yield o, q @ k.T * model.cfg.attn_scale


def _shown(profs: list[dict], n: int) -> np.ndarray:
    """Indices of the features the heat map shows: the positional ones when there are at least 10 (the seed's figure),
    else all; at most n, evenly spread over modal position."""
    idx = [i for i, p in enumerate(profs) if p["kind"] == "positional"]
    idx = np.asarray(idx if len(idx) >= 10 else range(len(profs)))
    return idx[np.unique(np.linspace(0, len(idx) - 1, min(n, len(idx))).round().astype(int))]


@dataclass
class QKMatrix(Result):
    """qk_matrix.json: query x key feature scores of one head, ordered by modal position, offset curves, token partners."""

    name: ClassVar[str] = "qk_matrix"
    head: str
    side: str
    q_features: list  # the query features shown (positional ones if >= 10, else all profiled), by modal position
    q_modes: list
    k_features: list
    k_modes: list
    matrix: list  # [q][k] score at the offset between their modes (None: key later than query)
    best_offset: dict  # offset -> share of positional query features whose best key partner sits at that offset
    curves: list  # [{q, k, scores}], scores[o] at offset o (rotary, pre-rotary SAEs only)
    partners: list  # [{q, am, am_share, partners: [{k, follow, follow_share, score}]}]
    token_match: float | None  # share of "I am [X]" query features whose best partner follows X

    def summary(self) -> str:
        top = sorted(self.best_offset.items(), key=lambda kv: -kv[1])[:3]
        offs = ", ".join(f"{o}: {s:.0%}" for o, s in top) or "no positional query features"
        tm = "n/a" if self.token_match is None else f"{self.token_match:.0%}"
        return (f"{self.head} ({self.side}): best key partner of each positional query feature at offset {offs}; "
                f"'I am X' query features whose best key partner follows X: {tm} of {len(self.partners)}")

    def plot(self, out) -> list:
        plt = pyplot()
        paths = []
        if self.matrix:
            fig, ax = plt.subplots(figsize=(6, 5))
            m = np.array([[np.nan if v is None else v for v in row] for row in self.matrix], dtype=float)
            lim = np.nanmax(np.abs(m)) if np.isfinite(m).any() else 1
            im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
            ax.set_xlabel("key features, by modal position")
            ax.set_ylabel("query features, by modal position")
            ax.set_title(f"{self.head}: head score between feature directions ({self.side})", fontsize=9)
            fig.colorbar(im, ax=ax, shrink=0.8)
            paths.append(save(fig, out / "qk_matrix.png"))
        if self.curves:
            fig, ax = plt.subplots(figsize=(7, 3.4))
            for c in self.curves:
                ax.plot(c["scores"], lw=1, label=f"q{c['q']} x k{c['k']}")
            ax.set_xlabel("offset (query position - key position)")
            ax.set_ylabel("score")
            ax.legend(fontsize=7)
            ax.set_title(f"{self.head}: score against relative offset (the rotary analogue of position embeddings)",
                         fontsize=9)
            paths.append(save(fig, out / "qk_offsets.png"))
        return paths


@torch.no_grad()
def qk_matrix(model, qk: QKHead, q_sae, k_sae, q_profiles: list[dict], k_profiles: list[dict], ctx: int,
              n_curves: int = 6, n_partners: int = 20, max_shown: int = 200) -> QKMatrix:
    """The QKMatrix of a head from its SAEs and their feature profiles (positional.profiles, as dicts); the heat map
    shows at most `max_shown` features a side, evenly spread over the modal positions."""
    qp = sorted(q_profiles, key=lambda p: p["mode"])
    kp = sorted(k_profiles, key=lambda p: p["mode"])
    if not qp or not kp:
        return QKMatrix(qk.name, qk.side, [], [], [], [], [], {}, [], [], None)
    Dq = q_sae.W_dec.detach().float()[[p["feature"] for p in qp]]
    Dk = k_sae.W_dec.detach().float()[[p["feature"] for p in kp]]
    Dq, Dk = Dq / Dq.norm(dim=1, keepdim=True), Dk / Dk.norm(dim=1, keepdim=True)
    rotary = _rotary(model, qk)
    offsets = range(ctx) if rotary else [0]
    qm, km = torch.tensor([p["mode"] for p in qp]), torch.tensor([p["mode"] for p in kp])
    off = qm[:, None] - km[None]
    at = torch.zeros(len(qp), len(kp))  # each pair at the offset between their modes
    total = torch.zeros(len(qp), len(kp))  # summed over offsets >= 1: a token pair's score whatever the distance
    peak = torch.full((len(qp), len(kp)), float("-inf"))
    for o, s in offset_scores(model, qk, Dq, Dk, offsets):
        at = torch.where(off == o, s, at) if rotary else s
        if o >= 1 or not rotary:
            total += s
        peak = torch.maximum(peak, s)
    mean = total / (max(ctx - 1, 1) if rotary else 1)
    masked = at.masked_fill(off < 0, float("-inf"))
    best = {}  # each positional query feature's best key partner (at their own offset)
    pos_q = [i for i, p in enumerate(qp) if p["kind"] == "positional"]
    for i in pos_q:
        if torch.isfinite(masked[i]).any():
            o = int(off[i, int(masked[i].argmax())])
            best[o] = best.get(o, 0) + 1 / len(pos_q)
    curves = []
    if rotary:
        for flat in peak.flatten().topk(min(n_curves, peak.numel())).indices.tolist():
            i, j = divmod(flat, len(kp))
            s = torch.stack([s[0, 0] for _, s in offset_scores(model, qk, Dq[i:i + 1], Dk[j:j + 1], offsets)])
            curves.append({"q": qp[i]["feature"], "k": kp[j]["feature"], "scores": s.round(decimals=4).tolist()})
    partners, matches = [], []
    am = sorted((i for i, p in enumerate(qp) if p["kind"] == "I am"), key=lambda i: -qp[i]["am_share"])[:n_partners]
    for i in am:
        rows = [{"k": kp[j]["feature"], "follow": kp[j]["follow"], "follow_share": kp[j]["follow_share"],
                 "kind": kp[j]["kind"], "score": round(float(mean[i, j]), 4)} for j in mean[i].argsort(descending=True)[:3]]
        partners.append({"q": qp[i]["feature"], "am": qp[i]["am"], "am_share": qp[i]["am_share"], "partners": rows})
        matches.append(rows[0]["follow"] == qp[i]["am"])
    qi, ki = _shown(qp, max_shown), _shown(kp, max_shown)
    shown = masked[qi][:, ki]
    matrix = [[None if not np.isfinite(v) else round(float(v), 4) for v in row] for row in shown.tolist()]
    return QKMatrix(head=qk.name, side=qk.side, q_features=[qp[i]["feature"] for i in qi], q_modes=qm[qi].tolist(),
                    k_features=[kp[j]["feature"] for j in ki], k_modes=km[ki].tolist(), matrix=matrix,
                    best_offset={int(o): round(s, 4) for o, s in sorted(best.items())}, curves=curves, partners=partners,
                    token_match=float(np.mean(matches)) if matches else None)
