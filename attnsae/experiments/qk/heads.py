"""A query SAE and a key SAE on one attention head: which hooks and heads they read, and the head's score from them.

A query SAE reads one query head's q: `hook_q[h]` (before the rotary embedding; for Gemma 3 also before its q-norm)
or `hook_rot_q[h]` (after both). A key SAE reads one key/value head's k, `hook_k[g]` or `hook_rot_k[g]`. Under
grouped-query attention key head g is shared by query heads g*group .. (g+1)*group - 1, so a key SAE serves all of
them, and splicing it changes every one of their patterns: `QKHead.served` names them wherever a key SAE is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...evals.splice import check_compatible
from ...models.hooks import HookSpec, act_name, head_name, parse_heads
from ...models.transformer import apply_rope

QUERY_KINDS, KEY_KINDS = ("q", "rot_q"), ("k", "rot_k")


@dataclass(frozen=True)
class QKHead:
    layer: int
    head: int  # the query head
    kv_head: int  # the key/value head it reads
    served: tuple[int, ...]  # every query head reading kv_head
    rotated: bool  # the SAEs read q and k after the rotary embedding (hook_rot_q / hook_rot_k)

    @property
    def name(self) -> str:
        return head_name(self.layer, self.head)

    @property
    def q_spec(self) -> str:
        return f"{act_name('rot_q' if self.rotated else 'q', self.layer)}[{self.head}]"

    @property
    def k_spec(self) -> str:
        return f"{act_name('rot_k' if self.rotated else 'k', self.layer)}[{self.kv_head}]"

    @property
    def side(self) -> str:
        return "post-rotary" if self.rotated else "pre-rotary"


def qk_head(cfg, head: str, rotated: bool = False) -> QKHead:
    """The QKHead of 'LAYER.HEAD' (a query head) in a model config."""
    cfg = getattr(cfg, "cfg", cfg)
    (layer, h), = parse_heads([head], cfg)
    if rotated and cfg.rope_theta is None:
        raise ValueError(f"{cfg.name} has no rotary embedding, so there is no post-rotary q or k: drop --post-rotary")
    group = cfg.n_heads // cfg.n_kv_heads
    g = h // group
    return QKHead(layer, h, g, tuple(range(g * group, (g + 1) * group)), rotated)


def _side(spec: HookSpec) -> str:
    return "post-rotary (hook_rot_*)" if spec.kind.startswith("rot_") else "pre-rotary"


def check_pair(model, q_sae=None, k_sae=None, rotated: bool | None = None) -> QKHead:
    """The head a query SAE and/or a key SAE belong to; a mismatched pair is refused naming the fix. `rotated`,
    when given, is the side of the rotary embedding the caller asked for."""
    if q_sae is None and k_sae is None:
        raise ValueError("give a query SAE, a key SAE, or both")
    cfg = model.cfg
    q = q_sae.cfg.hook_spec if q_sae is not None else None
    k = k_sae.cfg.hook_spec if k_sae is not None else None
    for role, spec, kinds, other in (("query", q, QUERY_KINDS, "key"), ("key", k, KEY_KINDS, "query")):
        if spec is None:
            continue
        if spec.kind not in kinds:
            hint = (f"it reads a {other} hook: pass it as the {other} SAE" if spec.kind in QUERY_KINDS + KEY_KINDS
                    else f"a {role} SAE reads one head of hook_{kinds[0]} or hook_{kinds[1]}")
            raise ValueError(f"the {role} SAE reads {spec}: {hint}")
        if spec.head is None:
            raise ValueError(f"the {role} SAE reads every head of {spec.name}; a {role} SAE reads one head, e.g. "
                             f"{spec.name}[0]")
    for sae in (q_sae, k_sae):
        if sae is not None:
            check_compatible(model, sae)
    if q is not None and k is not None:
        if q.layer != k.layer:
            raise ValueError(f"the query SAE reads layer {q.layer}, the key SAE layer {k.layer}: pair SAEs of one layer")
        if _side(q) != _side(k):
            raise ValueError(f"the query SAE is {_side(q)} ({q}), the key SAE {_side(k)} ({k}): train both on the same "
                             "side of the rotary embedding")
    spec = q or k
    is_rot = spec.kind.startswith("rot_")
    if rotated is not None and rotated != is_rot:
        ask = "hook_rot_q / hook_rot_k (--post-rotary)" if rotated else "hook_q / hook_k"
        raise ValueError(f"the SAE reads {spec}, {_side(spec)}, but {ask} was asked for: drop or add --post-rotary to "
                         "match the SAE, or train one on the other hook")
    group = cfg.n_heads // cfg.n_kv_heads
    if q is not None:
        out = qk_head(cfg, head_name(q.layer, q.head), is_rot)
        if k is not None and k.head != out.kv_head:
            raise ValueError(f"query head {q.head} reads key/value head {out.kv_head}, but the key SAE reads {k}: use a "
                             f"key SAE on {out.k_spec}")
        return out
    # a key SAE alone: its first served query head stands for the group
    return qk_head(cfg, head_name(k.layer, k.head * group), is_rot)


def to_scoring_space(model, qk: QKHead, x: torch.Tensor, pos, side: str) -> torch.Tensor:
    """Query (side 'q') or key ('k') vectors x [..., d_head] in the SAEs' space at positions `pos`, in the space
    the head takes dot products in: pre-rotary vectors go through the head's q/k norm (Gemma 3) and the rotary
    embedding at their positions, as the model does; post-rotary vectors are there already."""
    c, x = model.cfg, x.float()
    if qk.rotated:
        return x
    if c.qk_norm:
        x = model.blocks[qk.layer].normalize(x, f"{side}_norm")[0].float()
    if c.rope_theta is not None:
        pos = torch.as_tensor(pos)
        cos, sin = (t[:, 0].float() for t in model.rope(int(pos.max()) + 1, qk.layer, torch.float32, x.device))
        x = apply_rope(x, cos[pos], sin[pos])
    return x


def head_score(model, qk: QKHead, q: torch.Tensor, k: torch.Tensor, pos_q, pos_k) -> torch.Tensor:
    """The head's attention score (scaled and, for Gemma 2, soft-capped; before mask and softmax) of query vectors
    q [..., d_head] at positions pos_q against key vectors k [..., d_head] at pos_k, broadcasting; vectors in the
    SAEs' space."""
    q, k = to_scoring_space(model, qk, q, pos_q, "q"), to_scoring_space(model, qk, k, pos_k, "k")
    score, cap = (q * k).sum(-1) * model.cfg.attn_scale, model.cfg.attn_softcap
    return cap * torch.tanh(score / cap) if cap else score
