"""Recursive direct feature attribution (RDFA; the paper's section 2, appendix N, Table 6) on one prompt.

With every attention pattern and norm scale frozen at the prompt's values, an attention-SAE feature's
pre-activation at a destination D is an exact sum of linear parts, and so, recursively, is each part:

  1-2  pre_i[D] = bias_i + sum_h sum_S A_h[D, S] w_{i,h} . v_g(h)[S]               DFA by head and by source
       v_g[S] = LN1(x[S]) W_V,g + b_V,g,  LN1(x) = G * (P x) / s[S] + beta     (scale s frozen: linear in x)
       so source S's term is r_S . x[S] + c_S,  r_S = P (G * sum_h A_h[D,S] W_V,g(h) w_{i,h}) / s[S]
  3    x[S] = sum_k f_k d_k + eps + b_dec                       a residual-stream SAE at that layer, if given
  4    x[S] = embed + pos_embed + sum_{l<L} (attn_out_l + mlp_out_l)           the residual stream's parts
  5    attn_out_l = post(z_l W_O + b_O),  z_l = sum_j f_j d_j + eps + b_dec        upstream attention features
       (post: Gemma's post-attention norm, its scale frozen; nothing elsewhere)
  6    recurse: upstream attention feature j of layer l at S is a feature at destination S.

G is the norm's gain (w, or Gemma's 1 + w), P LayerNorm's centring (the identity for RMSNorm), beta its bias;
c_S (the "value bias") carries beta and b_V through the pattern. Every number is in units of the
pre-activation being split, and every split sums to what it splits (tests/test_rdfa.py checks each against
the model's own forward). An MLP is not linear, so its output at S stays one term: RDFA goes from attention
to attention, as the paper's explorer does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.hooks import act_name
from .dfa import dfa_by_head, dfa_by_source
from .heads import require_hook_z
from .logit_path import norm_gain


class PromptTrace:
    """One prompt's forward with what RDFA freezes and reads, and every SAE's activations on it.

    `attn_saes` {layer: SAE on blocks.{layer}.attn.hook_z}, `resid_saes` {layer: SAE on
    blocks.{layer}.hook_resid_pre} (optional: step 3); what every layer up to the last of them (or `upto`) computes
    is kept. The model must run in float32: the splits are exact only up to its rounding."""

    def __init__(self, model, tokens: torch.Tensor, attn_saes: dict, resid_saes: dict | None = None,
                 upto: int | None = None):
        if model.dtype != torch.float32:
            raise ValueError(f"RDFA needs the model in float32 (it is {model.dtype}): its sums are exact only to the "
                             "model's rounding")
        if not attn_saes:
            raise ValueError("RDFA needs at least one attention SAE")
        tokens = torch.as_tensor(tokens).flatten()
        if len(tokens) == 0:
            raise ValueError("the prompt has no tokens")
        self.model, self.tokens = model, tokens
        self.attn_saes = {int(l): sae for l, sae in attn_saes.items()}
        self.resid_saes = {int(l): sae for l, sae in (resid_saes or {}).items()}
        for l, sae in self.attn_saes.items():
            require_hook_z(sae)
            if sae.cfg.hook_name != act_name("z", l):
                raise ValueError(f"the attention SAE given for layer {l} reads {sae.cfg.hook_name}")
        for l, sae in self.resid_saes.items():
            if sae.cfg.hook_name != act_name("resid_pre", l):
                raise ValueError(f"the residual SAE given for layer {l} reads {sae.cfg.hook_name}, not "
                                 f"{act_name('resid_pre', l)}")
        c = model.cfg
        last = max([*self.attn_saes, *self.resid_saes, *([] if upto is None else [upto])])  # the last layer kept
        names = ["hook_embed"] + (["hook_pos_embed"] if c.learned_pos else [])
        for l in range(last + 1):
            names += [act_name("resid_pre", l), f"blocks.{l}.ln1.hook_scale", act_name("pattern", l), act_name("v", l),
                      act_name("z", l), act_name("attn_out", l), act_name("attn_scores", l)]
            names += [] if c.attn_only else [act_name("mlp_out", l)]
            if c.post_norms:
                names.append(f"blocks.{l}.ln1_post.hook_scale")
            if c.qk_norm:  # for attribution.qk
                names += [f"blocks.{l}.attn.q_norm.hook_scale", f"blocks.{l}.attn.k_norm.hook_scale"]
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens[None].to(model.device), names, stop_early=False)
        self.cache = {k: v[0].detach().float().cpu() for k, v in cache.items()}
        self.pre, self.acts, self.resid_acts = {}, {}, {}
        with torch.no_grad():
            for l, sae in self.attn_saes.items():
                z = self.z(l).flatten(1)
                self.pre[l] = sae.pre_acts(z).float()
                self.acts[l] = sae.activation(self.pre[l].clone())
            for l, sae in self.resid_saes.items():
                self.resid_acts[l] = sae.encode(self.cache[act_name("resid_pre", l)])

    def __len__(self) -> int:
        return len(self.tokens)

    def z(self, layer: int) -> torch.Tensor:
        return self.cache[act_name("z", layer)]  # [pos, n_heads, d_head]

    def top_features(self, layer: int, pos: int, k: int = 10) -> list[tuple[int, float]]:
        """The k most active features of the layer's SAE at `pos`, [(feature, activation)], active ones only."""
        vals, idx = self.acts[layer][pos].topk(min(k, self.acts[layer].shape[1]))
        return [(int(i), float(v)) for i, v in zip(idx, vals) if v > 0]

    def check(self, layer: int, feature: int | None = None, pos: int | None = None) -> None:
        """ValueError for a layer without an attention SAE, a feature or position out of range."""
        if layer not in self.attn_saes:
            raise ValueError(f"no attention SAE at layer {layer} (layers with one: {sorted(self.attn_saes)})")
        d_sae = self.attn_saes[layer].d_sae
        if feature is not None and not 0 <= feature < d_sae:
            raise ValueError(f"feature {feature} out of range: layer {layer}'s SAE has {d_sae}")
        if pos is not None and not 0 <= pos < len(self):
            raise ValueError(f"position {pos} out of range: the prompt has {len(self)} tokens")


@dataclass
class FeatureDFA:
    """Steps 1-2 for feature `feature` of layer `layer` at `dest`: pre = bias + by_head.sum() = bias + by_source.sum()."""

    layer: int
    feature: int
    dest: int
    pre: float  # the pre-activation, from the model's own hook_z
    act: float  # the activation (0 if below the SAE's threshold)
    bias: float  # b_enc - w . b_dec
    by_head: torch.Tensor  # [n_heads]
    by_source: torch.Tensor  # [dest + 1, n_heads]: source S through head h


def traced_dfa(trace: PromptTrace, layer: int, feature: int, dest: int) -> FeatureDFA:
    trace.check(layer, feature, dest)
    sae = trace.attn_saes[layer]
    by_head, bias = dfa_by_head(sae, trace.z(layer)[dest], [feature])
    pattern = trace.cache[act_name("pattern", layer)][:, dest:dest + 1, :dest + 1]
    by_source = dfa_by_source(sae, pattern, trace.cache[act_name("v", layer)][:dest + 1], [feature])[0, 0]  # [H, src]
    return FeatureDFA(layer, feature, dest, float(trace.pre[layer][dest, feature]), float(trace.acts[layer][dest, feature]),
                      float(bias[0]), by_head[0], by_source.T)


def value_readout(trace: PromptTrace, layer: int, feature: int, dest: int, src: int) -> tuple[torch.Tensor, float]:
    """(r [d_model], c): source `src`'s term of the feature's DFA at `dest` is r . x[src] + c, x the residual stream
    entering the layer (blocks.{layer}.hook_resid_pre) at src, with the pattern and ln1's scale frozen."""
    model, c = trace.model, trace.model.cfg
    block = model.blocks[layer]
    w = trace.attn_saes[layer].W_enc.detach().float()[:, feature].view(c.n_heads, c.d_head)  # w_{i,h}
    a = trace.cache[act_name("pattern", layer)][:, dest, src]  # [n_heads]
    W_V = block.W_V_heads.detach().float()[torch.arange(c.n_heads) // c.group_size]  # [n_heads, d_model, d_head]
    omega = torch.einsum("h,hmd,hd->m", a, W_V, w)  # sum_h A_h w_{i,h} through W_V: a vector in LN1's output space
    r = omega * norm_gain(model, block.ln1_w)
    if c.norm == "layernorm":
        r = r - r.mean()  # P is symmetric
    r = r / trace.cache[f"blocks.{layer}.ln1.hook_scale"][src].float()
    b_V = torch.zeros(c.n_kv_heads, c.d_head) if not c.qkv_bias else block.b_V.detach().float().view(c.n_kv_heads, c.d_head)
    v_const = b_V[torch.arange(c.n_heads) // c.group_size]  # [n_heads, d_head]
    if getattr(block, "ln1_b", None) is not None:
        v_const = v_const + torch.einsum("m,hmd->hd", block.ln1_b.detach().float(), W_V)
    return r, float(torch.einsum("h,hd,hd->", a, v_const, w))


def post_attention(trace: PromptTrace, layer: int, y: torch.Tensor, pos: int) -> torch.Tensor:
    """y [..., d_model] (a part of z W_O + b_O at `pos`) -> its part of the layer's output: through Gemma's
    post-attention norm with the scale frozen, unchanged elsewhere."""
    model = trace.model
    if not model.cfg.post_norms:
        return y
    return y * norm_gain(model, model.blocks[layer].ln1_post_w) / trace.cache[f"blocks.{layer}.ln1_post.hook_scale"][pos].float()


def _sae_split(sae, x: torch.Tensor, acts: torch.Tensor, to_resid, r: torch.Tensor, top: int | None) -> dict:
    """x = sum_j f_j d_j + eps + b_dec (an SAE's input at one position) read out along r after `to_resid` (linear
    but for the bias it may add): {features: [(j, f_j, value)] by |value|, error, bias, total, n_active}."""
    active = acts.nonzero().flatten()
    dirs = to_resid(sae.W_dec.detach().float()[active] if len(active) else torch.zeros(0, sae.cfg.d_in), False)
    values = acts[active] * (dirs @ r)
    recon = acts @ sae.W_dec.detach().float() + sae.b_dec.detach().float()
    error = float(to_resid(x - recon, False) @ r)
    bias = float(to_resid(sae.b_dec.detach().float(), True) @ r)
    order = values.abs().argsort(descending=True)[:top]
    return {"features": [(int(active[i]), float(acts[active[i]]), float(values[i])) for i in order],
            "error": error, "bias": bias, "total": float(values.sum()) + error + bias, "n_active": len(active)}


def source_parts(trace: PromptTrace, layer: int, feature: int, dest: int, src: int, top: int | None = 10) -> dict:
    """Steps 3-5 for source `src` of the feature's DFA at `dest`: its term (summed over heads) split into
    the residual stream's components at src (`components`: embed, pos_embed, attn_out and mlp_out of every
    earlier layer, plus `value_bias`); each earlier attention output with an SAE into its features (`upstream`
    {layer: features, error, bias, total}: total is that component's value); the residual stream into the
    residual SAE's features when there is one at this layer (`resid`). Features are sorted by |value|, the
    `top` of them kept (None: all); every split's sums are over all of them."""
    trace.check(layer, feature, dest)
    if not 0 <= src <= dest:
        raise ValueError(f"source {src} out of range: attention reads positions 0..{dest} from destination {dest}")
    model, c = trace.model, trace.model.cfg
    r, value_bias = value_readout(trace, layer, feature, dest, src)
    comps = {"embed": float(trace.cache["hook_embed"][src] @ r)}
    if c.pos_in_residual:
        comps["pos_embed"] = float(trace.cache["hook_pos_embed"][src] @ r)
    for l in range(layer):
        comps[f"attn_out.{l}"] = float(trace.cache[act_name("attn_out", l)][src] @ r)
        if not c.attn_only:
            comps[f"mlp_out.{l}"] = float(trace.cache[act_name("mlp_out", l)][src] @ r)  # an MLP: not split further
    out = {"layer": layer, "feature": feature, "dest": dest, "src": src,
           "total": float(trace.cache[act_name("resid_pre", layer)][src] @ r) + value_bias,
           "value_bias": value_bias, "components": comps, "upstream": {}, "resid": None}
    for l, sae in sorted(trace.attn_saes.items()):
        if l >= layer:
            break
        block = model.blocks[l]
        W_O = block.W_O.detach().float()

        def to_resid(y, with_bias, l=l, W_O=W_O, block=block):
            y = y @ W_O
            if with_bias and c.biases:
                y = y + block.b_O.detach().float()
            return post_attention(trace, l, y, src)

        out["upstream"][l] = _sae_split(sae, trace.z(l)[src].flatten(), trace.acts[l][src], to_resid, r, top)
    if layer in trace.resid_saes:
        x = trace.cache[act_name("resid_pre", layer)][src]
        split = _sae_split(trace.resid_saes[layer], x, trace.resid_acts[layer][src], lambda y, _: y, r, top)
        out["resid"] = split | {"total": split["total"] + value_bias}  # the value bias completes the source's term
    return out


def rdfa_tree(trace: PromptTrace, layer: int, feature: int, dest: int, depth: int = 2, n_sources: int = 3,
              n_features: int = 3) -> dict:
    """The recursion, pruned: the feature's DFA, its `n_sources` strongest sources (by |term|), each split (steps
    3-5), and for each, the `n_features` strongest upstream attention features (by |value|) traced again as
    features at that source, `depth` levels down. Each node: feature, layer, dest, pre, act, bias, by_head,
    sources [{src, value, parts, children}]."""
    d = traced_dfa(trace, layer, feature, dest)
    terms = d.by_source.sum(1)
    node = {"layer": layer, "feature": feature, "dest": dest, "pre": d.pre, "act": d.act, "bias": d.bias,
            "by_head": d.by_head.tolist(), "sources": []}
    for s in terms.abs().argsort(descending=True)[:n_sources].tolist():
        parts = source_parts(trace, layer, feature, dest, s, top=n_features)
        children = []
        if depth > 1:
            ups = [(l, j, v) for l, up in parts["upstream"].items() for j, _, v in up["features"]]
            for l, j, v in sorted(ups, key=lambda t: -abs(t[2]))[:n_features]:
                children.append({"value": v} | rdfa_tree(trace, l, j, s, depth - 1, n_sources, n_features))
        node["sources"].append({"src": s, "value": float(terms[s]), "parts": parts, "children": children})
    return node
