"""The paper's recipe (Kissane et al. 2024, appendix B, after Bricken et al. 2023): ReLU SAE,
unit-norm decoder rows, loss = |x - x_hat|^2 + l1 * sum f, and Anthropic-style resampling of dead
latents with the lr warmed back afterwards."""

from __future__ import annotations

import math

import torch

from ..sparse_step import sae_step
from .base import Recipe, StepOutput, high_loss_inputs

# A resampled latent's encoder row is its new direction times this fraction of the alive latents'
# mean encoder norm (Bricken et al. 2023, "Neuron Resampling"; anthropic_neuron_resample_scale in
# the paper's training code, ckkissane/attention-output-saes).
RESAMPLE_ENCODER_SCALE = 0.2
# After a resample the lr restarts at this fraction and cosine-warms back to 1x over
# cfg.resample_warmup steps (sched_lr_factor in the paper's training code).
WARM_BACK_START = 0.1


class L1Recipe(Recipe):
    name = "l1"
    options = ("l1_coeff", "resample_every", "n_resamples", "resample_inputs", "resample_warmup")
    state_keys = (*Recipe.state_keys, "last_resample", "n_resampled")

    def __init__(self, sae, cfg, data_parallel=False):
        super().__init__(sae, cfg, data_parallel)
        every = cfg.resample_every or max(1, cfg.steps // 5)
        self.resample_steps = frozenset(every * i for i in range(1, cfg.n_resamples + 1) if every * i < cfg.steps)
        self.last_resample = 0  # step of the last resample: the lr warm-back starts there
        self.n_resampled = 0

    def loss(self, x, step):
        f, recon, fired = sae_step(self.sae, x)[:3]  # sparse-aware backward, same gradients as autograd
        l2 = (recon - x).pow(2).sum(-1).mean()
        return StepOutput(l2 + self.cfg.l1_coeff * f.sum(-1).mean(), f, recon, fired)

    def lr_scale(self, step):
        since = step - self.last_resample
        if not self.n_resampled or since >= self.cfg.resample_warmup:
            return 1.0
        t = since / self.cfg.resample_warmup
        return WARM_BACK_START + (1 - WARM_BACK_START) * 0.5 * (1 - math.cos(math.pi * t))

    @torch.no_grad()
    def resample(self, dead, step, inputs, opt):
        """Bricken et al.'s resampling: each dead latent gets the direction of a high-loss input (minus b_dec), an
        encoder column of a fifth of the alive latents' mean norm, zero bias; its Adam moments restart."""
        idx = dead.nonzero().flatten()
        if len(idx) == 0:
            return 0
        sae = self.sae
        x = high_loss_inputs(lambda x: sae(x).reconstruction, inputs, len(idx), self.cfg.resample_inputs, self.cfg.seed + step)
        alive = ~dead
        enc_norm = sae.W_enc[:, alive].norm(dim=0).mean().item() if alive.any() else 1.0
        self.reinit_latents(idx, x - sae.b_dec, enc_norm * RESAMPLE_ENCODER_SCALE, 0.0, opt)
        self.last_resample, self.n_resampled = step, self.n_resampled + 1
        return len(idx)
