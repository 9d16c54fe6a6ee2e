"""Sparsity and fidelity of an SAE on held-out windows (definitions from the paper, Kissane et al. 2024, sec. 3).

- L0 = E|f(x)|_0; explained variance = 1 - E|x - x_hat|^2 / E|x - E x|^2.
- % CE recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean), the SAE spliced in at its hook,
  CE_zero from zero-ablating the same hook at the same positions; raw CE numbers, Delta-CE in
  nats and KL(clean || spliced) are reported beside it because the ratio is ill-conditioned
  where zero-ablation barely moves the loss. Mean-ablation (CE, KL) is reported too: where it
  beats the clean model, any reconstruction near the mean scores above 100%.
- Dead: fires on fewer than 1 in 100,000 inputs (the number of inputs seen is reported; with
  fewer than 100,000 inputs the threshold means "never fired").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.harvest import collect, flatten_hook
from ..data.windows import token_batches
from ..models.hooks import act_name, parse
from .splice import check_compatible, mean_hook, sae_hook, zero_hook

DEAD_THRESHOLD = 1e-5
# A latent silent on this many inputs in a row fires on < DEAD_THRESHOLD of them: dead, as counted in training
DEAD_WINDOW = 100_000
DENSE_THRESHOLD = 0.1


@dataclass
class FidelityResult:
    ce_clean: float
    ce_sae: float
    ce_zero: float
    ce_recovered: float
    delta_ce_sae: float  # CE_sae - CE_clean, nats
    delta_ce_zero: float  # CE_zero - CE_clean, nats
    kl_sae: float  # KL(clean || SAE spliced), nats per token
    kl_zero: float
    ce_mean: float  # the hook mean-ablated (its mean over the evaluated positions): a gentler baseline
    kl_mean: float
    ce_sae_with_error: float  # splicing x_hat + (x - x_hat): must equal ce_clean
    n_tokens: int

    def to_dict(self):
        return asdict(self)


@dataclass
class SparsityResult:
    l0: float
    explained_variance: float
    mse: float  # mean |x - x_hat|^2 per input
    n_inputs: int
    n_dead: int
    n_dense: int
    dead_threshold: float
    dense_threshold: float

    def to_dict(self):
        return asdict(self)


def ce_recovered(ce_clean: float, ce_sae: float, ce_zero: float) -> float:
    denom = ce_zero - ce_clean
    return float("nan") if abs(denom) < 1e-12 else (ce_zero - ce_sae) / denom


def _ce_kl(logits, clean_logp, tokens):
    logp = F.log_softmax(logits[:, :-1].float(), -1)
    ce = F.nll_loss(logp.flatten(0, 1), tokens[:, 1:].flatten(), reduction="sum").item()
    kl = (clean_logp.exp() * (clean_logp - logp)).sum(-1).sum().item()
    return ce, kl


@torch.no_grad()
def fidelity(model, sae, windows: np.ndarray, batch_size: int = 8, progress: bool = True) -> FidelityResult:
    """CE clean / spliced / zero-ablated / mean-ablated and the KLs over the next-token predictions of `windows`
    (on the model's device; the SAE is moved there)."""
    return fidelity_many(model, [sae], windows, batch_size, progress)[0]


@torch.no_grad()
def fidelity_many(model, saes, windows: np.ndarray, batch_size: int = 8, progress: bool = True) -> list[FidelityResult]:
    """`fidelity` of every SAE on the same windows, sharing what they share: one forward for every hook's mean
    activation, one clean forward per batch (its logits and the residual stream where each SAE's block starts),
    and every splice runs from that block on (the blocks before it are the clean forward's)."""
    for sae in saes:
        check_compatible(model, sae)
    saes = [sae.to(model.device) for sae in saes]
    hooks = [sae.cfg.hook_name for sae in saes]
    means = _mean_activations(model, saes, windows, batch_size)
    starts = [sae.cfg.layer for sae in saes]  # None: a hook outside the blocks, spliced in a whole forward
    resid_names = sorted({act_name("resid_pre", l) for l in starts if l is not None})
    keys = ("clean", "sae", "zero", "mean", "err", "kl_sae", "kl_zero", "kl_mean")
    sums = [dict.fromkeys(keys, 0.0) for _ in saes]
    n = 0
    for tokens in tqdm(token_batches(windows, batch_size), total=-(-len(windows) // batch_size), desc="CE eval",
                       disable=not progress, leave=False):
        tokens = tokens.to(model.device)
        clean, resid = model.run_with_hooks(tokens, [], cache=resid_names) if resid_names else (model(tokens), {})
        clean_logp = F.log_softmax(clean[:, :-1].float(), -1)
        del clean
        ce_clean = F.nll_loss(clean_logp.flatten(0, 1), tokens[:, 1:].flatten(), reduction="sum").item()
        for sae, hook, mean, start, acc in zip(saes, hooks, means, starts, sums):
            first = sae.cfg.first_pos
            resid_start = None if start is None else resid[act_name("resid_pre", start)]
            acc["clean"] += ce_clean
            head = sae.cfg.hook_spec.head  # a per-head SAE: the baselines ablate that head only
            for key, fn in (("sae", sae_hook(sae)), ("zero", zero_hook(first, head)), ("mean", mean_hook(mean, first, head)),
                            ("err", sae_hook(sae, keep_error=True))):
                logits = (model.run_with_hooks(tokens, [(hook, fn)]) if start is None
                          else model.forward_from(start, resid_start, [(hook, fn)])[0])
                ce, kl = _ce_kl(logits, clean_logp, tokens)
                acc[key] += ce
                if key != "err":
                    acc[f"kl_{key}"] += kl
        n += tokens.shape[0] * (tokens.shape[1] - 1)
    results = []
    for acc in sums:
        c, s, z = acc["clean"] / n, acc["sae"] / n, acc["zero"] / n
        results.append(FidelityResult(
            ce_clean=c, ce_sae=s, ce_zero=z, ce_recovered=ce_recovered(c, s, z), delta_ce_sae=s - c,
            delta_ce_zero=z - c, kl_sae=acc["kl_sae"] / n, kl_zero=acc["kl_zero"] / n, ce_mean=acc["mean"] / n,
            kl_mean=acc["kl_mean"] / n, ce_sae_with_error=acc["err"] / n, n_tokens=n,
        ))
    return results


def _mean_activations(model, saes, windows: np.ndarray, batch_size: int) -> list[torch.Tensor]:
    """Each SAE's input (its hook, or its head of the hook) averaged over the positions it reads (>= its first_pos)
    of `windows`, all from one forward per batch that stops after the last of them."""
    keys = sorted({(str(sae.cfg.hook_spec), sae.cfg.first_pos) for sae in saes})
    totals, count = dict.fromkeys(keys, 0.0), dict.fromkeys(keys, 0)
    parsed = {spec: parse(spec) for spec, _ in keys}
    for tokens in token_batches(windows, batch_size):
        acts = model.run_with_cache(tokens.to(model.device), sorted({s.name for s in parsed.values()}))[1]
        for spec, first in keys:
            x = flatten_hook(acts[parsed[spec].name], parsed[spec].head)[:, first:].float()
            totals[spec, first] = totals[spec, first] + x.sum(dim=(0, 1))
            count[spec, first] += x.shape[0] * x.shape[1]
    return [totals[k] / count[k] for k in ((str(s.cfg.hook_spec), s.cfg.first_pos) for s in saes)]


class SparsityMeter:
    """L0, explained variance and firing counts of one SAE, accumulated batch by batch on its device."""

    def __init__(self, sae):
        self.sae, device = sae, sae.W_enc.device
        self.fires = torch.zeros(sae.d_sae, dtype=torch.float64, device=device)
        self.n, self.l0_sum, self.err_sum, self.sq_sum = 0, 0.0, 0.0, 0.0
        self.xs_sum = torch.zeros(sae.cfg.d_in, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.to(self.sae.W_enc.device, non_blocking=True).float()
        # the active entries only (SAE.active), decoded as such: no dense [B, d_sae] f, no dense decoder product
        row, col, vals = self.sae.active(x)
        counts = torch.bincount(row, minlength=len(x))
        recon = F.embedding_bag(col, self.sae.W_dec, counts.cumsum(0) - counts, mode="sum",
                                per_sample_weights=vals) + self.sae.b_dec
        self.fires += torch.bincount(col, minlength=self.sae.d_sae).double()
        self.l0_sum += len(row)
        self.err_sum += (recon - x).pow(2).sum().item()
        self.sq_sum += x.pow(2).sum().item()
        self.xs_sum += x.sum(0).double()
        self.n += len(x)

    def result(self) -> tuple[SparsityResult, torch.Tensor]:
        """(result, per-feature firing density)."""
        n = self.n
        if n == 0:
            raise ValueError("no activations to evaluate")
        total_var = self.sq_sum - (self.xs_sum.pow(2).sum().item() / n)  # sum |x - mean|^2
        density = (self.fires / n).cpu()
        res = SparsityResult(
            l0=self.l0_sum / n, explained_variance=1 - self.err_sum / total_var, mse=self.err_sum / n, n_inputs=n,
            n_dead=int((density < DEAD_THRESHOLD).sum()), n_dense=int((density > DENSE_THRESHOLD).sum()),
            dead_threshold=DEAD_THRESHOLD, dense_threshold=DENSE_THRESHOLD,
        )
        return res, density


def sparsity(sae, batches, progress: bool = True) -> tuple[SparsityResult, torch.Tensor]:
    """L0, explained variance, dead / dense counts over an iterable of [B, d_in] activations.
    Returns (result, per-feature firing density). Runs on the SAE's device."""
    meter = SparsityMeter(sae)
    for x in tqdm(batches, desc="sparsity", disable=not progress, leave=False):
        meter.update(x)
    return meter.result()


def sparsity_many(model, saes, windows: np.ndarray, batch_size: int = 32,
                  progress: bool = True) -> list[tuple[SparsityResult, torch.Tensor]]:
    """`sparsity` of every SAE on held-out `windows`, all hooks from one forward per batch."""
    first = {s.cfg.first_pos for s in saes}
    if len(first) != 1:
        raise ValueError(f"these SAEs skip different leading positions ({sorted(first)}); evaluate them separately")
    first_pos = first.pop()
    meters = [SparsityMeter(s) for s in saes]
    specs = [str(s.cfg.hook_spec) for s in saes]
    for tokens in tqdm(token_batches(windows, batch_size), total=-(-len(windows) // batch_size), desc="sparsity",
                       disable=not progress, leave=False):
        acts = collect(model, tokens.to(model.device), specs, first_pos)
        for meter, spec in zip(meters, specs):
            meter.update(acts[spec])
    return [m.result() for m in meters]


def activation_batches(model, sae, windows: np.ndarray, batch_size: int = 32):
    """Held-out activations at the SAE's hook, computed on the fly (forward stops after the hook)."""
    spec = str(sae.cfg.hook_spec)
    for tokens in token_batches(windows, batch_size):
        yield collect(model, tokens, [spec], sae.cfg.first_pos)[spec]


@torch.no_grad()
def zero_ablation_by_layer(model, windows: np.ndarray, batch_size: int = 8, progress: bool = True) -> list[dict]:
    """CE_zero - CE_clean for zero-ablating each layer's hook_z (positions >= 1): how much room
    % CE recovered has at each layer. One clean forward per batch keeps every layer's residual stream; each
    ablated forward runs from its own layer on (the blocks before it are the clean forward's)."""
    n_layers = model.cfg.n_layers
    names = [act_name("resid_pre", l) for l in range(n_layers)]
    clean, zero, n = 0.0, [0.0] * n_layers, 0
    for tokens in tqdm(token_batches(windows, batch_size), total=-(-len(windows) // batch_size),
                       desc="zero-ablate each layer", disable=not progress, leave=False):
        tokens = tokens.to(model.device)
        logits, resid = model.run_with_hooks(tokens, [], cache=names)
        clean += _ce_sum(logits, tokens)
        for l in range(n_layers):
            logits = model.forward_from(l, resid[names[l]], [(act_name("z", l), zero_hook(1))])[0]
            zero[l] += _ce_sum(logits, tokens)
        n += tokens[:, 1:].numel()
    return [{"layer": l, "ce_clean": clean / n, "ce_zero": zero[l] / n, "delta_ce_zero": (zero[l] - clean) / n}
            for l in range(n_layers)]


def _ce_sum(logits, tokens) -> float:
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="sum").item()
