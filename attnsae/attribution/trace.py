"""One prompt through the SAEs: every attention-SAE feature's activation at every position (the top ones per
position and layer), and the recursive DFA tree of a chosen feature (attribution.rdfa), as a Result: what the
`trace` command writes and the explorer's API serves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..models.text import TokenText
from ..results import Result
from .rdfa import PromptTrace, rdfa_tree


def top_by_position(trace: PromptTrace, k: int = 5) -> dict[int, list[list[tuple[int, float]]]]:
    """{layer: [per position: [(feature, activation)] of its k most active features]}."""
    return {l: [trace.top_features(l, p, k) for p in range(len(trace))] for l in sorted(trace.attn_saes)}


@dataclass
class Trace(Result):
    name: ClassVar[str] = "trace"
    model: str
    prompt: str
    tokens: list[str]
    layers: list[int]  # layers with an attention SAE
    resid_layers: list[int]  # layers with a residual-stream SAE
    top: dict  # {layer: [per position: [(feature, activation)]]}
    tree: dict | None = None  # rdfa_tree of the chosen feature

    def summary(self) -> str:
        lines = [f"{self.model}: {len(self.tokens)} tokens, attention SAEs at layers {self.layers}"]
        for l in self.layers:
            strongest = max(((p, f, a) for p, fs in enumerate(self.top[l]) for f, a in fs[:1]), key=lambda t: t[2],
                            default=None)
            if strongest:
                p, f, a = strongest
                lines.append(f"  L{l}: strongest L{l}.F{f} = {a:.3g} at {p} {self.tokens[p]!r}")
        if self.tree:
            lines.append("RDFA (values in units of the parent's pre-activation):")
            lines += _tree_lines(self.tree, self.tokens, "  ")
        return "\n".join(lines)


def _tree_lines(node: dict, tokens: list[str], indent: str) -> list[str]:
    lines = [f"{indent}L{node['layer']}.F{node['feature']} at {node['dest']} {tokens[node['dest']]!r}: pre {node['pre']:+.4g} "
             f"(bias {node['bias']:+.3g})"]
    for s in node["sources"]:
        comps = sorted(s["parts"]["components"].items(), key=lambda kv: -abs(kv[1]))[:3]
        lines.append(f"{indent}  <- source {s['src']} {tokens[s['src']]!r}: {s['value']:+.4g}  [" +
                     ", ".join(f"{k} {v:+.3g}" for k, v in comps) + "]")
        for child in s["children"]:
            lines.append(f"{indent}     via L{child['layer']}.F{child['feature']}: {child['value']:+.4g}")
            lines += _tree_lines(child, tokens, indent + "       ")
    return lines


def trace_prompt(model, attn_saes: dict, tokens, prompt: str, resid_saes: dict | None = None, k: int = 5,
                 feature: tuple[int, int, int] | None = None, depth: int = 2, n_sources: int = 3,
                 n_features: int = 3) -> Trace:
    """The Trace of `tokens` (the prompt after BOS); with `feature` = (layer, feature, position), its RDFA tree."""
    trace = PromptTrace(model, tokens, attn_saes, resid_saes)
    tree = None
    if feature is not None:
        layer, f, pos = feature
        trace.check(layer, f, pos)
        tree = rdfa_tree(trace, layer, f, pos, depth, n_sources, n_features)
    return Trace(model=model.cfg.name, prompt=prompt, tokens=TokenText(model.tokenizer)(trace.tokens),
                 layers=sorted(trace.attn_saes), resid_layers=sorted(trace.resid_saes), top=top_by_position(trace, k),
                 tree=tree)
