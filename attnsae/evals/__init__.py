"""Evals: sparsity / fidelity metrics and splicing SAEs into the forward pass."""

from .metrics import (
    DEAD_THRESHOLD,
    FidelityResult,
    SparsityResult,
    activation_batches,
    ce_recovered,
    fidelity,
    fidelity_many,
    sparsity,
    sparsity_many,
    zero_ablation_by_layer,
)
from .splice import IncompatibleSAE, check_compatible, sae_hook, zero_hook

__all__ = [
    "DEAD_THRESHOLD", "FidelityResult", "SparsityResult", "activation_batches", "ce_recovered", "fidelity", "fidelity_many",
    "sparsity", "sparsity_many", "zero_ablation_by_layer", "IncompatibleSAE", "check_compatible", "sae_hook", "zero_hook",
]
