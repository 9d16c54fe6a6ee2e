"""TopK (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"): f = TopK(pre), MSE only,
unit-norm decoder, plus their AuxK loss, which lets the top dead latents explain the residual error."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ... import distributed
from ..sparse_step import SparseStep, sae_step
from .base import Recipe, StepOutput, high_loss_inputs

AUX_COEFF = 1 / 32  # weight of the AuxK loss (Gao et al. 2024)


class TopKRecipe(Recipe):
    name = "topk"
    architecture = "topk"
    options = ("k", "dead_window", "resample_every", "n_resamples", "resample_inputs")
    dense_f = False

    def __init__(self, sae, cfg, data_parallel=False):
        super().__init__(sae, cfg, data_parallel)
        # a latent silent this long is dead for AuxK: cfg.dead_window (Gao et al.: 10M tokens),
        # or a tenth of the run when that is shorter (our choice, so short runs use AuxK at all)
        self.dead_after = min(cfg.dead_window, cfg.steps * cfg.batch_size // 10)
        if cfg.resample_every:  # off unless asked for
            every = cfg.resample_every
            self.resample_steps = frozenset(every * i for i in range(1, cfg.n_resamples + 1) if every * i < cfg.steps)

    def dead_latents(self) -> torch.Tensor:
        """The latents silent for `dead_after` tokens (indices)."""
        return (self.silent_for() > self.dead_after).nonzero().flatten()

    def sparse(self, x, batch_of_ranks: bool = True) -> SparseStep:
        """TopK per row (so `batch_of_ranks`, BatchTopK's, changes nothing). The decoder touches only the k active
        latents."""
        return sae_step(self.sae, x, dense_f=self.dense_f)

    def activate(self, x) -> SparseStep:
        """The training step's activation: `sparse`, plus any bookkeeping of the recipe."""
        return self.sparse(x)

    def loss(self, x, step):
        sae = self.sae
        f, recon, fired = self.activate(x)[:3]
        err = x - recon
        loss = err.pow(2).sum(-1).mean()
        with torch.no_grad():
            dead = self.dead_latents()
        if len(dead):  # AuxK on the dead latents' columns only
            xc = x - sae.b_dec if sae.cfg.apply_b_dec_to_input else x
            pre = xc @ sae.W_enc[:, dead] + sae.b_enc[dead]
            k_aux = min(x.shape[1] // 2, len(dead))  # Gao et al.: k_aux about d_in / 2
            a_vals, a_idx = pre.topk(k_aux, dim=-1)
            a_rec = F.embedding_bag(dead[a_idx], sae.W_dec, per_sample_weights=F.relu(a_vals).float(), mode="sum")
            e = err.detach()
            scale = e.pow(2).sum(-1).mean()
            if self.data_parallel:  # the global batch's mean error, as one process would divide by
                scale = distributed.all_sum(scale) / distributed.world()
            aux = (a_rec.float() - e).pow(2).sum(-1).mean() / scale.clamp_min(1e-8)
            loss = loss + AUX_COEFF * aux
        return StepOutput(loss, f, recon, fired)

    @torch.no_grad()
    def resample(self, dead, step, inputs, opt):
        """Re-initialise the latents AuxK counts as dead (not the trainer's `dead`, which counts firings since the
        start and so misses latents that die after a dense start): each points along the reconstruction error of a
        high-loss input, with the alive latents' mean encoder norm and bias. (On SmolLM2 hook_z, resampling every
        200 of 800 steps did not lower the dead count: layers 0, 15, 18 ended with 66%, 17%, 53% dead against 60%,
        18%, 40% without.)"""
        idx = self.dead_latents()
        if len(idx) == 0:
            return 0
        sae = self.sae
        # the same inputs on every rank: no batch-wide selection across the ranks
        reconstruct = lambda x: self.sparse(x, batch_of_ranks=False).reconstruction  # noqa: E731
        x = high_loss_inputs(reconstruct, inputs, len(idx), self.cfg.resample_inputs, self.cfg.seed + step)
        v = x - reconstruct(x)
        alive = torch.ones(sae.d_sae, dtype=torch.bool, device=idx.device)
        alive[idx] = False
        enc_norm = sae.W_enc[:, alive].norm(dim=0).mean().item() if alive.any() else 1.0
        b_enc = sae.b_enc[alive].mean().item() if alive.any() else 0.0
        self.reinit_latents(idx, v, enc_norm, b_enc, opt)
        return len(idx)
