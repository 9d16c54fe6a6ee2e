"""What every training recipe is: a loss on a batch, the decoder constraint around the optimizer
step, an lr multiplier, and the state it saves in checkpoints. `Trainer` runs the shared loop."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NamedTuple

import torch

from ..sae import SAE

if TYPE_CHECKING:
    from ..trainer import TrainConfig


class StepOutput(NamedTuple):
    loss: torch.Tensor
    """The scalar the trainer backpropagates."""

    feature_acts: torch.Tensor
    """f, [batch, d_sae]; zero where a latent is inactive (the trainer counts firings from it when `fired` is None).
    A sparse tensor, without a gradient, from a recipe whose loss does not read it (Recipe.dense_f False)."""

    reconstruction: torch.Tensor
    """x_hat, [batch, d_in], on the trainer's scaled inputs."""

    fired: torch.Tensor | None = None
    """[d_sae]: on how many inputs of the batch each latent fired, when the step knows it without a pass over f
    (sparse_step.sae_step); None: the trainer counts from f."""


class Recipe:
    """Base: Adam on all parameters, unit-norm decoder rows, no lr change, no state.

    A new recipe is a subclass in its own file that sets `name` (and `architecture` if not
    "standard", `options` if it reads recipe-specific TrainConfig fields) and defines `loss`, plus
    its entry in `RECIPES` (recipes/__init__.py)."""

    name: str  # TrainConfig.recipe
    architecture = "standard"  # the SAEConfig.architecture it trains
    options: tuple[str, ...] = ()  # the TrainConfig fields it reads that not every recipe does (the CLI refuses the rest)
    unit_norm_decoder = True
    state_keys: tuple[str, ...] = ("last_fired", "tokens_seen")  # attributes saved in checkpoints (tensors or JSON values)
    dense_f = True  # False: the loss reads only x_hat (and l0), so the CPU step hands f back sparse (sae_step)
    resample_steps: frozenset[int] = frozenset()  # steps after which the trainer calls `resample`

    def __init__(self, sae: SAE, cfg: TrainConfig, data_parallel: bool = False):
        self.check(cfg)
        self.sae, self.cfg = sae, cfg
        # the batch is this rank's part of a global batch: batch-wide quantities are reduced across ranks
        self.data_parallel = data_parallel
        # inputs seen, and the count when each latent last fired, on the SAE's device: how long each has been silent
        # (the trainer's "dead" curve; TopK's AuxK set). A resampled latent starts afresh.
        self.tokens_seen = 0
        self.last_fired = torch.zeros(sae.d_sae, dtype=torch.long, device=sae.W_enc.device)

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        """Raise ValueError for option values this recipe cannot train with (before any work starts)."""

    def loss(self, x: torch.Tensor, step: int) -> StepOutput:
        raise NotImplementedError

    def observe(self, fired: torch.Tensor, n_inputs: int, lr_frac: float = 1.0) -> None:
        """After a step: on how many of the (global) batch's `n_inputs` inputs each latent fired; `lr_frac`: the
        step's lr as a fraction of the peak lr. A recipe that keeps more statistics extends it."""
        self.tokens_seen += n_inputs
        self.last_fired[fired > 0] = self.tokens_seen

    def silent_for(self) -> torch.Tensor:
        """[d_sae]: inputs since each latent last fired (or since the start, or its resampling)."""
        return self.tokens_seen - self.last_fired

    def before_optimizer_step(self) -> None:
        """After backward: keep a unit-norm decoder row from growing along itself."""
        if self.unit_norm_decoder:
            remove_parallel_grad(self.sae)

    def after_optimizer_step(self) -> None:
        if self.unit_norm_decoder:
            self.sae.normalize_decoder_()

    def lr_scale(self, step: int) -> float:
        """Multiplier on the trainer's lr schedule at `step`."""
        return 1.0

    def resample(self, dead: torch.Tensor, step: int, inputs: Iterator[torch.Tensor], opt: torch.optim.Optimizer) -> int:
        """Re-initialise the `dead` latents from `inputs` (scaled batches); returns how many."""
        raise NotImplementedError(f"the {self.name} recipe does not resample")

    @torch.no_grad()
    def reinit_latents(self, idx: torch.Tensor, directions: torch.Tensor, enc_norm: float, b_enc: float,
                       opt: torch.optim.Optimizer) -> None:
        """Point latents `idx` at `directions` (unit decoder rows; encoder columns of norm `enc_norm`, bias `b_enc`),
        restart their Adam moments and their silence count: resampled, they are new latents."""
        sae = self.sae
        v = directions / directions.norm(dim=1, keepdim=True).clamp_min(1e-8)
        sae.W_dec[idx] = v
        sae.W_enc[:, idx] = v.T * enc_norm
        sae.b_enc[idx] = b_enc
        for p in (sae.W_enc, sae.b_enc, sae.W_dec):
            st = opt.state.get(p)
            if not st:  # no Adam step taken yet
                continue
            for key in ("exp_avg", "exp_avg_sq"):
                if p is sae.W_enc:
                    st[key][:, idx] = 0  # latents are W_enc's columns
                else:
                    st[key][idx] = 0
        self.last_fired[idx] = self.tokens_seen

    def finalize(self, sae: SAE) -> None:
        """Turn a copy of the trained SAE into the one to save (acting on scaled inputs)."""

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.state_keys}

    def load_state_dict(self, state: dict) -> None:
        for k in self.state_keys:
            setattr(self, k, state[k])


@torch.no_grad()
def high_loss_inputs(reconstruct: Callable[[torch.Tensor], torch.Tensor], inputs: Iterator[torch.Tensor], n: int,
                     n_inputs: int, seed: int) -> torch.Tensor:
    """[n, d_in]: inputs drawn from the first `n_inputs` of `inputs` with probability proportional to the
    square of their loss under `reconstruct` (Bricken et al. 2023, "Neuron Resampling")."""
    xs, losses, seen = [], [], 0
    while seen < n_inputs:
        x = next(inputs)
        xs.append(x)
        losses.append((reconstruct(x) - x).pow(2).sum(-1))
        seen += len(x)
    x, probs = torch.cat(xs), torch.cat(losses).pow(2)
    pick = torch.multinomial(probs / probs.sum(), n, replacement=n > len(x), generator=torch.Generator().manual_seed(seed))
    return x[pick]


def remove_parallel_grad(sae: SAE) -> None:
    """Project out the gradient component along each (unit-norm) decoder row (Bricken et al. 2023)."""
    g, w = sae.W_dec.grad, sae.W_dec.data
    if g is not None:
        g.addcmul_(torch.linalg.vecdot(g, w).unsqueeze(1), w, value=-1)  # in place: no [d_sae, d_in] temporaries
