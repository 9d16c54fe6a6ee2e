"""Training straight from the model, without a store: activations harvested chunk by chunk.

Steps are grouped into chunks; chunk c is a fixed set of windows (a seeded permutation), run
through the model, shuffled with a seed of its own and cut into batches. Batch number s is
therefore a pure function of (seed, s), so a resumed run sees exactly the batches it would
have seen, at the cost of re-harvesting the chunk it stopped in.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .harvest import collect


class StreamedActivations:
    def __init__(self, model, windows: np.ndarray, hook: str, chunk_windows: int = 256, first_pos: int = 1,
                 batch_size_model: int = 32):
        self.model, self.windows, self.hook = model, windows, hook
        self.chunk_windows = min(chunk_windows, len(windows))
        self.first_pos, self.batch_size_model = first_pos, batch_size_model

    def meta(self, corpus: str) -> dict:
        """What a store's meta would say about these activations (the SAE config records it)."""
        m = self.model
        return {"model": m.cfg.name, "processing": m.processing.to_dict(), "context_size": self.windows.shape[1],
                "first_pos": self.first_pos, "corpus": corpus}

    def _chunk(self, seed: int, c: int) -> torch.Tensor:
        n_chunks = len(self.windows) // self.chunk_windows
        epoch, i = divmod(c, n_chunks)
        order = np.random.default_rng([seed, epoch]).permutation(len(self.windows))
        idx = np.sort(order[i * self.chunk_windows:(i + 1) * self.chunk_windows])
        acts = []
        with torch.inference_mode():
            for b in range(0, len(idx), self.batch_size_model):
                tokens = torch.from_numpy(np.asarray(self.windows[idx[b:b + self.batch_size_model]], dtype=np.int64))
                acts.append(collect(self.model, tokens, [self.hook], self.first_pos)[self.hook].float())
        x = torch.cat(acts)
        return x[torch.from_numpy(np.random.default_rng([seed, c, 1]).permutation(len(x)))]

    def batches(self, batch_size: int, seed: int = 0, start: int = 0) -> Iterator[torch.Tensor]:
        rows_per_chunk = self.chunk_windows * (self.windows.shape[1] - self.first_pos)
        per_chunk = rows_per_chunk // batch_size
        if per_chunk == 0:
            raise ValueError(f"a chunk of {self.chunk_windows} windows holds {rows_per_chunk} rows, "
                             f"fewer than a batch of {batch_size}")
        c, i = divmod(start, per_chunk)
        while True:
            x = self._chunk(seed, c)
            while i < per_chunk:
                yield x[i * batch_size:(i + 1) * batch_size]
                i += 1
            c, i = c + 1, 0
