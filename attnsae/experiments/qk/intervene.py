"""Causal test of an "I follow [X]" key feature (the seed's intervention on an induction head).

Sequences are [BOS, r_1..r_n, r_1..r_n] of random tokens with r_pos = X in both copies. On the repeat, the query at
the second X (position n + pos) should attend to the token after the first X (position pos + 1), whose key carries
"I follow X", and predict it. The feature's contribution f_j d_j is scaled by `scale` (0 removes it; the rest of
the key, the SAE's error included, stays) in the key vectors of the first copy. Induction on X should break (the
loss of predicting r_{pos+1} at n + pos rises, the head's attention to pos + 1 falls) while induction on the other
tokens, the controls, stays. The key head is shared: every query head reading it sees the edit.

The feature is the one whose activation after X most exceeds its activation after other tokens at the same place
(`follow_feature`), among the key features whose top activations mostly follow X when there are any, unless given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ...models.hooks import act_name
from ...plotting import pyplot, save
from ...results import Result
from ..head_scores import random_token_range, repeated_random_tokens
from .heads import QKHead


def planted_sequences(model, x_token: int, n: int = 50, pos: int = 30, batch: int = 32, seed: int = 0) -> torch.Tensor:
    """[batch, 2n + 1]: BOS, n random tokens, the same n again, with token `x_token` at position pos (1..n) in both."""
    if not 1 <= pos < n:
        raise ValueError(f"the planted position must lie in 1..{n - 1}, got {pos}")
    tokens = repeated_random_tokens(model, n, batch, seed)
    r = tokens[:, 1:n + 1]
    r[r == x_token] = random_token_range(model)[0]  # X appears only where planted
    r[:, pos - 1] = x_token
    tokens[:, n + 1:] = r
    return tokens


@torch.no_grad()
def follow_feature(model, qk: QKHead, k_sae, x_token: int, n: int = 50, pos: int = 30, batch: int = 32,
                   seed: int = 0, candidates: list[int] | None = None) -> tuple[int, float, float]:
    """(feature, mean activation after X, mean activation after other tokens) of the key feature (among `candidates`,
    e.g. the "I follow [X]" features of its profile, when given) most specific to following X: activation at position
    pos + 1 with X at pos, minus the same with the random tokens left there."""
    spec = k_sae.cfg.hook_name

    def acts(tokens):
        k = model.run_with_cache(tokens.to(model.device), [spec])[1][spec][:, pos + 1, qk.kv_head]
        return k_sae.encode(k.float()).mean(0)

    with_x = acts(planted_sequences(model, x_token, n, pos, batch, seed))
    lo, hi = random_token_range(model)
    control = planted_sequences(model, x_token, n, pos, batch, seed + 1)
    control[:, pos] = torch.randint(lo, hi, (batch,), generator=torch.Generator().manual_seed(seed + 2))
    without = acts(control)
    gain = with_x - without
    if candidates:
        keep = torch.full_like(gain, float("-inf"))
        keep[candidates] = gain[candidates]
        gain = keep
    j = int(gain.argmax())
    return j, float(with_x[j]), float(without[j])


@dataclass
class Intervention(Result):
    """intervention.json: loss and attention at the planted X and at every other repeated token, with and without the
    key feature's contribution."""

    name: ClassVar[str] = "intervention"
    head: str
    served: list[int]
    feature: int
    token: str
    scale: float
    act_after_x: float
    act_after_other: float
    loss_x: dict  # "clean" / "edited": CE of predicting the token after X on the repeat
    loss_other: dict  # the same, averaged over the other repeated positions
    attn_x: dict  # "clean" / "edited" -> {query head: attention from the second X to the token after the first}
    attn_other: dict  # the same from the other repeated tokens to their induction targets
    per_position: dict  # "clean" / "edited": CE at each position of the repeat (for the plot)
    pos: int
    n: int

    def summary(self) -> str:
        h = int(self.head.split(".")[1])
        return (f"{self.head}: scaling key feature {self.feature} ('I follow {self.token!r}') by {self.scale:g}: "
                f"loss at the repeated X {self.loss_x['clean']:.2f} -> {self.loss_x['edited']:.2f} nats, elsewhere "
                f"{self.loss_other['clean']:.2f} -> {self.loss_other['edited']:.2f}; attention to X's follower "
                f"{self.attn_x['clean'][str(h)]:.3f} -> {self.attn_x['edited'][str(h)]:.3f}, elsewhere "
                f"{self.attn_other['clean'][str(h)]:.3f} -> {self.attn_other['edited'][str(h)]:.3f}")

    def plot(self, out) -> list:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(8, 3.2))
        xs = range(self.n, 2 * self.n)  # ce[t] is the loss of predicting token t + 1
        for key, style in (("clean", "-"), ("edited", "--")):
            ax.plot(list(xs), self.per_position[key], style, lw=1, label=key)
        ax.axvline(self.n + self.pos, color="#c0392b", lw=0.8)
        ax.set_xlabel("position on the repeat, predicting the next token (red: the second X)")
        ax.set_ylabel("loss (nats)")
        ax.legend(fontsize=8)
        ax.set_title(f"{self.head}: key feature {self.feature} ('I follow {self.token!r}') scaled by {self.scale:g} "
                     "in the first copy", fontsize=9)
        return [save(fig, out / "intervention.png")]


@torch.no_grad()
def intervene(model, qk: QKHead, k_sae, x_token: int, feature: int | None = None, scale: float = 0.0, n: int = 50,
              pos: int = 30, batch: int = 32, seed: int = 0, candidates: list[int] | None = None) -> Intervention:
    """Scale key feature `feature` (default: follow_feature for X among `candidates`) by `scale` in the first copy's
    keys and measure induction on X against induction on the other tokens."""
    act_x = act_other = float("nan")
    if feature is None:
        feature, act_x, act_other = follow_feature(model, qk, k_sae, x_token, n, pos, batch, seed, candidates)
    if not 0 <= feature < k_sae.d_sae:
        raise ValueError(f"feature {feature} out of range: the key SAE has {k_sae.d_sae}")
    tokens = planted_sequences(model, x_token, n, pos, batch, seed + 3).to(model.device)
    d = k_sae.W_dec.detach()[feature].float()

    def edit(k, name):  # k [b, p, kv heads, d_head]: the first copy's keys lose (1 - scale) of the feature
        k = k.clone()
        x = k[:, 1:n + 1, qk.kv_head].float()
        f = k_sae.encode(x)[..., feature]
        k[:, 1:n + 1, qk.kv_head] = (x + (scale - 1) * f[..., None] * d).to(k.dtype)
        return k

    pattern = act_name("pattern", qk.layer)
    target = n + pos  # the second X; it predicts r_{pos+1} and should attend to position pos + 1
    rep = torch.arange(n + 1, 2 * n + 1)  # query positions on the repeat; each attends to t - n + 1
    others = rep[(rep != target) & (rep < 2 * n)]
    out = {}
    for key, hooks in (("clean", []), ("edited", [(k_sae.cfg.hook_name, edit)])):
        logits, cache = model.run_with_hooks(tokens, hooks, cache=[pattern])
        ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="none")
        ce = ce.view(batch, -1).mean(0)  # [2n]: ce[t] predicts token t + 1
        a = cache[pattern][:, list(qk.served)].float()  # [b, served, dest, src]
        out[key] = {"ce": ce, "attn_x": a[:, :, target, pos + 1].mean(0),
                    "attn_other": a[:, :, others, others - n + 1].mean((0, 2))}
    per_head = lambda v: {str(h): float(x) for h, x in zip(qk.served, v)}  # noqa: E731
    return Intervention(
        head=qk.name, served=list(qk.served), feature=feature, token=model.tokenizer.decode([x_token]) if model.tokenizer
        else str(x_token), scale=scale, act_after_x=act_x, act_after_other=act_other,
        loss_x={k: float(v["ce"][target]) for k, v in out.items()},
        loss_other={k: float(v["ce"][others].mean()) for k, v in out.items()},
        attn_x={k: per_head(v["attn_x"]) for k, v in out.items()},
        attn_other={k: per_head(v["attn_other"]) for k, v in out.items()},
        per_position={k: v["ce"][n: 2 * n].tolist() for k, v in out.items()}, pos=pos, n=n)
