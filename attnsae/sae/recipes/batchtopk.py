"""BatchTopK (Bussmann, Leask and Nanda 2024, "BatchTopK Sparse Autoencoders"): TopK over the whole
batch instead of per row, so a batch of B inputs keeps its B*k largest activations and each input
uses as many latents as it needs, k on average. MSE plus Gao et al.'s AuxK on dead latents, as TopK.

Inference cannot look at a batch, so the paper replaces BatchTopK by a JumpReLU with one threshold,
theta = E_batches[min kept activation] (their sec. 3); we estimate it with a running average over
training, as SAELens does, and save the SAE as a JumpReLU SAE with theta for every latent."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .topk import TopKRecipe

# The threshold estimate starts at the first batch's smallest kept activation and moves this fraction
# towards each later batch's (SAELens' topk_threshold_lr; the paper averages it over batches).
THRESHOLD_EMA = 0.01


def batch_topk(pre: torch.Tensor, k: int) -> torch.Tensor:
    """relu(pre) [B, d_sae] with all but its B*k largest entries zeroed (ties: any B*k of them)."""
    acts = F.relu(pre).flatten()
    vals, idx = acts.topk(min(pre.shape[0] * k, acts.numel()))
    return torch.zeros_like(acts).scatter(0, idx, vals).view_as(pre)


class BatchTopKRecipe(TopKRecipe):
    name = "batchtopk"
    architecture = "standard"  # trained as a ReLU SAE whose activation is BatchTopK; saved as "jumprelu"
    state_keys = (*TopKRecipe.state_keys, "threshold")

    def __init__(self, sae, cfg):
        super().__init__(sae, cfg)
        self.threshold: float | None = None  # running estimate of the smallest kept activation

    def activate(self, x):
        """Plain autograd: the gradient reaches only the kept entries, as relu's and topk's do."""
        f = batch_topk(self.sae.pre_acts(x).float(), self.cfg.k)
        with torch.no_grad():
            kept = f[f > 0]
            if len(kept):
                low = kept.min().item()
                self.threshold = low if self.threshold is None else self.threshold + THRESHOLD_EMA * (low - self.threshold)
        return f, self.sae.decode(f)

    def finalize(self, sae):
        sae.set_threshold_(self.threshold or 0.0)
