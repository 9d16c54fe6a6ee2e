"""Indirect object identification (IOI, Wang et al. 2022) for any model (paper 4.3, app. K).

    prompts  vocabulary, templates, the ABBA / BABA / ABC prompts, corruptions, encoding
    measure  logits at END and the logit diff logit(IO) - logit(S) there
    heads    head roles: S-inhibition heads and name movers
    noising  noising the layers' output at S2 (fig. 5, table 4)
    saes     SAEs spliced in, features ablated at S2, path patching (figs. 14-16)
    run      run_ioi: every part on one model, as an IOIResult (ioi.json)
    plots    the figures
"""

from .heads import HEAD_RULE, classify_heads, head_dla, head_roles, s_inhibition_after, template_means_at_end
from .measure import capture_at, clean_logit_diff, logit_diff, rows_forward, run_end, summarize
from .noising import noise_s2
from .prompts import NAMES, IOIBatch, IOIVocab, abc_prompts, corruptions, encode, ioi_prompts, ioi_vocab, replace_conj
from .run import PARTS, IOIResult, default_feature_layers, parse_sections, role_sections, run_ioi
from .saes import ablate_s2, feature_ablation, path_patching, residual_contribution, saes_by_layer, splice_eval

__all__ = [
    "HEAD_RULE", "NAMES", "PARTS", "IOIBatch", "IOIResult", "IOIVocab", "abc_prompts", "ablate_s2", "capture_at",
    "classify_heads", "clean_logit_diff", "corruptions", "default_feature_layers", "encode", "feature_ablation", "head_dla",
    "head_roles", "ioi_prompts", "ioi_vocab", "logit_diff", "noise_s2", "parse_sections", "path_patching", "replace_conj",
    "residual_contribution", "role_sections", "rows_forward", "run_end", "run_ioi", "s_inhibition_after", "saes_by_layer",
    "splice_eval", "summarize", "template_means_at_end",
]
