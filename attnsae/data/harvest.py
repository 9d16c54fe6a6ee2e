"""Run the model over token windows and stream chosen hook activations into a store.

All requested hooks come from ONE forward pass per batch, which stops right after the last
of them. Hook specs are TransformerLens names, optionally with a head index for per-head
vectors: "blocks.5.attn.hook_z" (flattened over heads), "blocks.5.attn.hook_q[3]".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..lock import hold
from ..models import hooks
from .store import StoreError, StoreWriter, windows_digest
from .windows import token_batches


def hook_width(model, spec: str) -> int:
    """Width of one harvested row of `spec`, after checking the hook exists in this model."""
    model.check_hook_name(hooks.parse(spec).name)
    return hooks.width(model.cfg, spec)


def flatten_hook(x: torch.Tensor, head: int | None) -> torch.Tensor:
    """[b, p, (heads, d_head) | d] -> [b, p, d_in]: one head's vector, or heads concatenated."""
    if head is not None:
        if head >= x.shape[2]:
            raise ValueError(f"head {head} out of range: this hook has {x.shape[2]} heads")
        return x[:, :, head]
    return x.flatten(2) if x.dim() == 4 else x


def collect(model, tokens: torch.Tensor, specs: list[str], first_pos: int = 0) -> dict[str, torch.Tensor]:
    """{spec: [b * (p - first_pos), d]} from one forward pass that stops after the last hook."""
    parsed = {s: hooks.parse(s) for s in specs}
    _, cache = model.run_with_cache(tokens, {h.name for h in parsed.values()}, stop_early=True)
    return {s: flatten_hook(cache[h.name], h.head)[:, first_pos:].flatten(0, 1) for s, h in parsed.items()}


def harvest(
    model,
    windows: np.ndarray,
    root,
    hooks: list[str],
    dtype: str = "bfloat16",
    batch_size: int = 32,
    windows_per_shard: int = 1024,
    skip_bos: bool = True,
    extra_meta: dict | None = None,
    progress: bool = True,
):
    """Harvest `hooks` over `windows` into the store at `root`; resumes a killed harvest.

    Rows are (window, position) in order, positions 1.. when `skip_bos` (the BOS position's z is the
    same constant in every window and would only waste a feature)."""
    root = Path(root)
    widths = {h: hook_width(model, h) for h in hooks}
    meta = {
        "model": model.cfg.name,
        "processing": model.processing.to_dict(),
        "compute_dtype": str(model.dtype).replace("torch.", ""),
        "context_size": int(windows.shape[1]),
        "first_pos": 1 if skip_bos else 0,
        "windows_sha": windows_digest(windows),
        "n_windows": int(len(windows)),
        **(extra_meta or {}),
    }
    with hold(root, "harvest"):  # two harvests into one store would interleave shards
        return _fill(model, windows, root, hooks, meta, widths, dtype, batch_size, windows_per_shard, progress)


def _fill(model, windows, root: Path, hooks, meta, widths, dtype, batch_size, windows_per_shard, progress):
    from .store import ActivationStore

    writer = StoreWriter(root, meta, widths, dtype)  # refuses another harvest's store
    if not (root / "windows.npy").exists() or windows_digest(np.load(root / "windows.npy")) != meta["windows_sha"]:
        np.save(root / "windows.npy.tmp.npy", windows)  # the windows this harvest's rows come from (its meta matched)
        (root / "windows.npy.tmp.npy").replace(root / "windows.npy")
    start = writer.start_window
    if start == len(windows) and writer.manifest["complete"]:
        return ActivationStore(root)
    first_pos = meta["first_pos"]
    label = hooks[0] if len(hooks) == 1 else f"{len(hooks)} hooks"  # 30 hook names would fill the terminal
    bar = tqdm(total=len(windows), initial=start, desc=f"harvest {label}", unit="win", disable=not progress)
    with torch.inference_mode():
        for s in range(start, len(windows), windows_per_shard):
            e = min(s + windows_per_shard, len(windows))
            parts: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
            for tokens in token_batches(windows[s:e], batch_size):
                for h, x in collect(model, tokens, hooks, first_pos).items():
                    parts[h].append(x.float() if dtype == "float32" else x)
                bar.update(len(tokens))
            writer.add_shard((s, e), {h: torch.cat(v) for h, v in parts.items()})
    bar.close()
    writer.finish()
    store = ActivationStore(root)
    if len(store) != len(windows) * (windows.shape[1] - first_pos):
        raise StoreError(f"store has {len(store)} rows, expected {len(windows) * (windows.shape[1] - first_pos)}")
    return store
