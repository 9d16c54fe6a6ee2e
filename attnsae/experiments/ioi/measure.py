"""What every IOI part measures: the model's logits at END and the logit difference there,

    logit diff = logit(IO) - logit(S) at END,

with its means overall, per order and per template. The final norm and unembedding run at END
only (Transformer.forward_from(..., at=end)): a big batch's full logits would not fit in memory.
"""

from __future__ import annotations

import torch

from ...models.hooks import act_name
from .prompts import IOIBatch, IOIVocab


@torch.no_grad()
def run_end(model, tokens, end, hooks=(), cache=()):
    """(logits at each row's `end` position [n, vocab] float32, cache) of a full forward with `hooks`.
    FINAL_SCALE in `cache` is the final norm's scale at `end` ([n, 1])."""
    resid = act_name("resid_pre", 0)
    _, got = model.run_with_cache(tokens, [resid], stop_early=True)
    return model.forward_from(0, got[resid], list(hooks), cache, at=end)


def rows_forward(model, start: int, resid: torch.Tensor, end: torch.Tensor, make_hooks, chunk: int = 256) -> torch.Tensor:
    """Logits at `end` for many rows that share a prefix computation, in chunks: row r starts from
    resid[r] (blocks.{start}.hook_resid_pre) with the hooks make_hooks(rows) returns for the rows
    of a chunk (an index tensor). Rows are trimmed to the chunk's longest end + 1 (causal)."""
    out = []
    for a in range(0, len(end), chunk):
        rows = torch.arange(a, min(a + chunk, len(end)))
        L = int(end[rows].max()) + 1
        logits, _ = model.forward_from(start, resid[rows, :L], make_hooks(rows), at=end[rows])
        out.append(logits)
    return torch.cat(out) if out else torch.zeros(0, model.cfg.d_vocab)


def capture_at(store: dict, key, pos, dim: int = 1):
    """A hook fn that keeps x at each row's position `pos` along `dim` (1: [b, p, ...]; 2: pattern [b, h, dest, src],
    the destination), as float32, and leaves x unchanged."""
    ar = torch.arange(len(pos))

    def fn(x, name):
        store[key] = (x[ar, pos] if dim == 1 else x[ar, :, pos]).detach().float()
    return fn


def logit_diff(logits_end: torch.Tensor, batch: IOIBatch, prompt_of: torch.Tensor | None = None) -> torch.Tensor:
    """[n]: logit(IO) - logit(S) at END, from run_end's logits; with prompt_of, row r of the logits belongs
    to prompt prompt_of[r] (batched interventions)."""
    rows = torch.arange(len(batch)) if prompt_of is None else prompt_of
    ar = torch.arange(len(rows))
    return (logits_end[ar, batch.io_id[rows]] - logits_end[ar, batch.s_id[rows]]).float()


def clean_logit_diff(model, batch: IOIBatch) -> torch.Tensor:
    logits, _ = run_end(model, batch.tokens, batch.end)
    return logit_diff(logits, batch)


def summarize(values: torch.Tensor, batch: IOIBatch, vocab: IOIVocab | None = None) -> dict:
    """Mean of a per-prompt number overall, per order (ABBA/BABA) and per template."""
    v = values.float()
    out = {"mean": float(v.mean())}
    for o in sorted(set(batch.order)):
        out[o] = float(v[batch.mask(o)].mean())
    by_t = {}
    for t in sorted(set(batch.template.tolist())):
        key = vocab.templates[t] if vocab is not None else str(t)
        by_t[key] = float(v[batch.template == t].mean())
    out["by_template"] = by_t
    return out
