"""Qwen2: Llama's layout plus biases on the query, key and value projections (none on the output or the MLP);
sliding-window layers where `use_sliding_window` puts them."""

from __future__ import annotations

from functools import partial

from ..config import ModelConfig
from .llama import config_from_hf as _llama_config
from .llama import convert as _llama_convert

MODEL_TYPES = ("qwen2",)  # transformers' config.model_type values this file converts

config_from_hf = partial(_llama_config, family="qwen2")


def convert(sd: dict, cfg: ModelConfig) -> dict:
    new = _llama_convert(sd, cfg)
    for i in range(cfg.n_layers):
        for n, hfn in zip("QKV", ("q_proj", "k_proj", "v_proj"), strict=True):
            new[f"blocks.{i}.b_{n}"] = sd[f"model.layers.{i}.self_attn.{hfn}.bias"]
    return new
