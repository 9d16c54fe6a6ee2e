"""An attention score split into query-side x key-side pairs of features (the paper's appendix K.3).

With ln1's scale (and Gemma's q/k-norm scales) frozen, a head's query at D and key at S are affine in the
residual streams x[D] and x[S], rotary embedding included (a fixed rotation at each position):

    q[D] = Q_D(x[D]) + q0,   k[S] = K_S(x[S]) + k0,   score = scale * q[D] . k[S]

so splitting each stream into parts (attention-SAE features of earlier layers with their error and bias,
MLP outputs, embeddings, or a residual SAE's features) gives a table of part x part terms, plus each side's
parts against the other's constant, that sums exactly to the score the model computes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..models.hooks import act_name
from ..models.transformer import apply_rope
from ..results import Result
from .logit_path import norm_gain
from .rdfa import PromptTrace, post_attention


def residual_parts(trace: PromptTrace, layer: int, pos: int, resid_sae: bool = False) -> tuple[list[str], torch.Tensor]:
    """(names, vectors [n, d_model]) summing to the residual stream entering `layer` at `pos`: with `resid_sae`, the
    residual SAE's active features, its error and b_dec; else the embeddings, each earlier attention output split
    into its SAE's active features, error and bias (or whole, without an SAE), and each earlier MLP output."""
    model, c = trace.model, trace.model.cfg
    if resid_sae:
        sae = trace.resid_saes.get(layer)
        if sae is None:
            raise ValueError(f"no residual SAE at layer {layer} (layers with one: {sorted(trace.resid_saes)})")
        acts = trace.resid_acts[layer][pos]
        active = acts.nonzero().flatten().tolist()
        W = sae.W_dec.detach().float()
        x = trace.cache[act_name("resid_pre", layer)][pos]
        recon = acts @ W + sae.b_dec.detach().float()
        vecs = [acts[j] * W[j] for j in active] + [x - recon, sae.b_dec.detach().float()]
        return [f"resid L{layer}.F{j}" for j in active] + ["resid error", "resid bias"], torch.stack(vecs)
    names, vecs = ["embed"], [trace.cache["hook_embed"][pos]]
    if c.pos_in_residual:
        names.append("pos_embed")
        vecs.append(trace.cache["hook_pos_embed"][pos])
    for l in range(layer):
        sae = trace.attn_saes.get(l)
        if sae is None:
            names.append(f"attn_out.{l}")
            vecs.append(trace.cache[act_name("attn_out", l)][pos])
        else:
            block = model.blocks[l]
            W_O, W = block.W_O.detach().float(), sae.W_dec.detach().float()
            acts = trace.acts[l][pos]
            active = acts.nonzero().flatten().tolist()
            z = trace.z(l)[pos].flatten()
            err = z - (acts @ W + sae.b_dec.detach().float())
            bias = sae.b_dec.detach().float() @ W_O + (block.b_O.detach().float() if c.biases else 0)
            parts = torch.stack([acts[j] * W[j] for j in active] + [err]) @ W_O if active else (err @ W_O)[None]
            names += [f"L{l}.F{j}" for j in active] + [f"L{l} error", f"L{l} bias"]
            vecs += list(post_attention(trace, l, torch.cat([parts, bias[None]]), pos))
        if not c.attn_only:
            names.append(f"mlp_out.{l}")
            vecs.append(trace.cache[act_name("mlp_out", l)][pos])
    return names, torch.stack(vecs)


def _project(trace: PromptTrace, layer: int, head: int, pos: int, side: str, parts: torch.Tensor):
    """(the parts' share of the head's query or key at `pos` [n, d_head], its constant [d_head]): through ln1 with
    its scale frozen, W_Q or W_K (+ bias), Gemma's q/k norm with its scale frozen, and the rotation at `pos`."""
    model, c = trace.model, trace.model.cfg
    block = model.blocks[layer]
    h = head if side == "q" else head // c.group_size  # a key belongs to the query head's kv group
    W = (block.W_Q_heads if side == "q" else block.W_K_heads).detach().float()[h]  # [d_model, d_head]
    lin = parts - parts.mean(-1, keepdim=True) if c.norm == "layernorm" else parts  # LayerNorm centres, then the gain
    lin = lin * norm_gain(model, block.ln1_w) / trace.cache[f"blocks.{layer}.ln1.hook_scale"][pos].float() @ W
    const = torch.zeros(c.d_head)
    if getattr(block, "ln1_b", None) is not None:
        const = const + block.ln1_b.detach().float() @ W
    if c.shortformer_pos:  # the position's embedding enters queries and keys after ln1
        const = const + model.W_pos[pos].detach().float() @ W
    if c.qkv_bias:
        const = const + (block.b_Q if side == "q" else block.b_K).detach().float().view(-1, c.d_head)[h]
    if c.qk_norm:
        w = (block.q_norm_w if side == "q" else block.k_norm_w).detach().float() + c.norm_gain_offset
        s = trace.cache[f"blocks.{layer}.attn.{side}_norm.hook_scale"][pos, h].float()
        lin, const = lin * w / s, const * w / s
    rope = model.rope(len(trace), layer, torch.float32, torch.device("cpu"))
    if rope is not None:
        cos, sin = rope[0][pos, 0], rope[1][pos, 0]
        lin, const = apply_rope(lin, cos, sin), apply_rope(const, cos, sin)
    return lin, const


def qk_table(trace: PromptTrace, layer: int, head: int, dest: int, src: int, resid_sae: bool = False) -> dict:
    """Head `head` of `layer`'s attention score from `dest` to `src` split into query part x key part terms:
    {score (the model's; for Gemma 2 the score before its soft-cap, c * atanh(capped / c), since the terms add up
    before the cap, and capped_score beside it), rows, cols (part names; the last row and column are each side's
    constant: ln1's bias, b_Q / b_K), table [rows, cols] summing to the score}. Parts: residual_parts at dest
    (query) and src (key)."""
    c = trace.model.cfg
    if not 0 <= head < c.n_heads:
        raise ValueError(f"head {head} out of range: the model has {c.n_heads} heads")
    if act_name("attn_scores", layer) not in trace.cache:
        raise ValueError(f"layer {layer} was not traced (PromptTrace keeps layers up to its last SAE, or `upto`)")
    if not 0 <= dest < len(trace):
        raise ValueError(f"position {dest} out of range: the prompt has {len(trace)} tokens")
    window = c.sliding_window if c.is_sliding(layer) and c.sliding_window else None
    lo = max(0, dest - window + 1) if window else 0
    if not lo <= src <= dest:
        raise ValueError(f"source {src} out of range: a query at {dest} attends to positions {lo}..{dest}"
                         + (f" (layer {layer} attends within a window of {window})" if window else ""))
    q_names, q_parts = residual_parts(trace, layer, dest, resid_sae)
    k_names, k_parts = residual_parts(trace, layer, src, resid_sae)
    q, q0 = _project(trace, layer, head, dest, "q", q_parts)
    k, k0 = _project(trace, layer, head, src, "k", k_parts)
    q, k = torch.cat([q, q0[None]]), torch.cat([k, k0[None]])
    table = (q @ k.T) * c.attn_scale
    score, cap = float(trace.cache[act_name("attn_scores", layer)][head, dest, src]), c.attn_softcap
    capped = {"score": cap * math.atanh(score / cap), "capped_score": score} if cap else {"score": score}
    return {"layer": layer, "head": head, "dest": dest, "src": src, **capped,
            "rows": q_names + ["query constant"], "cols": k_names + ["key constant"], "table": table}


def pair_variance(tables: list[dict], n: int = 8) -> dict:
    """How much of a head's score, over a prompt set (one `qk_table` per prompt, e.g. END -> S2 of each IOI prompt),
    the top n (query part, key part) pairs explain (the paper's K.3: 8 pairs, 62% over 100 prompts).

    A pair's share is Cov(term, score) / Var(score): the shares of all pairs sum to exactly 1, so the top n's sum
    is the part of the variance they carry; `explained` is 1 - Var(score - their terms) / Var(score), the fraction
    of the variance that goes once they are taken out. `error_share` is the summed share of every pair with an SAE
    error term on a side."""
    if len(tables) < 2:
        raise ValueError("the variance over prompts needs at least 2 prompts")
    rows, cols = {}, {}
    for t in tables:
        for name in t["rows"]:
            rows.setdefault(name, len(rows))
        for name in t["cols"]:
            cols.setdefault(name, len(cols))
    ids, vals, sample = [], [], []
    for i, t in enumerate(tables):
        r = torch.tensor([rows[name] for name in t["rows"]])
        c = torch.tensor([cols[name] for name in t["cols"]])
        ids.append((r[:, None] * len(cols) + c[None, :]).flatten())
        vals.append(t["table"].flatten().double())
        sample.append(torch.full((len(ids[-1]),), i))
    ids, vals, sample = torch.cat(ids), torch.cat(vals), torch.cat(sample)
    pairs, inv = ids.unique(return_inverse=True)
    score = torch.zeros(len(tables), dtype=torch.float64).index_add_(0, sample, vals)
    m = len(tables)
    mean_t = torch.zeros(len(pairs), dtype=torch.float64).index_add_(0, inv, vals) / m
    mean_ts = torch.zeros(len(pairs), dtype=torch.float64).index_add_(0, inv, vals * score[sample]) / m
    var = score.var(unbiased=False)
    if var <= 0:
        raise ValueError("the score is the same on every prompt: no variance to explain")
    share = (mean_ts - mean_t * score.mean()) / var
    top = share.argsort(descending=True)[:n]
    in_top = torch.isin(inv, top)
    rest = score - torch.zeros(m, dtype=torch.float64).index_add_(0, sample[in_top], vals[in_top])
    row_names, col_names = list(rows), list(cols)
    row_of, col_of = pairs // len(cols), pairs % len(cols)
    is_error = (torch.tensor(["error" in r for r in row_names])[row_of]
                | torch.tensor(["error" in c for c in col_names])[col_of])
    return {"n_prompts": m, "score_mean": float(score.mean()), "score_var": float(var),
            "top": [{"query": row_names[row_of[p]], "key": col_names[col_of[p]], "share": float(share[p]),
                     "mean": float(mean_t[p])} for p in top],
            "top_share": float(share[top].sum()), "explained": float(1 - rest.var(unbiased=False) / var),
            "error_share": float(share[is_error].sum()), "share_sum": float(share.sum())}


@dataclass
class QKPairs(Result):
    """A head's attention score from dest to src over a prompt set, split into query x key pairs (pair_variance)."""

    name: ClassVar[str] = "qk_pairs"
    model: str
    layer: int
    head: int
    sides: str  # what the streams are split into: "components" or "resid-SAE features"
    prompts: list[str]
    dest: list[int]
    src: list[int]
    variance: dict  # pair_variance's answer

    def summary(self) -> str:
        v = self.variance
        lines = [f"{self.model} L{self.layer} head {self.head}: score over {v['n_prompts']} prompts, mean "
                 f"{v['score_mean']:+.3f}, variance {v['score_var']:.4f}; streams split into {self.sides}",
                 f"the top {len(v['top'])} (query part, key part) pairs carry {100 * v['top_share']:.1f}% of the variance "
                 f"(taking them out leaves {100 * (1 - v['explained']):.1f}%); pairs with an SAE error term carry "
                 f"{100 * v['error_share']:.1f}%"]
        lines += [f"  {t['share']:+7.1%}  {t['query']} x {t['key']}  (mean term {t['mean']:+.3f})" for t in v["top"]]
        return "\n".join(lines)


def qk_pairs(model, attn_saes: dict, resid_saes: dict, prompts: list[tuple[str, torch.Tensor, int, int]], layer: int,
             head: int, resid_sae: bool = False, n: int = 8) -> QKPairs:
    """`prompts`: (text, tokens, dest, src) each; one qk_table per prompt, then pair_variance over them."""
    tables = [qk_table(PromptTrace(model, tokens, attn_saes, resid_saes, upto=layer), layer, head, dest, src, resid_sae)
              for _, tokens, dest, src in prompts]
    return QKPairs(model=model.cfg.name, layer=layer, head=head,
                   sides="resid-SAE features" if resid_sae else "components (attention-SAE features upstream)",
                   prompts=[p[0] for p in prompts], dest=[p[2] for p in prompts], src=[p[3] for p in prompts],
                   variance=pair_variance(tables, n))
