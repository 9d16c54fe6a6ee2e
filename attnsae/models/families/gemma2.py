"""Gemma 2: Gemma's layout plus post-attention and post-MLP norms, attention scores soft-capped
(c * tanh(s / c)), local (sliding-window) and global layers alternating, a logit soft-cap, and scores scaled by
query_pre_attn_scalar^-1/2."""

from __future__ import annotations

from ..config import ModelConfig
from .gemma3 import convert_post_norms
from .llama import config_from_hf as _llama_config
from .llama import convert_decoder

MODEL_TYPES = ("gemma2",)  # transformers' config.model_type values this file converts


def config_from_hf(hc) -> ModelConfig:
    return _llama_config(hc, family="gemma2", attn_scale=hc.query_pre_attn_scalar**-0.5,
                         attn_softcap=hc.attn_logit_softcapping, final_logit_softcap=hc.final_logit_softcapping)


def convert(sd: dict, cfg: ModelConfig) -> dict:
    new, g = convert_decoder(sd, cfg)
    return convert_post_norms(new, g, cfg)
