"""Hugging Face -> attnsae conversion, one file per model family.

Each family module has `config_from_hf(hf_config) -> ModelConfig` and
`convert(hf_state_dict, cfg) -> our state dict` (x @ W layout, heads fused). Adding a family is a
file here, a line in BY_MODEL_TYPE, and its traits in `models.config.FAMILY_TRAITS`.
"""

from __future__ import annotations

from . import gemma3, gpt2, llama

# transformers' config.model_type -> the module that converts it
BY_MODEL_TYPE = {"gpt2": gpt2, "llama": llama, "gemma3_text": gemma3, "gemma3": gemma3}


def family_for(model_type: str):
    try:
        return BY_MODEL_TYPE[model_type]
    except KeyError:
        raise NotImplementedError(f"model type {model_type!r} is not supported (supported: gpt2, llama, gemma3)") from None
