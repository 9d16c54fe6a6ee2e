"""Noising at S2 (paper 4.3, fig. 5, table 4): which property of the prompt the layers' output at S2 carries."""

from __future__ import annotations

import torch

from ...models.hooks import act_name
from .measure import capture_at, clean_logit_diff, logit_diff, run_end, summarize
from .prompts import IOIBatch


@torch.no_grad()
def noise_s2(model, batch: IOIBatch, corrupted: dict[str, IOIBatch], layers: list[int]) -> dict:
    """Noising (paper fig. 5, table 4): each layer's hook_z at S2 of every clean prompt replaced by the
    aligned corrupted prompt's hook_z at its own S2 (all layers at once, values from the corrupted run).

        recovered = (LD_noised - LD_zero) / (LD_clean - LD_zero)

    with mean logit diffs and LD_zero from zero-ablating the same layers' hook_z at S2."""
    for l in layers:
        if not 0 <= l < model.cfg.n_layers:
            raise ValueError(f"noising layer {l} out of range: {model.cfg.name} has {model.cfg.n_layers} layers")
    ar = torch.arange(len(batch))

    def set_s2(values):
        def fn(z, name):
            z = z.clone()
            z[ar, batch.s2] = values[name].to(z.dtype) if values is not None else 0
            return z
        return fn

    names = [act_name("z", l) for l in layers]
    ld_clean = clean_logit_diff(model, batch)
    logits, _ = run_end(model, batch.tokens, batch.end, hooks=[(nm, set_s2(None)) for nm in names])
    ld_zero = logit_diff(logits, batch)
    res = {"layers": list(layers), "clean": summarize(ld_clean, batch), "zero": summarize(ld_zero, batch), "corruptions": {}}
    for key, cb in corrupted.items():
        if len(cb) != len(batch) or cb.order != batch.order:
            raise ValueError(f"corruption {key!r} is not aligned with the clean prompts")
        store: dict = {}
        run_end(model, cb.tokens, cb.end, hooks=[(nm, capture_at(store, nm, cb.s2)) for nm in names])
        logits, _ = run_end(model, batch.tokens, batch.end, hooks=[(nm, set_s2(store)) for nm in names])
        ld = logit_diff(logits, batch)
        entry = {"noised": summarize(ld, batch), "example": cb.text[0]}
        for part in ["mean"] + sorted(set(batch.order)):
            m = batch.mask(part) if part != "mean" else torch.ones(len(batch), dtype=torch.bool)
            c_, z_, n_ = ld_clean[m].mean(), ld_zero[m].mean(), ld[m].mean()
            entry["recovered" if part == "mean" else f"recovered_{part}"] = float((n_ - z_) / (c_ - z_))
        res["corruptions"][key] = entry
    return res
