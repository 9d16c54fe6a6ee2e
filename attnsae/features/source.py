"""Where an SAE's input activations come from: a forward over token windows, or an activation store.

An `ActivationSource` is a set of token windows and the way to get an SAE's hook at their positions.
Row i of `windows` is window i for everything built on it (statistics, dashboards, experiments).
With a store, rows are read instead of running the model, and row i of `windows` is the store's
window index[i]. Positions before the SAE's first_pos (BOS) are never read by the SAE and get 0.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from ..attribution.heads import require_hook_z

STORE_ROWS_PER_READ = 65536


def encode_features(sae, x: torch.Tensor, features) -> torch.Tensor:
    """f(x) restricted to `features`: [..., F] (float32, no autograd)."""
    with torch.no_grad():
        return sae.encode_features(x.float(), features).float()


class ActivationSource:
    """Token windows and their activations: `model` runs the windows when there is no store (and is the
    model for everything else: n_heads, tokenizer); `store` is read instead when given, its window
    index[i] being row i of `windows` (default i)."""

    def __init__(self, model, windows: np.ndarray, store=None, index=None):
        self.model, self.windows, self.store = model, np.asarray(windows), store
        self.index = np.arange(len(self.windows)) if index is None else np.asarray(index, dtype=np.int64)
        if store is not None and store.meta["context_size"] != self.windows.shape[1]:
            raise ValueError(f"the store's windows are {store.meta['context_size']} tokens, these are {self.windows.shape[1]}")

    @classmethod
    def from_store(cls, model, store, index=None) -> ActivationSource:
        """The store's windows index (default: every window whose rows are all stored), read from the store."""
        index = np.arange(store.n_windows) if index is None else np.asarray(index, dtype=np.int64)
        return cls(model, np.asarray(store.windows()[index]), store, index)

    def __len__(self) -> int:
        return len(self.windows)

    def check(self, sae) -> None:
        """Refuse an SAE whose input this source cannot give."""
        require_hook_z(sae)
        if self.store is None:
            if self.model is None:
                raise ValueError("an activation source needs a model or a store")
            return
        hook, meta = sae.cfg.hook_name, self.store.meta
        if sae.cfg.model_name and meta.get("model") and meta["model"] != sae.cfg.model_name:
            raise ValueError(f"the store holds {meta['model']}'s activations, the SAE was trained on {sae.cfg.model_name}")
        if hook not in self.store.hooks:
            raise ValueError(f"the store holds {self.store.hooks}, not the SAE's hook {hook}")
        if self.store.first_pos > sae.cfg.first_pos:
            raise ValueError(f"the store skips positions < {self.store.first_pos} but the SAE reads from position "
                             f"{sae.cfg.first_pos}")

    def _run(self, tokens: np.ndarray, hooks: list[str]) -> dict[str, torch.Tensor]:
        """One forward that stops after the last of `hooks`."""
        t = torch.from_numpy(np.asarray(tokens, dtype=np.int64)).to(self.model.device)
        _, cache = self.model.run_with_cache(t, hooks, stop_early=True)
        return {h: cache[h].cpu() for h in hooks}

    def whole_windows(self, saes, batch_size: int = 32) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """(window ids [b], {hook: [b, ctx, ...]}) over consecutive batches of every window, all SAEs' hooks at once."""
        for sae in saes:
            self.check(sae)
        hooks = list(dict.fromkeys(sae.cfg.hook_name for sae in saes))
        for w0 in range(0, len(self), batch_size):
            ids = np.arange(w0, min(w0 + batch_size, len(self)))
            if self.store is None:
                yield torch.from_numpy(ids), self._run(self.windows[ids], hooks)
                continue
            z = {}
            for hook in hooks:
                rows = self.store.window_rows(self.index[ids], hook).float()
                # positions the store skips are before the SAE's first_pos (checked): zeros it never reads
                z[hook] = torch.cat([torch.zeros(len(ids), self.store.first_pos, rows.shape[-1]), rows], 1)
            yield torch.from_numpy(ids), z

    @torch.no_grad()
    def at(self, sae, features, w, p, batch_size: int = 16, progress: bool = False) -> torch.Tensor:
        """Activations [n, F] of `features` at the n query points (window w[j], position p[j]).

        From the store only the queried rows are read. From the model: a forward over each batch of
        queried windows, cut after the batch's last queried position (attention is causal, so earlier
        positions do not change)."""
        self.check(sae)
        w, p = np.asarray(w, dtype=np.int64), np.asarray(p, dtype=np.int64)
        out = torch.zeros(len(w), len(features))
        ok = np.flatnonzero(p >= sae.cfg.first_pos)
        if self.store is not None:
            rows = self.store.row(self.index[w[ok]], p[ok])
            for i in tqdm(range(0, len(ok), STORE_ROWS_PER_READ), desc="encoding (store)", disable=not progress):
                j = slice(i, i + STORE_ROWS_PER_READ)
                out[ok[j]] = encode_features(sae, self.store.rows(rows[j], sae.cfg.hook_name), features)
            return out
        order = ok[np.lexsort((p[ok], w[ok]))]
        wins, starts = np.unique(w[order], return_index=True)
        bounds = np.append(starts, len(order))
        end = {int(win): int(p[order[bounds[k + 1] - 1]]) + 1 for k, win in enumerate(wins)}  # last query + 1
        span = {int(win): order[bounds[k]:bounds[k + 1]] for k, win in enumerate(wins)}
        by_end = sorted(end, key=end.get)  # similar lengths batch together
        hook = sae.cfg.hook_name
        for b in tqdm(range(0, len(by_end), batch_size), desc="encoding (model)", disable=not progress):
            ws = by_end[b:b + batch_size]
            z = self._run(self.windows[ws, :max(end[x] for x in ws)], [hook])[hook]
            acts = encode_features(sae, z.flatten(2), features)
            for k, x in enumerate(ws):
                j = span[x]
                out[j] = acts[k, p[j]]
        return out
