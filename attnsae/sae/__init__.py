"""SAEs: the module, training (recipes/, trainer.py, checkpoint.py), and save/load in our, SAELens'
and the paper's formats."""

from .io import load_feature_density, load_reference, load_sae, save_sae
from .recipes import RECIPES, Recipe, StepOutput
from .sae import SAE, SAEConfig, SAEOutput
from .trainer import TrainConfig, Trainer, sae_config_for, train_sae

__all__ = [
    "SAE", "SAEConfig", "SAEOutput", "TrainConfig", "Trainer", "RECIPES", "Recipe", "StepOutput", "sae_config_for",
    "train_sae", "save_sae", "load_sae", "load_reference", "load_feature_density",
]
