"""Statistics of every feature of an SAE from ONE pass over a token set (all features at once).

Per feature: firing count and density, sum and max of the activation, a histogram of nonzero
activations (fixed log-spaced bins), the top-k windows by their max activation, a uniform random
sample of activating tokens (for activation-quantile groups), and each head's share of the
activation variance from DFA by head (E[(w_k . z_k) y] / E[y^2] over the tokens where it fires).
Dashboards are then built from these without another pass over the tokens. Window ids are rows of
the ActivationSource the pass read.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..attribution.dfa import dfa_bias
from ..attribution.heads import layer_of, require_hook_z
from ..evals.metrics import DEAD_THRESHOLD

HIST_EDGES = torch.logspace(-3, 3, 121)  # 20 bins per decade; values outside go to the end bins


@dataclass
class FeatureStats:
    n_tokens: int  # positions seen (BOS excluded when the SAE was trained without it)
    n_windows: int
    count: torch.Tensor  # [F] int64
    act_sum: torch.Tensor  # [F] float64
    act_max: torch.Tensor  # [F]
    hist: torch.Tensor  # [F, len(HIST_EDGES) - 1] int64
    top_act: torch.Tensor  # [F, k] per-window max activation, descending (0 where fewer windows fired)
    top_window: torch.Tensor  # [F, k] int64 window index (-1: none)
    top_pos: torch.Tensor  # [F, k] int64 position of that max in its window
    sample_act: torch.Tensor  # [F, s] uniform random sample of activating tokens (window -1: empty slot)
    sample_window: torch.Tensor
    sample_pos: torch.Tensor
    head_fve: torch.Tensor  # [F, n_heads] DFA-by-head variance shares on active tokens (nan: never fired)

    @property
    def density(self) -> torch.Tensor:
        return self.count.double() / max(self.n_tokens, 1)

    @property
    def mean_act(self) -> torch.Tensor:
        return self.act_sum / self.count.clamp_min(1)

    def live(self, threshold: float = DEAD_THRESHOLD) -> torch.Tensor:
        """Features firing on at least `threshold` of tokens (paper: dead below 1 in 100,000)."""
        return self.density >= threshold

    def save(self, path) -> None:
        tensors = {f.name: getattr(self, f.name).contiguous() for f in fields(self)
                   if isinstance(getattr(self, f.name), torch.Tensor)}
        save_file(tensors, str(path), metadata={"n_tokens": str(self.n_tokens), "n_windows": str(self.n_windows)})

    @classmethod
    def load(cls, path) -> FeatureStats:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        return cls(n_tokens=int(meta["n_tokens"]), n_windows=int(meta["n_windows"]), **load_file(str(path)))


class StatsCollector:
    """Accumulates FeatureStats batch by batch; `update` takes a layer's z for whole windows."""

    def __init__(self, sae, n_heads: int, top_k: int = 20, n_samples: int = 100, seed: int = 0):
        require_hook_z(sae)
        self.sae, self.n_heads, self.first = sae, n_heads, sae.cfg.first_pos
        F = sae.d_sae
        self.gen = torch.Generator().manual_seed(seed)
        self.bias = dfa_bias(sae)
        self.n_tokens = self.n_windows = 0
        self.count = torch.zeros(F, dtype=torch.long)
        self.act_sum = torch.zeros(F, dtype=torch.float64)
        self.act_max = torch.zeros(F)
        self.hist = torch.zeros(F * (len(HIST_EDGES) - 1), dtype=torch.long)
        self.top = (torch.zeros(F, top_k), torch.full((F, top_k), -1), torch.zeros(F, top_k, dtype=torch.long))
        self.sample = (torch.full((F, n_samples), -1.0), torch.zeros(F, n_samples), torch.full((F, n_samples), -1),
                       torch.zeros(F, n_samples, dtype=torch.long))  # keys, act, window, pos
        # sums for head variance shares: y = pre - bias = sum_k w_k . z_k over active tokens;
        # sum_t y_t (w_k . z_k,t) = w_k . (sum_t y_t z_k,t), so only sum(y z) is kept
        self.syy = torch.zeros(F, dtype=torch.float64)
        self.syz = torch.zeros(F, sae.cfg.d_in, dtype=torch.float64)  # sum of y * z

    @torch.no_grad()
    def update(self, window_ids: torch.Tensor, z: torch.Tensor) -> None:
        """window_ids [b]; z [b, p, d_in] (positions before the SAE's first_pos are ignored)."""
        z = z.flatten(2).float()
        b, p, _ = z.shape
        F = self.sae.d_sae
        rows, fi, vals = self.sae.active(z.view(b * p, -1))  # only the active entries, in (window, position) order
        bi, pi = rows // p, rows % p
        keep = pi >= self.first
        rows, bi, pi, fi, vals = rows[keep], bi[keep], pi[keep], fi[keep], vals[keep]
        self.n_tokens += b * max(p - self.first, 0)
        self.n_windows += b
        self.count += torch.bincount(fi, minlength=F)
        self.act_sum.index_add_(0, fi, vals.double())
        self.act_max.scatter_reduce_(0, fi, vals, "amax")

        nb = len(HIST_EDGES) - 1
        self.hist += torch.bincount(fi * nb + torch.bucketize(vals, HIST_EDGES[1:-1]), minlength=self.hist.numel())

        # each window's largest activation of each feature and its first position (0 and 0 where it never fires)
        cell = bi * F + fi
        wmax = torch.zeros(b * F).scatter_reduce_(0, cell, vals, "amax")
        at_max = vals == wmax[cell]
        wpos = torch.zeros(b * F, dtype=torch.long).scatter_reduce_(0, cell[at_max], pi[at_max], "amin", include_self=False)
        self._merge_top(wmax.view(b, F).T, window_ids[None].expand(F, -1), wpos.view(b, F).T)
        self._merge_sample(bi, pi, fi, vals, window_ids)

        y = vals - self.bias[fi]  # the pre-activation without its bias: active entries are their pre-activations
        self.syy.index_add_(0, fi, (y * y).double())
        sel = torch.sparse_coo_tensor(torch.stack([fi, rows]), y, (F, b * p), check_invariants=False)
        self.syz += torch.sparse.mm(sel, z.view(b * p, -1)).double()

    def _merge_top(self, acts, windows, pos):
        a = torch.cat([self.top[0], acts], 1)
        vals, idx = a.topk(self.top[0].shape[1], dim=1)
        self.top = (vals, torch.cat([self.top[1], windows], 1).gather(1, idx), torch.cat([self.top[2], pos], 1).gather(1, idx))

    def _merge_sample(self, bi, pi, fi, vals, window_ids):
        """Reservoir by random keys: keep the s activating tokens with the largest keys per feature."""
        F, s = self.sample[0].shape
        order = torch.argsort(fi, stable=True)
        fi, bi, pi, vals = fi[order], bi[order], pi[order], vals[order]
        counts = torch.bincount(fi, minlength=F)
        width = int(counts.max()) if len(fi) else 0
        if width == 0:
            return
        slot = torch.arange(len(fi)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        new = [torch.full((F, width), fill, dtype=dt)
               for fill, dt in ((-1.0, torch.float), (0.0, torch.float), (-1, torch.long), (0, torch.long))]
        new[0][fi, slot] = torch.rand(len(fi), generator=self.gen)
        new[1][fi, slot] = vals
        new[2][fi, slot] = window_ids[bi]
        new[3][fi, slot] = pi
        keys = torch.cat([self.sample[0], new[0]], 1)
        _, idx = keys.topk(s, dim=1)
        self.sample = tuple(torch.cat([old, n], 1).gather(1, idx) for old, n in zip(self.sample, new))

    def result(self) -> FeatureStats:
        F, H = self.sae.d_sae, self.n_heads
        w = self.sae.W_enc.detach().double().T.reshape(F, H, -1)  # w_{i,k}
        sxy = (self.syz.view(F, H, -1) * w).sum(-1)
        fve = sxy / self.syy.clamp_min(1e-30)[:, None]
        fve[self.count == 0] = float("nan")
        empty = self.sample[2] < 0
        return FeatureStats(
            n_tokens=self.n_tokens, n_windows=self.n_windows, count=self.count, act_sum=self.act_sum, act_max=self.act_max,
            hist=self.hist.view(F, -1), top_act=self.top[0], top_window=self.top[1], top_pos=self.top[2],
            sample_act=self.sample[1].masked_fill(empty, 0), sample_window=self.sample[2], sample_pos=self.sample[3],
            head_fve=fve.float(),
        )


def feature_stats(source, saes: list, batch_size: int = 32, progress: bool = True, **kw) -> list[FeatureStats]:
    """Stats for every feature of every SAE (any layers of one model) from one pass over the source's windows;
    `kw` goes to StatsCollector."""
    collectors = [StatsCollector(sae, source.model.cfg.n_heads, **kw) for sae in saes]
    n, ctx = source.windows.shape
    bar = tqdm(total=n * ctx, unit="tok", unit_scale=True, desc="feature stats", disable=not progress)
    for ids, z in source.whole_windows(saes, batch_size):
        for col in collectors:
            col.update(ids, z[col.sae.cfg.hook_name])
        bar.update(len(ids) * ctx)
    bar.close()
    return [c.result() for c in collectors]


def cached_stats(source, saes: list, folder=None, **kw) -> list[FeatureStats]:
    """Each SAE's stats from folder/L<layer>.safetensors where saved there (as `attnsae report` writes them;
    they must cover the source's windows), the others from one pass over the source."""
    saved = {}
    for i, sae in enumerate(saes):
        path = Path(folder) / f"L{layer_of(sae)}.safetensors" if folder else None
        if path is not None and path.exists():
            saved[i] = FeatureStats.load(path)
            if saved[i].n_windows != len(source):
                raise ValueError(f"{path} covers {saved[i].n_windows} windows, the inputs have {len(source)}: pass the "
                                 "--store it was computed on, or no --stats")
    rest = [s for i, s in enumerate(saes) if i not in saved]
    fresh = iter(feature_stats(source, rest, **kw) if rest else [])
    return [saved[i] if i in saved else next(fresh) for i in range(len(saes))]


def random_live(stats: FeatureStats, n: int, seed: int = 0) -> list[int]:
    """n random live features (all of them when fewer), sorted."""
    live = stats.live().nonzero().flatten()
    pick = torch.randperm(len(live), generator=torch.Generator().manual_seed(seed))[:n]
    return sorted(live[pick].tolist())
