"""IOI head roles (Wang et al. 2022): per-head attention, direct logit attribution and mean-ablation
effect at END, and the S-inhibition and name-mover heads they single out (HEAD_RULE)."""

from __future__ import annotations

import numpy as np
import torch

from ...attribution.logit_path import head_direct_effect
from ...models.hooks import FINAL_SCALE, act_name
from .measure import capture_at, logit_diff, rows_forward, run_end
from .prompts import IOIBatch

HEAD_RULE = (
    "Per head at END, means over the IOI prompts: attention to S2 and to IO; direct logit attribution (DLA) to "
    "logit(IO) - logit(S) (head output through the final norm with its scale frozen); ablation effect = change in "
    "mean logit diff when the head's z at END is replaced by its mean at END over ABC prompts of the same template, "
    "measured for heads attending >= min_attn to S2 or IO. S-inhibition heads: attention to S2 >= min_attn and above "
    "attention to IO, effect < 0, and |DLA| <= |effect| / 2 (the effect is mostly indirect); ranked by effect, most "
    "negative first. Name movers: attention to IO >= min_attn and above attention to S2, DLA > 0; ranked by DLA."
)


def template_means_at_end(model, abc: IOIBatch, layers, hooks=()) -> dict[int, torch.Tensor]:
    """{layer: [n_templates, n_heads, d_head]}: mean hook_z at END over ABC prompts of each template."""
    store: dict = {}
    caps = [(act_name("z", l), capture_at(store, l, abc.end)) for l in layers]
    run_end(model, abc.tokens, abc.end, hooks=list(hooks) + caps)
    T = int(abc.template.max()) + 1
    out = {}
    for l in layers:
        m = torch.zeros(T, *store[l].shape[1:])
        for t in range(T):
            if (abc.template == t).any():
                m[t] = store[l][abc.template == t].mean(0)
        out[l] = m
    return out


def head_dla(model, layer: int, z_end: torch.Tensor, io_id, s_id, final_scale, post_scale=None) -> torch.Tensor:
    """[n, n_heads]: each head's direct contribution to logit(IO) - logit(S) at END, from its z there
    [n, h, dh], through the norms after it with their per-token scales frozen (as induction.head_dla)."""
    W_U = model.W_U.float()
    return head_direct_effect(model, layer, z_end, W_U[:, io_id] - W_U[:, s_id], final_scale, post_scale)


def classify_heads(effect: np.ndarray, attn_s2: np.ndarray, attn_io: np.ndarray, dla: np.ndarray, min_attn: float = 0.1,
                   after_layer: int = -1) -> dict[str, list[tuple[int, int]]]:
    """Ranked S-inhibition heads and name movers by HEAD_RULE ([layer, head] arrays; NaN effect = not measured);
    only heads in layers > after_layer."""
    s_inh, nm = [], []
    for l, h in np.ndindex(*effect.shape):
        if l <= after_layer:
            continue
        e = effect[l, h]
        if attn_s2[l, h] >= min_attn and attn_s2[l, h] > attn_io[l, h] and np.isfinite(e) and e < 0 \
                and abs(dla[l, h]) <= abs(e) / 2:
            s_inh.append((l, h))
        if attn_io[l, h] >= min_attn and attn_io[l, h] > attn_s2[l, h] and dla[l, h] > 0:
            nm.append((l, h))
    return {"s_inhibition": sorted(s_inh, key=lambda k: effect[k]), "name_movers": sorted(nm, key=lambda k: -dla[k])}


@torch.no_grad()
def head_roles(model, batch: IOIBatch, abc: IOIBatch, min_attn: float = 0.1, hooks=(), chunk: int = 256) -> dict:
    """Per-head statistics at END and the heads HEAD_RULE classifies (see there). `hooks` apply to every
    forward, including the batched ablations, so they must work for any number of rows. Arrays are
    [n_layers][n_heads] lists; effect is NaN for heads below min_attn (not measured)."""
    c, n = model.cfg, len(batch)
    layers = range(c.n_layers)
    store: dict = {}
    caps = []
    for l in layers:
        caps.append((act_name("z", l), capture_at(store, ("z", l), batch.end)))
        caps.append((act_name("pattern", l), capture_at(store, ("pattern", l), batch.end, dim=2)))
        if c.post_norms:  # the head's output passes this norm before the residual stream: its scale is part of DLA
            caps.append((act_name("scale", l, "ln1_post"), capture_at(store, ("post", l), batch.end)))
    resid_names = [act_name("resid_pre", l) for l in layers]
    logits, cache = run_end(model, batch.tokens, batch.end, hooks=list(hooks) + caps, cache=resid_names + [FINAL_SCALE])
    ld = logit_diff(logits, batch)
    ar = torch.arange(n)
    attn_s2 = torch.stack([store[("pattern", l)][ar, :, batch.s2].mean(0) for l in layers]).numpy()
    attn_io = torch.stack([store[("pattern", l)][ar, :, batch.io].mean(0) for l in layers]).numpy()
    dla = torch.stack([head_dla(model, l, store[("z", l)], batch.io_id, batch.s_id, cache[FINAL_SCALE],
                                store.get(("post", l))).mean(0) for l in layers]).numpy()
    means = template_means_at_end(model, abc, list(layers), hooks)
    effect = np.full((c.n_layers, c.n_heads), np.nan)
    for l in layers:
        heads = [h for h in range(c.n_heads) if max(attn_s2[l, h], attn_io[l, h]) >= min_attn]
        if not heads:
            continue
        # one row per (head, prompt): that head's z at END replaced by its ABC template mean
        head_of = torch.tensor(heads).repeat_interleave(n)
        prompt_of = torch.arange(n).repeat(len(heads))
        repl = means[l][batch.template[prompt_of], head_of]

        def make_hooks(rows, l=l, head_of=head_of, prompt_of=prompt_of, repl=repl):
            def fn(z, name):
                z = z.clone()
                z[torch.arange(len(rows)), batch.end[prompt_of[rows]], head_of[rows]] = repl[rows].to(z.dtype)
                return z
            return list(hooks) + [(act_name("z", l), fn)]

        out = rows_forward(model, l, cache[act_name("resid_pre", l)][prompt_of], batch.end[prompt_of], make_hooks, chunk)
        ld_abl = logit_diff(out, batch, prompt_of)
        for j, h in enumerate(heads):
            effect[l, h] = float(ld_abl[j * n:(j + 1) * n].mean() - ld.mean())
    roles = classify_heads(effect, attn_s2, attn_io, dla, min_attn)
    return {"rule": HEAD_RULE, "min_attn": min_attn, "clean_logit_diff": float(ld.mean()),
            "effect": np.round(effect, 5).tolist(), "attn_s2": np.round(attn_s2, 4).tolist(),
            "attn_io": np.round(attn_io, 4).tolist(), "dla": np.round(dla, 5).tolist(),
            "s_inhibition": [list(k) for k in roles["s_inhibition"]], "name_movers": [list(k) for k in roles["name_movers"]]}


def s_inhibition_after(roles: dict, layer: int, k: int) -> list[tuple[int, int]]:
    """The k highest-ranked S-inhibition heads of `roles` in layers after `layer`."""
    arr = {key: np.array(roles[key], dtype=float) for key in ("effect", "attn_s2", "attn_io", "dla")}
    found = classify_heads(arr["effect"], arr["attn_s2"], arr["attn_io"], arr["dla"], roles["min_attn"], after_layer=layer)
    return found["s_inhibition"][:k]
