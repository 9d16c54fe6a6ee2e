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


def single_token(tokenizer, text: str) -> int | None:
    """The id of `text` if the tokenizer makes exactly one token of it (no special tokens added), else None."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None
