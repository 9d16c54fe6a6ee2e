"""TransformerLens hook names: the one place that builds or parses them.

Names are TransformerLens's, with the same meanings:
    hook_embed, hook_pos_embed, ln_final.hook_scale / hook_normalized
    blocks.L.hook_resid_pre / hook_resid_mid / hook_resid_post / hook_attn_out / hook_mlp_out
    blocks.L.attn.hook_q / k / v / rot_q / rot_k / attn_scores / pattern / z / result
    blocks.L.mlp.hook_pre / hook_pre_linear / hook_post
    blocks.L.ln1.hook_scale (ln1, ln2, and Gemma's ln1_post, ln2_post) / hook_normalized

A *hook spec* is a name, optionally with one head: "blocks.5.attn.hook_q[3]" is query head 3's
vector; a spec without a head on a per-head hook means all heads concatenated (what an SAE on
hook_z sees). A head is written LAYER.HEAD ("18.6") on the command line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ATTN_KINDS = ("q", "k", "v", "rot_q", "rot_k", "attn_scores", "pattern", "z", "result")
BLOCK_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
MLP_KINDS = ("pre", "pre_linear", "post")
NORM_KINDS = ("scale", "normalized")
# per-head hooks whose spec may carry [head]; which heads: query heads or key/value heads
QUERY_HEAD_KINDS = ("q", "rot_q", "z")
KV_HEAD_KINDS = ("k", "v", "rot_k")

_SPEC = re.compile(r"^(?P<name>[\w.]+?)(?:\[(?P<head>\d+)\])?$")
_LAYER = re.compile(r"^blocks\.(\d+)\.")


def act_name(kind: str, layer: int | None = None, norm: str | None = None) -> str:
    """Build a hook name, as TransformerLens's get_act_name: act_name("z", 3) = "blocks.3.attn.hook_z",
    act_name("resid_pre", 3), act_name("pre", 3) (MLP), act_name("scale", 3, "ln1"),
    act_name("scale", norm="ln_final"), act_name("embed")."""
    if norm is not None:
        if kind not in NORM_KINDS:
            raise ValueError(f"a norm hook is one of {NORM_KINDS}, not {kind!r}")
        return f"{norm}.hook_{kind}" if layer is None else f"blocks.{layer}.{norm}.hook_{kind}"
    if kind in ("embed", "pos_embed"):
        return f"hook_{kind}"
    if layer is None:
        raise ValueError(f"act_name({kind!r}) needs a layer")
    if kind in ATTN_KINDS:
        return f"blocks.{layer}.attn.hook_{kind}"
    if kind in BLOCK_KINDS:
        return f"blocks.{layer}.hook_{kind}"
    if kind in MLP_KINDS:
        return f"blocks.{layer}.mlp.hook_{kind}"
    raise ValueError(f"unknown hook kind {kind!r}")


FINAL_SCALE = "ln_final.hook_scale"  # act_name("scale", norm="ln_final"): the rms (or std) the final norm divides by


@dataclass(frozen=True)
class HookSpec:
    """A hook name and, optionally, one head of it."""

    name: str
    head: int | None = None

    def __str__(self) -> str:
        return self.name if self.head is None else f"{self.name}[{self.head}]"

    @property
    def layer(self) -> int | None:
        return layer_of(self.name)

    @property
    def kind(self) -> str:
        """The part after 'hook_': z, q, resid_pre, pattern, ..."""
        return self.name.rsplit("hook_", 1)[-1]

    @property
    def is_layer_z(self) -> bool:
        """A whole layer's hook_z, heads concatenated: what head attribution and DFA split into heads."""
        return self.name.endswith("attn.hook_z") and self.head is None and self.layer is not None


def parse(spec: str) -> HookSpec:
    """'blocks.5.attn.hook_q[3]' -> HookSpec('blocks.5.attn.hook_q', 3)."""
    m = _SPEC.match(str(spec))
    if not m:
        raise ValueError(f"bad hook spec {spec!r}; expected e.g. 'blocks.5.attn.hook_z' or 'blocks.5.attn.hook_q[3]'")
    return HookSpec(m["name"], None if m["head"] is None else int(m["head"]))


def layer_of(name: str | None) -> int | None:
    """The block index in a hook name, None for hooks outside the blocks (hook_embed, ln_final...)."""
    m = _LAYER.match(name or "")
    return int(m[1]) if m else None


def width(cfg, spec: str | HookSpec) -> int:
    """The width of one row of `spec` once flattened (heads concatenated, or one head's vector).
    `cfg` is a ModelConfig. Does not check that the name exists (Transformer.check_hook_name does)."""
    s = spec if isinstance(spec, HookSpec) else parse(spec)
    check_head(cfg, s)
    if s.kind in QUERY_HEAD_KINDS and s.name.endswith(f"attn.hook_{s.kind}"):
        return cfg.d_head if s.head is not None else cfg.d_attn
    if s.kind in KV_HEAD_KINDS and s.name.endswith(f"attn.hook_{s.kind}"):
        return cfg.d_head if s.head is not None else cfg.n_kv_heads * cfg.d_head
    if s.head is not None:
        raise ValueError(f"{s.name} has no head dimension; drop the [{s.head}]")
    return cfg.d_model


def check_head(cfg, spec: HookSpec) -> None:
    """Refuse a head index the hook does not have, naming the fix: hook_k / hook_v / hook_rot_k are indexed by
    key/value head (grouped-query attention shares one among n_heads / n_kv_heads query heads)."""
    if spec.head is None or not spec.name.endswith(f"attn.hook_{spec.kind}"):
        return
    if spec.kind in KV_HEAD_KINDS and spec.head >= cfg.n_kv_heads:
        group = cfg.n_heads // cfg.n_kv_heads
        fix = (f"; query head {spec.head} reads key/value head {spec.head // group}: write {spec.name}[{spec.head // group}]"
               if spec.head < cfg.n_heads else "")
        raise ValueError(f"{spec}: {cfg.name} has {cfg.n_kv_heads} key/value heads, each shared by {group} query "
                         f"heads{fix}")
    if spec.kind in QUERY_HEAD_KINDS and spec.head >= cfg.n_heads:
        raise ValueError(f"{spec}: {cfg.name} has {cfg.n_heads} query heads (0..{cfg.n_heads - 1})")


def parse_heads(specs, cfg) -> list[tuple[int, int]]:
    """['L.H', ...] -> [(layer, head)], checked against a ModelConfig (or a model: its .cfg)."""
    cfg = getattr(cfg, "cfg", cfg)
    out = []
    for spec in specs:
        try:
            layer, head = map(int, str(spec).split("."))
        except ValueError:
            raise ValueError(f"head {spec!r}: write LAYER.HEAD, e.g. 8.6") from None
        shape = f"{cfg.name} has {cfg.n_layers} layers x {cfg.n_heads} heads"
        if not 0 <= layer < cfg.n_layers:
            raise ValueError(f"head {spec}: {shape}")
        if not 0 <= head < cfg.n_heads:
            raise ValueError(f"head {spec}: layer {layer} has {cfg.n_heads} heads ({shape})")
        out.append((layer, head))
    return out


def head_name(layer: int, head: int) -> str:
    """(18, 6) -> '18.6', the LAYER.HEAD form parse_heads reads."""
    return f"{layer}.{head}"
