"""Attribution: which heads write a feature (weights, eq. 2), and DFA by head and by source position (eq. 3)."""

from .dfa import attention_parts, dfa_bias, dfa_by_head, dfa_by_source, encoder_by_head, feature_dfa
from .heads import head_attribution, layer_of, require_hook_z, top_features_by_head
from .logit_path import through_final_norm
from .variance import Moments, variance_explained

__all__ = [
    "attention_parts", "dfa_bias", "dfa_by_head", "dfa_by_source", "encoder_by_head", "feature_dfa",
    "head_attribution", "layer_of", "require_hook_z", "top_features_by_head", "through_final_norm",
    "Moments", "variance_explained",
]
