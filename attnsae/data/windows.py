"""Documents -> fixed-length token windows with BOS at position 0, and a held-out split.

The documents are tokenized, joined with BOS between them, and cut into windows of
`ctx - 1` tokens, each prefixed with BOS (as the paper's and SAELens' pipelines do).
The split is a fixed random subset of windows (by seed), so training never sees held-out text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm


@dataclass
class WindowSpec:
    corpus: str = "default"
    ctx: int = 128
    prepend_bos: bool = True
    heldout_frac: float = 0.05
    seed: int = 0
    max_tokens: int | None = None  # stop tokenizing after this many tokens

    def to_dict(self):
        return asdict(self)


# With max_tokens, a long document is tokenized in pieces of about this many characters (cut at a space), so
# tokenizing stops near the limit: a fast tokenizer holds ~125 bytes per character of its input at once.
PIECE_CHARS = 1 << 20


def _pieces(doc: str, size: int):
    start = 0
    while start < len(doc):
        end = min(len(doc), start + size)
        if end < len(doc):
            cut = doc.rfind(" ", start + size // 2, end)
            end = cut if cut > start else end
        yield doc[start:end]
        start = end


def make_windows(docs: Iterable[str], tokenizer, spec: WindowSpec, bos_id: int) -> np.ndarray:
    """[n_windows, ctx] int32 token ids. Without max_tokens every document is tokenized whole; with it, long ones
    are tokenized piece by piece and tokenizing stops at the limit."""
    body = spec.ctx - 1 if spec.prepend_bos else spec.ctx
    stream: list[int] = []
    limit = spec.max_tokens or float("inf")
    for doc in tqdm(docs, desc="tokenizing", unit="doc", leave=False):
        for piece in _pieces(doc, PIECE_CHARS) if spec.max_tokens else (doc,):
            stream.extend(tokenizer(piece, add_special_tokens=False).input_ids)
            if len(stream) >= limit:
                break
        stream.append(bos_id)
        if len(stream) >= limit:
            break
    n = len(stream) // body
    if spec.max_tokens:
        n = min(n, max(1, spec.max_tokens // spec.ctx))
    if n == 0:
        raise ValueError(f"the corpus has {len(stream)} tokens, fewer than one window of {spec.ctx}")
    tokens = np.asarray(stream[: n * body], dtype=np.int32).reshape(n, body)
    if spec.prepend_bos:
        tokens = np.concatenate([np.full((n, 1), bos_id, dtype=np.int32), tokens], axis=1)
    return tokens


def token_batches(windows: np.ndarray, batch_size: int):
    """Consecutive [b, ctx] int64 token tensors over `windows`."""
    import torch

    for b in range(0, len(windows), batch_size):
        yield torch.from_numpy(np.asarray(windows[b:b + batch_size], dtype=np.int64))


def split_windows(windows: np.ndarray, heldout_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, heldout), a fixed random subset of windows held out."""
    heldout = np.random.default_rng(seed).random(len(windows)) < heldout_frac
    return windows[~heldout], windows[heldout]


def load_windows(model, spec: WindowSpec) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize `spec.corpus` with the model's tokenizer; returns (train, heldout) windows."""
    from .corpus import iter_documents

    windows = make_windows(iter_documents(spec.corpus), model.tokenizer, spec, bos_id(model))
    return split_windows(windows, spec.heldout_frac, spec.seed)


def bos_id(model) -> int:
    """The token every window starts with: the model's BOS (its tokenizer's, else its EOS)."""
    if model.tokenizer is None:
        raise ValueError("this model has no tokenizer; pass token windows directly")
    bos = model.cfg.bos_token_id
    if bos is None:
        bos = model.tokenizer.bos_token_id if model.tokenizer.bos_token_id is not None else model.tokenizer.eos_token_id
    return bos


def prompt_tokens(model, text: str, max_tokens: int | None = None) -> torch.Tensor:
    """[n] token ids of `text` after BOS, as the windows SAEs are trained on start."""
    ids = [bos_id(model)] + model.tokenizer.encode(text, add_special_tokens=False)
    if len(ids) < 2:
        raise ValueError("the prompt is empty")
    if max_tokens is not None and len(ids) > max_tokens:
        raise ValueError(f"the prompt is {len(ids)} tokens (BOS included), more than the {max_tokens} allowed")
    return torch.tensor(ids)
