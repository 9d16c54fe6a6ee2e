"""Gemma 1 (Gemma-2B, -7B): Llama's layout with norm gains stored as (gain - 1), embeddings scaled by sqrt(d_model)
and a GELU-gated MLP; Gemma-2B has multi-query attention (one key/value head)."""

from __future__ import annotations

from functools import partial

from .llama import config_from_hf as _llama_config
from .llama import convert

MODEL_TYPES = ("gemma",)  # transformers' config.model_type values this file converts

config_from_hf = partial(_llama_config, family="gemma")
__all__ = ["MODEL_TYPES", "config_from_hf", "convert"]
