"""The L1 recipe of Anthropic's April 2024 update, which the paper used for its Gemma-2B SAE: the
penalty is l1 * sum f_i |d_i| with an unconstrained decoder, l1 warmed up at the start of the run;
decoder norms are folded into the encoder when saving."""

from __future__ import annotations

import torch

from ..sparse_step import sae_step
from .base import Recipe, StepOutput

DECODER_INIT_NORM = 0.1  # decoder rows start this short, the encoder as their transpose (April 2024 update)
L1_WARMUP_FRAC = 0.05  # l1 rises linearly from 0 over this fraction of the steps (April 2024 update)


class L1DecoderNormRecipe(Recipe):
    name = "l1_decnorm"
    options = ("l1_coeff",)
    unit_norm_decoder = False

    def __init__(self, sae, cfg, data_parallel=False):
        super().__init__(sae, cfg, data_parallel)
        with torch.no_grad():
            sae.W_dec.mul_(DECODER_INIT_NORM)  # rows are unit-norm after SAE.reset_parameters
            sae.W_enc.copy_(sae.W_dec.T)

    def loss(self, x, step):
        f, recon, fired = sae_step(self.sae, x)[:3]
        warm = min(1.0, step / max(1, L1_WARMUP_FRAC * self.cfg.steps))
        l2 = (recon - x).pow(2).sum(-1).mean()
        l1 = (f * self.sae.W_dec.norm(dim=1)).sum(-1).mean()
        return StepOutput(l2 + warm * self.cfg.l1_coeff * l1, f, recon, fired)

    def finalize(self, sae):
        sae.fold_decoder_norm_()
