"""SAEs: the module, training recipes, and save/load in our, SAELens' and the paper's formats."""

from .io import load_feature_density, load_reference, load_sae, save_sae
from .sae import SAE, SAEConfig, SAEOutput
from .trainer import RECIPES, TrainConfig, Trainer, sae_config_for

__all__ = [
    "SAE", "SAEConfig", "SAEOutput", "TrainConfig", "Trainer", "RECIPES", "sae_config_for",
    "save_sae", "load_sae", "load_reference", "load_feature_density",
]
