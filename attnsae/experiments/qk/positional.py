"""What a query or key feature responds to: the positions and tokens of its strongest activations.

The seed study takes each feature's top 2,000 activating tokens (of 500k) and plots where in the context they sit: a
previous-token head's features there each hold one position. Here, from one pass over windows for every SAE:
- positions: the histogram of the top-N positions, the modal position and the share there; a feature is *positional*
  when at least half of its top-N lie within +-POS_WINDOW of the mode (a position-blind feature puts about
  (2 POS_WINDOW + 1) / ctx there);
- tokens: the token at the activating position ("I am [X]", what an induction head's query features are) and the one
  before it ("I follow [X]", its key features); a feature is a token feature of either kind when one token holds at
  least TOKEN_SHARE of its top-N.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ...data.harvest import flatten_hook
from ...data.windows import token_batches
from ...models.hooks import parse
from ...plotting import pyplot, save
from ...results import Result

POS_WINDOW = 2
POSITIONAL_SHARE = 0.5
TOKEN_SHARE = 0.5


@dataclass
class TopActivations:
    """Per feature of one SAE, its n strongest activations over the windows: value (0: an empty slot), window, position."""

    act: torch.Tensor  # [F, n] descending
    window: torch.Tensor  # [F, n] int64
    pos: torch.Tensor  # [F, n] int64
    count: torch.Tensor  # [F] activating tokens seen
    n_tokens: int
    ctx: int


def save_tops(path, tops: dict[str, TopActivations]) -> None:
    """{SAE hook spec: TopActivations} to one safetensors file."""
    tensors, meta = {}, {}
    for spec, t in tops.items():
        tensors.update({f"{spec}/{k}": getattr(t, k).contiguous() for k in ("act", "window", "pos", "count")})
        meta[spec] = [t.n_tokens, t.ctx]
    save_file(tensors, str(path), metadata={"sizes": json.dumps(meta)})


def load_tops(path) -> dict[str, TopActivations]:
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["sizes"])
    t = load_file(str(path))
    return {spec: TopActivations(*(t[f"{spec}/{k}"] for k in ("act", "window", "pos", "count")), n_tokens=n, ctx=ctx)
            for spec, (n, ctx) in meta.items()}


@torch.no_grad()
def top_activations(model, saes: list, windows: np.ndarray, n_top: int = 2000, batch_size: int = 32,
                    progress: bool = True) -> list[TopActivations]:
    """TopActivations of every SAE (any hooks of one model) from one forward per batch over `windows`."""
    specs = [parse(str(s.cfg.hook_spec)) for s in saes]
    names = sorted({s.name for s in specs})
    n, ctx = windows.shape
    tops = [(torch.zeros(s.d_sae, 0), torch.zeros(s.d_sae, 0, dtype=torch.long)) for s in saes]
    counts = [torch.zeros(s.d_sae, dtype=torch.long) for s in saes]
    seen, n_tokens = 0, [0] * len(saes)
    for tokens in tqdm(token_batches(windows, batch_size), total=-(-n // batch_size), desc="top activations",
                       disable=not progress, leave=False):
        b = tokens.shape[0]
        cache = model.run_with_cache(tokens.to(model.device), names)[1]
        for i, (sae, spec) in enumerate(zip(saes, specs)):
            first = sae.cfg.first_pos
            x = flatten_hook(cache[spec.name], spec.head)[:, first:].float()
            f = sae.encode(x.flatten(0, 1)).cpu()  # [b * (ctx - first), F]
            counts[i] += (f > 0).sum(0)
            n_tokens[i] += f.shape[0]
            flat = (torch.arange(seen, seen + b)[:, None] * ctx + torch.arange(first, ctx)[None]).flatten()
            tops[i] = _merge(tops[i], f, flat, n_top)
        seen += b
    return [TopActivations(act=v, window=ids // ctx, pos=ids % ctx, count=c, n_tokens=nt, ctx=ctx)
            for (v, ids), c, nt in zip(tops, counts, n_tokens)]


def _merge(top, f: torch.Tensor, ids: torch.Tensor, n_top: int):
    """top (values [F, <= n_top] descending, ids) merged with a batch f [N, F] of activations at ids [N]. Only the
    activations above a feature's current n_top-th value can enter, so after the first batches few are looked at."""
    vals, keep_ids = top
    thr = vals[:, -1] if vals.shape[1] >= n_top else torch.zeros(len(vals))
    r, c = (f > thr).nonzero(as_tuple=True)
    if len(c) == 0:
        return top
    order = torch.argsort(c, stable=True)
    r, c = r[order], c[order]
    counts = torch.bincount(c, minlength=len(vals))
    slot = torch.arange(len(c)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    new_v = torch.zeros(len(vals), int(counts.max()))
    new_id = torch.zeros(len(vals), int(counts.max()), dtype=torch.long)
    new_v[c, slot], new_id[c, slot] = f[r, c], ids[r]
    v, i = torch.cat([vals, new_v], 1), torch.cat([keep_ids, new_id], 1)
    best = v.topk(min(n_top, v.shape[1]), dim=1)
    return best.values, i.gather(1, best.indices)


@dataclass
class FeatureProfile:
    feature: int
    n: int  # activations in its top-N (fewer when it fired less often)
    density: float
    mode: int  # modal position
    mode_share: float
    near_share: float  # share within +-POS_WINDOW of the mode
    am: str  # the most common token at the activating position, and its share
    am_share: float
    follow: str  # the most common token just before it
    follow_share: float

    @property
    def positional(self) -> bool:
        return self.near_share >= POSITIONAL_SHARE

    @property
    def kind(self) -> str:
        """positional, 'I am [X]', 'I follow [X]', or other."""
        if self.positional:
            return "positional"
        if max(self.am_share, self.follow_share) >= TOKEN_SHARE:
            return "I am" if self.am_share >= self.follow_share else "I follow"
        return "other"


def profiles(top: TopActivations, windows: np.ndarray, decode, min_count: int = 20) -> list[FeatureProfile]:
    """A FeatureProfile for every feature with at least `min_count` activations (the rest are too rare to say)."""
    out = []
    on = top.act > 0
    for f in range(top.act.shape[0]):
        k = int(on[f].sum())
        if k < min_count:
            continue
        pos, win = top.pos[f, :k].numpy(), top.window[f, :k].numpy()
        hist = np.bincount(pos, minlength=top.ctx)
        mode = int(hist.argmax())
        near = hist[max(0, mode - POS_WINDOW): mode + POS_WINDOW + 1].sum() / k
        (am, am_n), = Counter(windows[win, pos].tolist()).most_common(1)
        (fo, fo_n), = Counter(windows[win, pos - 1].tolist()).most_common(1)
        out.append(FeatureProfile(f, k, float(top.count[f]) / max(top.n_tokens, 1), mode, float(hist[mode] / k),
                                  float(near), decode(am), am_n / k, decode(fo), fo_n / k))
    return out


@dataclass
class Positional(Result):
    """positional.json (one per SAE, in its own folder): per feature, where and on what its top activations fall;
    the share of each kind."""

    name: ClassVar[str] = "positional"
    sae: str  # the SAE's hook spec
    n_top: int
    n_tokens: int
    ctx: int
    n_features: int  # with enough activations to profile
    shares: dict  # kind -> fraction of profiled features
    features: list  # FeatureProfile dicts
    hist: dict  # feature -> normalised position histogram of its top-N (for the plot)

    def summary(self) -> str:
        s = ", ".join(f"{k} {v:.0%}" for k, v in self.shares.items())
        return f"{self.sae}: {self.n_features} features with >= 20 activations in {self.n_tokens:,} tokens: {s}"

    def plot(self, out) -> list:
        """The seed's figure: each positional feature's distribution of top-activation positions, in mode order."""
        feats = sorted((p for p in self.features if p["kind"] == "positional"), key=lambda p: p["mode"])
        if not feats:
            return []
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(8, 3.6))
        step = max(1, len(feats) // 40)
        cmap = plt.get_cmap("viridis")
        for i, p in enumerate(feats[::step]):
            ax.plot(self.hist[str(p["feature"])], color=cmap(i / max(1, len(feats[::step]) - 1)), lw=1)
        ax.set_xlabel("position in context")
        ax.set_ylabel(f"share of top {self.n_top}")
        shown = f", every {step}th shown" if step > 1 else ""
        ax.set_title(f"{self.sae}: positions of the top activations of its {len(feats)} positional features{shown}",
                     fontsize=9)
        return [save(fig, out / "positional.png")]


def positional(sae, top: TopActivations, windows: np.ndarray, decode, n_top: int) -> Positional:
    profs = profiles(top, windows, decode)
    kinds = Counter(p.kind for p in profs)
    shares = {k: kinds.get(k, 0) / max(len(profs), 1) for k in ("positional", "I am", "I follow", "other")}
    hist = {}
    for p in profs:
        if p.kind == "positional":
            k = p.n
            hist[str(p.feature)] = (np.bincount(top.pos[p.feature, :k].numpy(), minlength=top.ctx) / k).round(4).tolist()
    feats = [dict(vars(p), kind=p.kind) for p in profs]
    return Positional(sae=str(sae.cfg.hook_spec), n_top=n_top, n_tokens=top.n_tokens, ctx=top.ctx, n_features=len(profs),
                      shares=shares, features=feats, hist=hist)
