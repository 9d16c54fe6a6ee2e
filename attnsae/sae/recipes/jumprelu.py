"""JumpReLU (Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction Fidelity with JumpReLU
Sparse Autoencoders"): f = pre * H(pre - theta) with a learned threshold per latent, theta =
exp(log_threshold), and loss = |x - x_hat|^2 + lambda * ||f||_0 (their sec. 3), L0 counted as
sum_i H(pre_i - theta_i).

The step H has no useful gradient, so the backward pass uses their straight-through pseudo-derivatives
(sec. 4, eqs. 11 and 12) with the rectangle kernel K(u) = 1{|u| < 1/2} of bandwidth eps:

    d/dtheta JumpReLU_theta(z) := -(theta / eps) K((z - theta) / eps)    d/dz JumpReLU = H(z - theta)
    d/dtheta H(z - theta)      := -(1 / eps) K((z - theta) / eps)         d/dz H := 0

Unit-norm decoder rows, as the other recipes (the L0 penalty does not reward shrinking f)."""

from __future__ import annotations

import torch

from ..sparse_step import sae_step
from .base import Recipe, StepOutput


def rectangle(u: torch.Tensor) -> torch.Tensor:
    """The kernel K: 1 on (-1/2, 1/2), else 0."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class JumpReLU(torch.autograd.Function):
    """z * H(z - theta) for z [..., d_sae], theta [d_sae]; eq. 11's pseudo-derivative for theta."""

    @staticmethod
    def forward(ctx, z, theta, eps):
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta)

    @staticmethod
    def backward(ctx, grad):
        z, theta = ctx.saved_tensors
        g_theta = -(theta / ctx.eps) * rectangle((z - theta) / ctx.eps) * grad
        return (z > theta) * grad, g_theta.sum_to_size(theta.shape), None


class Step(torch.autograd.Function):
    """H(z - theta); eq. 12's pseudo-derivative for theta, none for z."""

    @staticmethod
    def forward(ctx, z, theta, eps):
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        z, theta = ctx.saved_tensors
        g_theta = -(1 / ctx.eps) * rectangle((z - theta) / ctx.eps) * grad
        return None, g_theta.sum_to_size(theta.shape), None


class JumpReLURecipe(Recipe):
    name = "jumprelu"
    architecture = "jumprelu"
    options = ("l0_coeff", "bandwidth", "init_threshold")
    dense_f = False

    def __init__(self, sae, cfg, data_parallel=False):
        super().__init__(sae, cfg, data_parallel)
        sae.set_threshold_(cfg.init_threshold)

    def loss(self, x, step):
        """On the CPU the sparse step (the same gradients: tests/test_sparse_step.py); elsewhere plain autograd through
        the two Functions above."""
        sae, eps = self.sae, self.cfg.bandwidth
        if x.device.type == "cpu":
            f, recon, fired, _, l0 = sae_step(sae, x, bandwidth=eps, dense_f=self.dense_f)
        else:
            pre, theta = sae.pre_acts(x).float(), sae.threshold
            f, fired = JumpReLU.apply(pre, theta, eps), None
            recon = sae.decode(f)
            l0 = Step.apply(pre, theta, eps).sum(-1).mean()
        l2 = (recon - x).pow(2).sum(-1).mean()
        return StepOutput(l2 + self.cfg.l0_coeff * l0, f, recon, fired)
