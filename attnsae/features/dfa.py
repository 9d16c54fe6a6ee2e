"""One feature's variance explained by each head and by source tokens (DFA), with tokens named by their text.

attribution.variance_explained works on token ids; this reads the source tokens a person names (each
must be one token of the model's tokenizer) and reports token ids with their text beside them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..attribution.variance import variance_explained
from ..models.text import TokenText, single_token
from ..results import Result


@dataclass
class VarianceShares(Result):
    name: ClassVar[str] = "dfa"
    feature: int
    layer: int
    n_heads: int
    thresholds: list[dict]  # per threshold: n_tokens, head_fve, source_token_fve [[text, id, share]], chosen_tokens_fve
    source_tokens: list[str]

    def summary(self) -> str:
        lines = []
        for t in self.thresholds:
            heads = ", ".join(f"H{h} {v:.0%}" for h, v in sorted(enumerate(t["head_fve"]), key=lambda x: -x[1])[:3])
            srcs = ", ".join(f"{s!r} {v:.0%}" for s, _, v in t["source_token_fve"][:3])
            chosen = f"; chosen tokens {t['chosen_tokens_fve']:.1%}" if t["chosen_tokens_fve"] is not None else ""
            lines.append(f"act > {t['threshold']:g} ({t['n_tokens']} tokens): heads {heads}; source tokens {srcs}{chosen}")
        return "\n".join(lines)

    def plot(self, out: Path) -> list[Path]:
        from ..evals.plots import head_variance_explained

        path = Path(out) / "head_fve.png"
        head_variance_explained({"feature": self.feature, "layer": self.layer, "n_heads": self.n_heads,
                                 "thresholds": self.thresholds}, path)
        return [path]


def single_token_ids(tokenizer, texts: list[str]) -> list[int]:
    """The id of each text, which must be exactly one token."""
    ids = [single_token(tokenizer, s) for s in texts]
    for s, i in zip(texts, ids):
        if i is None:
            n = len(tokenizer.encode(s, add_special_tokens=False))
            raise ValueError(f"--source-token {s!r} is {n} tokens in this tokenizer; give single tokens")
    return ids


def variance_shares(model, sae, feature: int, windows, thresholds=(0.0,), source_tokens: list[str] = (),
                    progress: bool = True) -> VarianceShares:
    """variance_explained over `windows`, pooling the named source tokens."""
    r = variance_explained(model, sae, feature, windows, thresholds=thresholds,
                           source_tokens=single_token_ids(model.tokenizer, source_tokens), progress=progress)
    text = TokenText(model.tokenizer)
    for t in r["thresholds"]:
        t["source_token_fve"] = [[text([i])[0], i, s] for i, s in t["source_token_fve"]]
    return VarianceShares(**r, source_tokens=list(source_tokens))
