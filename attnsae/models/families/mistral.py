"""Mistral: Llama with a sliding attention window on every layer (`sliding_window`; none in v0.2 and later)."""

from __future__ import annotations

from functools import partial

from .llama import config_from_hf as _llama_config
from .llama import convert

MODEL_TYPES = ("mistral",)  # transformers' config.model_type values this file converts

config_from_hf = partial(_llama_config, family="mistral")
__all__ = ["MODEL_TYPES", "config_from_hf", "convert"]
