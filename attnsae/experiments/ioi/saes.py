"""IOI with attention-output SAEs (paper 4.3 and appendix K, figs. 14-16).

splice_eval (figs. 14, 15): a layer's SAE reconstruction replaces its hook_z at positions >= the SAE's
first_pos, error term dropped; one layer at a time, and cross-sections (several layers in one
forward, so each reconstruction is computed from an input already shaped by the upstream ones).
Compared with mean-ablating the same layers' hook_z by the ABC distribution's per-position mean
(positions aligned within a template, Wang et al.). At END: mean logit diff and mean KL(clean || run).

feature_ablation (fig. 16a): the SAE spliced in WITH its error term, so the layer's output is
unchanged, then one feature zeroed at S2. That is exactly  z[S2] -> z[S2] - f_i(S2) d_i  (d_i = W_dec[i]);
the error term's ablation is z[S2] -> x_hat(S2). Δ logit diff is averaged over all prompts of an order
(ABBA / BABA); prompts where the feature is silent contribute an exact 0 and are not run.

path_patching (fig. 16b): the same removal seen only by the S-inhibition heads' values. The feature's
residual contribution at S2 is  c = f_i(S2) d_i W_O  (for Gemma, post(r) - post(r - f_i d_i W_O), r the
layer's attention result there, post its post-attention norm). Each S-inhibition head (M, h), M after
the SAE's layer, gets v' = ln1_M(resid_M[S2] - c) W_V[kv(h)] (norm recomputed), and its z at END changes by
pattern[h, END, S2] (v' - v), per query head (for GQA the shared value head is not patched). Everything
after is recomputed normally; Δ logit diff as above.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...attribution.heads import layer_of, require_hook_z
from ...evals.splice import check_compatible, sae_hook
from ...models import replace_with
from ...models.hooks import act_name, head_name
from .measure import capture_at, logit_diff, rows_forward, run_end, summarize
from .prompts import IOIBatch


def saes_by_layer(model, saes) -> dict:
    """{layer: sae}, each checked against the model (hook, width, model, processing); one per layer."""
    out = {}
    for sae in saes:
        require_hook_z(sae)
        check_compatible(model, sae)
        layer = layer_of(sae)
        if layer in out:
            raise ValueError(f"two SAEs for layer {layer}; give one per layer")
        out[layer] = sae
    return dict(sorted(out.items()))


def _kl(clean: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """[n]: KL(clean || other) of the next-token distributions, in nats."""
    lp, lq = F.log_softmax(clean.float(), -1), F.log_softmax(other.float(), -1)
    return (lp.exp() * (lp - lq)).sum(-1)


@torch.no_grad()
def abc_position_means(model, abc: IOIBatch, batch: IOIBatch, layers) -> dict[int, torch.Tensor]:
    """{layer: [n, L, n_heads, d_head]}: for each prompt of `batch`, the mean hook_z of the ABC prompts of its
    template at each position (the templates have the same positions in both; padding positions get 0)."""
    _, cache = run_end(model, abc.tokens, abc.end, cache=[act_name("z", l) for l in layers])
    c = model.cfg
    out = {l: torch.zeros(len(batch), batch.tokens.shape[1], c.n_heads, c.d_head, dtype=model.dtype) for l in layers}
    for t in sorted(set(batch.template.tolist())):
        rows, mine = abc.template == t, batch.template == t
        lens = set(abc.length[rows].tolist()) | set(batch.length[mine].tolist())
        if not rows.any():
            raise ValueError(f"the ABC prompts have none of template {t}: give at least one per template")
        if len(lens) != 1:
            raise ValueError(f"template {t}: ABC and IOI prompts differ in length {sorted(lens)}, so positions do not align")
        n_t = lens.pop()
        for l in layers:
            out[l][mine, :n_t] = cache[act_name("z", l)][rows, :n_t].float().mean(0).to(model.dtype)
    return out


@torch.no_grad()
def splice_eval(model, batch: IOIBatch, abc: IOIBatch, saes: dict, sections: dict[str, list[int]] | None = None) -> dict:
    """Figs. 14 and 15: logit diff and KL at END with SAEs spliced in (error term dropped) vs mean ablation,
    per layer and per cross-section (layers without an SAE are left out and listed as missing)."""
    clean, _ = run_end(model, batch.tokens, batch.end)
    ld_clean = logit_diff(clean, batch)
    means = abc_position_means(model, abc, batch, list(saes))

    def measure(layers):
        res = {}
        for kind in ("sae", "mean_ablation"):
            hooks = [(act_name("z", l), sae_hook(saes[l]) if kind == "sae" else replace_with(means[l])) for l in layers]
            logits, _ = run_end(model, batch.tokens, batch.end, hooks=hooks)
            res[kind] = {"logit_diff": summarize(logit_diff(logits, batch), batch), "kl": float(_kl(clean, logits).mean())}
        return res

    out = {"clean": summarize(ld_clean, batch), "layers": [], "sections": []}
    for l in saes:
        out["layers"].append({"layer": l, **measure([l])})
    for name, layers in (sections or {}).items():
        have = [l for l in sorted(set(layers)) if l in saes]
        missing = [l for l in sorted(set(layers)) if l not in saes]
        entry = {"name": name, "layers": have, "missing": missing}
        if have:
            entry.update(measure(have))
        out["sections"].append(entry)
    return out


# ---- features at S2 -----------------------------------------------------------------------------

def _s2_decomposition(model, batch: IOIBatch, sae, extra_caps=None, cache=()):
    """(clean logit diff [n], SAE input x at S2 [n, d_in], feature acts [n, d_sae], error x - x_hat [n, d_in],
    captured store, cache) for the SAE's layer; extra_caps(store) gives more hooks that capture into the store."""
    layer = layer_of(sae)
    store: dict = {}
    caps = [(act_name("z", layer), capture_at(store, "z", batch.s2))]
    if extra_caps is not None:
        caps += extra_caps(store)
    logits, cache = run_end(model, batch.tokens, batch.end, hooks=caps, cache=list(cache))
    x = store["z"].flatten(1)
    out = sae(x.to(sae.W_enc.device))
    err = x - out.reconstruction.float()
    return logit_diff(logits, batch), x, out.feature_acts.float().detach(), err.detach(), store, cache


def _rows(acts: torch.Tensor, features, length: torch.Tensor):
    """(prompt_of, feature_of) for the interventions, feature -1 = the error term. Without `features`,
    one row per (prompt, feature) where the feature fires at S2; with them, every prompt for each.
    Sorted by prompt length so chunks trim well."""
    n = acts.shape[0]
    if features is None:
        prompt_of, feature_of = (acts > 0).nonzero(as_tuple=True)
    else:
        f = torch.as_tensor(list(features), dtype=torch.long)
        if len(f) and (f.min() < 0 or f.max() >= acts.shape[1]):
            raise ValueError(f"feature ids must lie in [0, {acts.shape[1]})")
        prompt_of, feature_of = torch.arange(n).repeat(len(f)), f.repeat_interleave(n)
    prompt_of = torch.cat([prompt_of, torch.arange(n)])
    feature_of = torch.cat([feature_of, torch.full((n,), -1)])
    order = torch.argsort(length[prompt_of], stable=True)
    return prompt_of[order], feature_of[order]


def _removed(sae, acts, err, prompt_of, feature_of) -> torch.Tensor:
    """[rows, d_in]: what each row removes from z at S2: f_i(S2) d_i, or the error term."""
    W = sae.W_dec.detach().float()
    f = feature_of.clamp_min(0)
    dz = acts[prompt_of, f, None] * W[f]
    is_err = feature_of < 0
    dz[is_err] = err[prompt_of[is_err]]
    return dz


def _table(delta: torch.Tensor, prompt_of, feature_of, acts, batch: IOIBatch) -> list[dict]:
    """Per (feature, order): Δ logit diff summed over its rows / prompts of that order; most negative first."""
    orders = sorted(set(batch.order))
    order_idx = torch.tensor([orders.index(o) for o in batch.order])
    n_order = torch.bincount(order_idx, minlength=len(orders)).float()
    d_sae = acts.shape[1]
    key = (feature_of.masked_fill(feature_of < 0, d_sae)) * len(orders) + order_idx[prompt_of]
    size = (d_sae + 1) * len(orders)
    sums = torch.zeros(size).index_add_(0, key, delta.float())
    fired = torch.zeros(size).index_add_(0, key, (acts[prompt_of, feature_of.clamp_min(0)] > 0).float())
    act_sum = torch.zeros(size).index_add_(0, key, acts[prompt_of, feature_of.clamp_min(0)] * (feature_of >= 0))
    rows = []
    for k in torch.unique(key).tolist():
        f, o = divmod(k, len(orders))
        rows.append({"feature": "error_term" if f == d_sae else f, "order": orders[o],
                     "delta": float(sums[k] / n_order[o]), "n_fire": int(fired[k]) if f < d_sae else int(n_order[o]),
                     "mean_act": float(act_sum[k] / max(fired[k], 1)) if f < d_sae else None})
    return sorted(rows, key=lambda r: r["delta"])


@torch.no_grad()
def feature_ablation(model, batch: IOIBatch, sae, features=None, chunk: int = 256) -> dict:
    """Fig. 16a: zero-ablate each SAE feature at S2 (SAE spliced in with its error term kept), one at a
    time, and the error term; see the module docstring. `features`: only these (run on every prompt)."""
    check_compatible(model, sae)
    layer = layer_of(sae)
    resid_name = act_name("resid_pre", layer)
    ld_clean, _, acts, err, _, cache = _s2_decomposition(model, batch, sae, cache=[resid_name])
    # the no-op: spliced with the error term kept and nothing ablated must give the clean numbers
    logits, _ = run_end(model, batch.tokens, batch.end, hooks=[(act_name("z", layer), sae_hook(sae, keep_error=True))])
    ld_keep = logit_diff(logits, batch)
    prompt_of, feature_of = _rows(acts, features, batch.length)
    dz = _removed(sae, acts, err, prompt_of, feature_of)
    c = model.cfg

    def make_hooks(rows):
        def fn(z, name):
            z = z.clone()
            ar, s2 = torch.arange(len(rows)), batch.s2[prompt_of[rows]]
            z[ar, s2] = (z[ar, s2].float() - dz[rows].view(-1, c.n_heads, c.d_head)).to(z.dtype)
            return z
        return [(act_name("z", layer), fn)]

    out = rows_forward(model, layer, cache[resid_name][prompt_of], batch.end[prompt_of], make_hooks, chunk)
    delta = logit_diff(out, batch, prompt_of) - ld_clean[prompt_of]
    live = (acts > 0).any(0)
    return {"layer": layer, "intervention": "zero-ablate one feature at S2, SAE spliced in with its error term kept",
            "clean_logit_diff": summarize(ld_clean, batch), "keep_error_logit_diff": summarize(ld_keep, batch),
            "keep_error_max_abs_change": float((ld_keep - ld_clean).abs().max()),
            "n_features_firing_at_s2": int(live.sum()), "mean_l0_at_s2": float((acts > 0).sum(1).float().mean()),
            "n_rows_run": len(prompt_of), "table": _table(delta, prompt_of, feature_of, acts, batch)}


@torch.no_grad()
def ablate_s2(model, batch: IOIBatch, sae, features, error: bool = False) -> torch.Tensor:
    """[n] logit diff with the given features (and optionally the error term) all zero-ablated at S2 at
    once, SAE spliced in with its error term kept (the union of feature_ablation's single ablations)."""
    layer, c = layer_of(sae), model.cfg
    _, _, acts, err, _, _ = _s2_decomposition(model, batch, sae)
    f = torch.as_tensor(list(features), dtype=torch.long)
    dz = acts[:, f] @ sae.W_dec.detach().float()[f] + (err if error else 0)
    ar = torch.arange(len(batch))

    def fn(z, name):
        z = z.clone()
        z[ar, batch.s2] = (z[ar, batch.s2].float() - dz.view(-1, c.n_heads, c.d_head)).to(z.dtype)
        return z

    logits, _ = run_end(model, batch.tokens, batch.end, hooks=[(act_name("z", layer), fn)])
    return logit_diff(logits, batch)


def _value_fn(model, layer: int, head: int):
    """x [rows, d_model] (residual stream) -> head's value vector [rows, d_head], through the layer's input norm."""
    c, blk = model.cfg, model.blocks[layer]
    kv = c.kv_head(head)
    W_V = blk.W_V_heads[kv].detach().float()
    b_V = blk.b_V.detach().float().view(c.n_kv_heads, c.d_head)[kv] if c.qkv_bias else 0

    def fn(x):
        return blk.normalize(x.float(), "ln1")[0] @ W_V + b_V
    return fn


def residual_contribution(model, layer: int, dz: torch.Tensor, result=None) -> torch.Tensor:
    """[rows, d_model]: what removing dz [rows, d_attn] from the layer's z takes out of the residual stream:
    dz W_O, or with post-attention norms (Gemma, no b_O) post(result) - post(result - dz W_O), the norm
    recomputed on `result`, the layer's z W_O (its hook_result summed over heads)."""
    c, blk = model.cfg, model.blocks[layer]
    d = dz.float() @ blk.W_O.detach().float()
    if not c.post_norms:
        return d
    r = result.float()
    return blk.normalize(r, "ln1_post")[0] - blk.normalize(r - d, "ln1_post")[0]


@torch.no_grad()
def path_patching(model, batch: IOIBatch, sae, heads: list[tuple[int, int]], features=None, chunk: int = 256) -> dict:
    """Fig. 16b: each SAE feature (and the error term) removed at S2 from the S-inhibition heads' values
    only; see the module docstring. `heads`: [(layer, head)], all in layers after the SAE's."""
    check_compatible(model, sae)
    layer, c = layer_of(sae), model.cfg
    heads = sorted({(int(l), int(h)) for l, h in heads})
    if not heads:
        raise ValueError("path patching needs at least one S-inhibition head")
    early = [head_name(l, h) for l, h in heads if l <= layer]
    if early:
        raise ValueError(f"S-inhibition heads {early} are not after the SAE's layer {layer}: they cannot read its output")
    targets = sorted({l for l, _ in heads})
    start = targets[0]

    def caps(store):
        out = []
        for m in targets:
            out.append((act_name("resid_pre", m), capture_at(store, ("resid", m), batch.s2)))
            out.append((act_name("pattern", m), capture_at(store, ("pattern", m), batch.end, dim=2)))
        if c.post_norms:  # residual_contribution recomputes the post-attention norm from the layer's z W_O
            out.append((act_name("result", layer), capture_at(store, "result", batch.s2)))
        return out

    resid_name = act_name("resid_pre", start)
    ld_clean, _, acts, err, store, cache = _s2_decomposition(model, batch, sae, caps, cache=[resid_name])
    prompt_of, feature_of = _rows(acts, features, batch.length)
    dz = _removed(sae, acts, err, prompt_of, feature_of)
    d_resid = residual_contribution(model, layer, dz, store["result"][prompt_of].sum(-2) if "result" in store else None)
    ar_n = torch.arange(len(batch))
    dz_end: dict[int, dict[int, torch.Tensor]] = {m: {} for m in targets}
    attn = {}
    for m, h in heads:
        a = store[("pattern", m)][ar_n, h, batch.s2]  # [n]: attention END -> S2
        attn[head_name(m, h)] = float(a.mean())
        v = _value_fn(model, m, h)
        r = store[("resid", m)][prompt_of]
        dz_end[m][h] = a[prompt_of, None] * (v(r - d_resid) - v(r))

    def make_hooks(rows):
        hooks = []
        for m in targets:
            def fn(z, name, m=m):
                z = z.clone()
                ar, end = torch.arange(len(rows)), batch.end[prompt_of[rows]]
                for h, d in dz_end[m].items():
                    z[ar, end, h] = (z[ar, end, h].float() + d[rows]).to(z.dtype)
                return z
            hooks.append((act_name("z", m), fn))
        return hooks

    out = rows_forward(model, start, cache[resid_name][prompt_of], batch.end[prompt_of], make_hooks, chunk)
    delta = logit_diff(out, batch, prompt_of) - ld_clean[prompt_of]
    return {"layer": layer, "heads": [head_name(l, h) for l, h in heads], "attention_end_to_s2": attn,
            "intervention": "feature's contribution at S2 removed from the S-inhibition heads' values only; their z at "
                            "END changes by pattern[END, S2] * (v' - v); downstream recomputed",
            "clean_logit_diff": summarize(ld_clean, batch), "n_rows_run": len(prompt_of),
            "table": _table(delta, prompt_of, feature_of, acts, batch)}
