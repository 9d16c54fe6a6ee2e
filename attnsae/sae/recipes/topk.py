"""TopK (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"): f = TopK(pre), MSE only,
unit-norm decoder, plus their AuxK loss, which lets the top dead latents explain the residual error."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..sparse_step import SparseStep, sae_step
from .base import Recipe, StepOutput

AUX_COEFF = 1 / 32  # weight of the AuxK loss (Gao et al. 2024)


class TopKRecipe(Recipe):
    name = "topk"
    architecture = "topk"
    options = ("k", "dead_window")
    state_keys = ("last_fired", "tokens_seen")

    def __init__(self, sae, cfg):
        super().__init__(sae, cfg)
        # tokens_seen when each latent last fired, on the SAE's device
        self.last_fired = torch.zeros(sae.d_sae, dtype=torch.long, device=sae.W_enc.device)
        self.tokens_seen = 0
        # a latent silent this long is dead for AuxK: cfg.dead_window (Gao et al.: 10M tokens),
        # or a tenth of the run when that is shorter (our choice, so short runs use AuxK at all)
        self.dead_after = min(cfg.dead_window, cfg.steps * cfg.batch_size // 10)

    def activate(self, x) -> SparseStep:
        """TopK per row. The decoder touches only the k active latents."""
        return sae_step(self.sae, x)

    def loss(self, x, step):
        sae = self.sae
        f, recon, fired, _ = self.activate(x)
        err = x - recon
        loss = err.pow(2).sum(-1).mean()
        with torch.no_grad():
            self.tokens_seen += x.shape[0]
            self.last_fired[fired > 0] = self.tokens_seen
            dead = ((self.tokens_seen - self.last_fired) > self.dead_after).nonzero().flatten()
        if len(dead):  # AuxK on the dead latents' columns only
            xc = x - sae.b_dec if sae.cfg.apply_b_dec_to_input else x
            pre = xc @ sae.W_enc[:, dead] + sae.b_enc[dead]
            k_aux = min(x.shape[1] // 2, len(dead))  # Gao et al.: k_aux about d_in / 2
            a_vals, a_idx = pre.topk(k_aux, dim=-1)
            a_rec = F.embedding_bag(dead[a_idx], sae.W_dec, per_sample_weights=F.relu(a_vals).float(), mode="sum")
            e = err.detach()
            aux = (a_rec.float() - e).pow(2).sum(-1).mean() / e.pow(2).sum(-1).mean().clamp_min(1e-8)
            loss = loss + AUX_COEFF * aux
        return StepOutput(loss, f, recon, fired)
