"""Head behaviour scores for every head, from attention patterns on repeated random tokens.

Sequences are [BOS, r_1..r_n, r_1..r_n] with r uniform over ordinary token ids. For a
destination t in the second half (token r_i, first seen at position i = t - n):
    induction score        mean attention from t to t - n + 1 (the token after the earlier r_i)
    duplicate-token score  mean attention from t to t - n     (the earlier r_i itself)
    previous-token score   mean attention from t to t - 1, over all t >= 2
These are the usual definitions (TransformerLens' induction/duplicate/previous-token detectors,
Olsson et al. 2022); scores are in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ..models.hooks import act_name, head_name
from ..plotting import pyplot, save
from ..results import Result

DEFINITIONS = {"induction": "attention from t to t-n+1 on the repeat", "duplicate": "attention from t to t-n on the repeat",
               "previous": "attention from t to t-1"}


def random_token_range(model) -> tuple[int, int]:
    """Ordinary token ids to sample from: skip the low ids where tokenizers keep special tokens."""
    v = model.cfg.d_vocab
    return (min(1000, v // 10) if v > 1000 else 3), v


def repeated_random_tokens(model, n: int = 50, batch: int = 32, seed: int = 0) -> torch.Tensor:
    lo, hi = random_token_range(model)
    g = torch.Generator().manual_seed(seed)
    r = torch.randint(lo, hi, (batch, n), generator=g)
    bos = torch.full((batch, 1), model.cfg.bos_token_id or 0)
    return torch.cat([bos, r, r], 1)


def diag_mean(pattern: torch.Tensor, offset: int, dests: range) -> torch.Tensor:
    """pattern [b, h, dest, src] -> [h]: mean of A[t, t - offset] over dests t."""
    t = torch.tensor(list(dests))
    return pattern[:, :, t, t - offset].float().mean((0, 2))


@torch.no_grad()
def head_scores(model, n: int = 50, batch: int = 32, seed: int = 0, hooks=()) -> dict[str, np.ndarray]:
    """{'induction', 'duplicate', 'previous'}: [n_layers, n_heads] arrays (optionally under interventions)."""
    tokens = repeated_random_tokens(model, n, batch, seed)
    names = [act_name("pattern", l) for l in range(model.cfg.n_layers)]
    _, cache = model.run_with_hooks(tokens, list(hooks), cache=names)
    per_layer = [behaviour_scores(cache[name], n) for name in names]
    return {k: torch.stack([s[k] for s in per_layer]).numpy() for k in DEFINITIONS}


def behaviour_scores(pattern: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
    """{'induction', 'duplicate', 'previous'}: [h] scores of patterns [b, h, dest, src] on [BOS, r_1..r_n, r_1..r_n]."""
    second = range(n + 1, 2 * n + 1)
    return {"induction": diag_mean(pattern, n - 1, second), "duplicate": diag_mean(pattern, n, second),
            "previous": diag_mean(pattern, 1, range(2, 2 * n + 1))}


def top_heads(scores: np.ndarray, k: int = 5) -> list[tuple[int, int, float]]:
    """[(layer, head, score)] of the k highest."""
    flat = np.argsort(scores, axis=None)[::-1][:k]
    return [(int(i // scores.shape[1]), int(i % scores.shape[1]), float(scores.flat[i])) for i in flat]


def top_layers(scores: np.ndarray, k: int) -> list[int]:
    """The layers holding the k highest-scoring heads, ascending."""
    return sorted({l for l, _, _ in top_heads(scores, k)})


@dataclass
class HeadScores(Result):
    """head_scores.json: every head's three scores on `n` repeated random tokens, and the top 5 of each."""

    name: ClassVar[str] = "head_scores"
    model: str
    n: int
    scores: dict[str, np.ndarray]

    def to_json(self) -> dict:
        return {"model": self.model, "sequence": f"[BOS] + {self.n} random tokens, repeated once", "definitions": DEFINITIONS,
                **{k: v.round(4).tolist() for k, v in self.scores.items()},
                "top": {k: top_heads(v) for k, v in self.scores.items()}}

    def summary(self) -> str:
        return "\n".join(f"{k:9s} " + ", ".join(f"{head_name(l, h)} {s:.2f}" for l, h, s in top_heads(v, 5))
                         for k, v in self.scores.items())

    def plot(self, out: Path) -> list[Path]:
        plt = pyplot()
        fig, axes = plt.subplots(1, 3, figsize=(15, 0.22 * self.scores["induction"].shape[0] + 2.5))
        for ax, (k, v) in zip(axes, self.scores.items(), strict=True):
            im = ax.imshow(v, vmin=0, vmax=1, cmap="Blues", aspect="auto")
            ax.set_title(f"{k} score")
            ax.set_xlabel("head")
            ax.set_ylabel("layer")
            for layer, head, s in top_heads(v, 3):
                ax.text(head, layer, f"{s:.2f}", ha="center", va="center", fontsize=7, color="#c00")
        fig.colorbar(im, ax=axes, shrink=0.8)
        fig.suptitle(f"{self.model}: head behaviour scores (red: top 3)")
        path = out / "head_scores.png"
        save(fig, path, tight=False)
        return [path]


def run_head_scores(model, n: int = 50, batch: int = 32, seed: int = 0) -> HeadScores:
    """The head-scores experiment: every head's scores on `batch` sequences of `n` random tokens repeated."""
    return HeadScores(model.cfg.name, n, head_scores(model, n, batch, seed))
