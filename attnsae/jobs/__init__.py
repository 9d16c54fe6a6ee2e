"""Whole jobs, each resumable in one run folder: the main job (one SAE, evaluated and reported), one SAE on
one hook, an L1 sweep on one store, and an SAE for every layer's hook_z from one harvest."""

from .layers import LayersConfig, run_layers
from .main import JobConfig, evaluate, main_train_config, run_job, write_report
from .sweep import run_sweep
from .train import train_one

__all__ = ["JobConfig", "LayersConfig", "evaluate", "main_train_config", "run_job", "run_layers", "run_sweep", "train_one",
           "write_report"]
