"""Token ids as text for people: pages, tables and example snippets."""

from __future__ import annotations

import numpy as np


class TokenText:
    """Token id -> display string, decoded one token at a time (cached)."""

    def __init__(self, tokenizer):
        self.tok, self.cache = tokenizer, {}

    def __call__(self, ids) -> list[str]:
        out = []
        for i in np.asarray(ids).tolist():
            if i not in self.cache:
                self.cache[i] = self.tok.decode([i]) if self.tok is not None else f"<{i}>"
            out.append(self.cache[i])
        return out
