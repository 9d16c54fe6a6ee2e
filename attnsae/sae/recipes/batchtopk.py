"""BatchTopK (Bussmann, Leask and Nanda 2024, "BatchTopK Sparse Autoencoders"): TopK over the whole
batch instead of per row, so a batch of B inputs keeps its B*k largest activations and each input
uses as many latents as it needs, k on average. MSE plus Gao et al.'s AuxK on dead latents, as TopK.

Inference cannot look at a batch, so the paper replaces BatchTopK by a JumpReLU with one threshold,
theta = E_batches[min kept activation] (their sec. 3); we estimate it with a running average over
training, as SAELens does, and save the SAE as a JumpReLU SAE with theta for every latent."""

from __future__ import annotations

import torch

from ... import distributed
from ..sparse_step import sae_step
from .topk import TopKRecipe

# The threshold estimate starts at the first batch's smallest kept activation and moves this fraction
# towards each later batch's (the paper averages it over batches; SAELens' topk_threshold_lr is 0.01). A batch's
# cut is the (B*k)-th largest of B*d_sae scores, a quantile precise to a fraction of a percent, while the weights
# and selection biases keep moving it: 0.01 lagged 5-19% behind the cut at the end of SmolLM2 runs (a saved L0 of
# 7.0 for k = 16) and far more with the firing floor on small tests; 0.1 follows it.
THRESHOLD_EMA = 0.1
# firing_floor: how far a latent's selection bias moves per step at the peak lr, as a fraction of the threshold: up
# while its firing rate is below the floor, down towards 0 while it is above twice the floor, still in between, so
# the biases settle rather than cycle. The step follows the lr schedule, so the biases settle with the weights as the
# lr decays and the threshold saved at the end is the one the final biases were trained with. A bias stops at the
# threshold (after 100 steps below the floor): the latent is then chosen whenever its pre-activation is positive,
# but never where it is negative, where it would fire nothing and take one of the batch's B*k places. (Uncapped, on
# SmolLM2 layer 0 at lr 2e-3, up to 30% of the places went so, and the latents that lost them died: 800 steps from
# one store, held-out EV 0.866 and 167 dead; capped, 0.919 and 32 dead. Layer 15 never reaches the cap.)
FLOOR_STEP = 0.01
# The firing rate is a running average over about this many firings at the floor's rate.
FLOOR_FIRINGS = 5


class BatchTopKRecipe(TopKRecipe):
    name = "batchtopk"
    architecture = "standard"  # trained as a ReLU SAE whose activation is BatchTopK; saved as "jumprelu"
    options = (*TopKRecipe.options, "firing_floor")
    state_keys = (*TopKRecipe.state_keys, "threshold", "select_bias", "firing_rate")

    def __init__(self, sae, cfg, data_parallel=False):
        super().__init__(sae, cfg, data_parallel)
        self.threshold: torch.Tensor | None = None  # running estimate of the smallest kept activation (on the device)
        # firing_floor: a per-latent bias on the score the B*k are chosen by, never on the activation itself, that
        # rises while the latent stays silent (bias-based load balancing, as DeepSeek-V3 routes experts without an
        # auxiliary loss). At inference it lowers that latent's threshold: theta - bias, a JumpReLU threshold.
        self.select_bias = self.firing_rate = None
        if cfg.firing_floor:
            self.select_bias = torch.zeros(sae.d_sae, device=sae.W_enc.device)
            self.firing_rate = torch.full((sae.d_sae,), 2 * cfg.firing_floor, device=sae.W_enc.device)

    @classmethod
    def check(cls, cfg):
        if not 0 <= cfg.firing_floor < 1:
            raise ValueError(f"firing_floor must be a fraction of inputs in [0, 1), not {cfg.firing_floor}")

    def sparse(self, x, batch_of_ranks=True):
        """The decoder and the backward touch only the kept entries. `batch_of_ranks`: in a data-parallel run, x is
        this rank's part of the global batch (the B*k kept are the global batch's)."""
        return sae_step(self.sae, x, batch_k=self.cfg.k, across_ranks=self.data_parallel and batch_of_ranks,
                        select_bias=self.select_bias, dense_f=self.dense_f)

    @torch.no_grad()
    def observe(self, fired, n_inputs, lr_frac=1.0):
        super().observe(fired, n_inputs, lr_frac)
        if self.select_bias is not None and self.threshold is not None:  # the same on every rank, as the counts
            floor = self.cfg.firing_floor
            self.firing_rate.lerp_(fired.to(self.firing_rate) / n_inputs, min(1.0, n_inputs * floor / FLOOR_FIRINGS))
            step = FLOOR_STEP * lr_frac * self.threshold
            move = torch.where(self.firing_rate < floor, step, torch.where(self.firing_rate > 2 * floor, -step, 0.0))
            self.select_bias.add_(move).clamp_(min=0.0, max=self.threshold.clamp_min(0))

    def activate(self, x):
        """`sparse`, and the threshold's running estimate."""
        step = self.sparse(x)
        with torch.no_grad():  # a tensor, so a GPU step does not wait for the host
            low = step.smallest  # inf when nothing was kept: no information
            if self.data_parallel:
                low = distributed.all_min(low.clone())
            if self.threshold is None:
                self.threshold = torch.where(torch.isfinite(low), low, 0.0)
            else:
                self.threshold = self.threshold + THRESHOLD_EMA * (torch.where(torch.isfinite(low), low, self.threshold)
                                                                   - self.threshold)
        return step

    def finalize(self, sae):
        theta = 0.0 if self.threshold is None else float(self.threshold)
        sae.set_threshold_(theta if self.select_bias is None else theta - self.select_bias.to(sae.W_enc.device))
