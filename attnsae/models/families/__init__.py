"""Hugging Face -> attnsae conversion, one file per model family.

Each family module has `config_from_hf(hf_config) -> ModelConfig` and
`convert(hf_state_dict, cfg) -> our state dict` (x @ W layout, heads fused), and `MODEL_TYPES`, the
transformers `config.model_type` values it converts. Adding a family is a file here (found by itself) and its
traits in `models.config.FAMILY_TRAITS`.
"""

from __future__ import annotations

import importlib
import pkgutil

# transformers' config.model_type -> the module that converts it
BY_MODEL_TYPE = {}
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    BY_MODEL_TYPE |= dict.fromkeys(_module.MODEL_TYPES, _module)
# what a model type's name says about why it is not supported
UNSUPPORTED = {"moe": "mixture-of-experts (MoE) layers are not supported", "mixtral": "mixture-of-experts (MoE) layers "
               "are not supported", "mamba": "state-space (Mamba) layers are not supported", "bert": "encoder models are "
               "not supported: attnsae reads causal decoders"}


def family_for(model_type: str):
    try:
        return BY_MODEL_TYPE[model_type]
    except KeyError:
        why = next((w for key, w in UNSUPPORTED.items() if key in model_type), "this architecture is not supported")
        raise NotImplementedError(f"model type {model_type!r}: {why} (supported: {', '.join(BY_MODEL_TYPE)})") from None
