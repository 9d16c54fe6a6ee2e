"""Training straight from the model, without a store: a shuffled in-memory buffer of activations.

Steps are grouped into chunks; chunk c is a fixed set of windows (a seeded permutation), run
through the model once for every hook (one forward that stops after the last hook), shuffled with
a seed of its own and cut into batches. Batch number s is therefore a pure function of (seed, s),
so a resumed run sees exactly the batches it would have seen, at the cost of re-harvesting the
chunk it stopped in.

The buffer is the last chunks read, at least 3 and enough for CACHE_ROWS rows, kept in the model's dtype
on its device: so the SAEs trained side by side, each reading the first rows to initialise (or a resample
reading ahead), share one forward instead of repeating it. `buffer_bytes` says what it costs.

Under torchrun (`layout`), each rank runs the model on its contiguous share of a chunk's windows and the
activations are exchanged (all-to-all): every rank receives, from every rank, the rows of the hooks whose SAEs
it trains (all of them in the data layout, its own in the modules layout), so its chunk is the one a single
process would build. Every rank must therefore build the same chunks in the same order: they are built in
increasing order, each once (a resample reads ahead at the same step on every rank, and the buffer keeps the
chunk in use until then).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator

import numpy as np
import torch

from .. import distributed
from .harvest import collect, hook_width

# Rows the buffer keeps at least: a trainer's initialisation sample (sae.trainer.INIT_ROWS) and an L1
# resample's scored inputs (TrainConfig.resample_inputs, 65,536 by default).
CACHE_ROWS = 65536


class StreamedActivations:
    def __init__(self, model, windows: np.ndarray, hooks: str | list[str], chunk_windows: int = 256, first_pos: int = 1,
                 batch_size_model: int = 32, layout: distributed.Layout | None = None):
        self.model, self.windows = model, windows
        self.hooks = [hooks] if isinstance(hooks, str) else list(hooks)
        self.widths = {h: hook_width(model, h) for h in self.hooks}
        self.chunk_windows = min(chunk_windows, len(windows))
        self.first_pos, self.batch_size_model = first_pos, batch_size_model
        self.layout = layout if layout and layout.world > 1 else None
        self.kept = self.layout.owned() if self.layout else self.hooks  # the hooks this rank keeps
        # the chunk in use and the ones a read of CACHE_ROWS from inside it spans
        self.cache_chunks = max(3, math.ceil(CACHE_ROWS / self.rows_per_chunk) + 1)
        self._cache: OrderedDict[tuple[int, int], dict[str, torch.Tensor]] = OrderedDict()

    def meta(self, corpus: str) -> dict:
        """What a store's meta would say about these activations (the SAE config records it)."""
        m = self.model
        return {"model": m.cfg.name, "processing": m.processing.to_dict(), "context_size": self.windows.shape[1],
                "first_pos": self.first_pos, "corpus": corpus}

    @property
    def rows_per_chunk(self) -> int:
        return self.chunk_windows * (self.windows.shape[1] - self.first_pos)

    def buffer_bytes(self) -> int:
        """The most memory the buffer holds: its chunks of every hook, plus the one being built."""
        item = torch.finfo(self.model.dtype).bits // 8
        return (self.cache_chunks + 1) * self.rows_per_chunk * sum(self.widths[h] for h in self.kept) * item

    def _chunk(self, seed: int, c: int) -> dict[str, torch.Tensor]:
        if (seed, c) in self._cache:
            self._cache.move_to_end((seed, c))
            return self._cache[(seed, c)]
        n_chunks = len(self.windows) // self.chunk_windows
        epoch, i = divmod(c, n_chunks)
        order = np.random.default_rng([seed, epoch]).permutation(len(self.windows))
        idx = np.sort(order[i * self.chunk_windows:(i + 1) * self.chunk_windows])
        parts = self._forward(idx) if self.layout is None else self._exchange(idx)
        perm = np.random.default_rng([seed, c, 1]).permutation(self.rows_per_chunk)
        chunk = {h: x[torch.from_numpy(perm).to(x.device)] for h, x in parts.items()}
        self._cache[(seed, c)] = chunk
        while len(self._cache) > self.cache_chunks:
            self._cache.popitem(last=False)
        return chunk

    def _forward(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """{hook: [len(idx) * rows per window, d]} of windows `idx`, in order, from forwards of batch_size_model."""
        parts = {h: [] for h in self.hooks}
        with torch.inference_mode():
            for b in range(0, len(idx), self.batch_size_model):
                tokens = torch.from_numpy(np.asarray(self.windows[idx[b:b + self.batch_size_model]], dtype=np.int64))
                for h, a in collect(self.model, tokens, self.hooks, self.first_pos).items():
                    parts[h].append(a)
        return {h: torch.cat(a) if a else torch.zeros(0, self.widths[h], dtype=self.model.dtype, device=self.model.device)
                for h, a in parts.items()}

    def _exchange(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """`_forward(idx)` of the hooks this rank keeps, each rank running the model on its share of the windows."""
        lay, per_window = self.layout, self.windows.shape[1] - self.first_pos
        spans = [distributed.span(len(idx), r, lay.world) for r in range(lay.world)]
        mine = self._forward(idx[slice(*spans[lay.rank])])
        send = [torch.cat([mine[h] for h in lay.owned(r)], dim=1) for r in range(lay.world)]
        width = sum(self.widths[h] for h in self.kept)
        got = torch.cat(distributed.all_to_all(send, [((e - s) * per_window, width) for s, e in spans]))
        return dict(zip(self.kept, got.split([self.widths[h] for h in self.kept], dim=1)))

    def multi_batches(self, batch_size: int, seed: int = 0, hooks: list[str] | None = None,
                      start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """{hook: [batch_size, d] float32} for `hooks` (default all this rank keeps), batch number `start` onward,
        forever."""
        hooks = hooks or self.kept
        per_chunk = self.rows_per_chunk // batch_size
        if per_chunk == 0:
            raise ValueError(f"a chunk of {self.chunk_windows} windows holds {self.rows_per_chunk} rows, "
                             f"fewer than a batch of {batch_size}")
        c, i = divmod(start, per_chunk)
        while True:
            chunk = self._chunk(seed, c)
            while i < per_chunk:
                yield {h: chunk[h][i * batch_size:(i + 1) * batch_size].float() for h in hooks}
                i += 1
            c, i = c + 1, 0

    def batches(self, batch_size: int, seed: int = 0, hook: str | None = None, start: int = 0) -> Iterator[torch.Tensor]:
        """[batch_size, d] batches of one hook (default the first), as `multi_batches`."""
        hook = hook or self.kept[0]
        return (b[hook] for b in self.multi_batches(batch_size, seed, [hook], start))
