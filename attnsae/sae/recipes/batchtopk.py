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
# towards each later batch's (SAELens' topk_threshold_lr; the paper averages it over batches).
THRESHOLD_EMA = 0.01


class BatchTopKRecipe(TopKRecipe):
    name = "batchtopk"
    architecture = "standard"  # trained as a ReLU SAE whose activation is BatchTopK; saved as "jumprelu"
    state_keys = (*TopKRecipe.state_keys, "threshold")

    def __init__(self, sae, cfg, data_parallel=False):
        super().__init__(sae, cfg, data_parallel)
        self.threshold: torch.Tensor | None = None  # running estimate of the smallest kept activation (on the device)

    def sparse(self, x, batch_of_ranks=True):
        """The decoder and the backward touch only the kept entries. `batch_of_ranks`: in a data-parallel run, x is
        this rank's part of the global batch (the B*k kept are the global batch's)."""
        return sae_step(self.sae, x, batch_k=self.cfg.k, across_ranks=self.data_parallel and batch_of_ranks)

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
        sae.set_threshold_(0.0 if self.threshold is None else float(self.threshold))
