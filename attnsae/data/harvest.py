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

from .. import distributed
from ..lock import hold
from ..models import hooks
from .store import MANIFEST, StoreError, StoreWriter, merge_parts, part_manifests, read_manifest, windows_digest
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
    if distributed.world() > 1:
        return _harvest_ranks(model, windows, root, hooks, meta, widths, dtype, batch_size, windows_per_shard, progress)
    with hold(root, "harvest"):  # two harvests into one store would interleave shards
        if part_manifests(root):
            raise StoreError(f"{root} holds a harvest started under torchrun ({part_manifests(root)[0].name}); resume it "
                             "with torchrun and as many ranks, or use a new folder")
        writer = StoreWriter(root, meta, widths, dtype)  # refuses another harvest's store
        _save_windows(root, windows, meta)
        if not (writer.manifest["complete"] and writer.start_window == len(windows)):
            _fill(model, windows, writer, len(windows), hooks, batch_size, windows_per_shard, dtype, progress)
            writer.finish()
        return _open(root, windows, meta)


def _harvest_ranks(model, windows, root: Path, hooks, meta, widths, dtype, batch_size, windows_per_shard, progress):
    """Each rank harvests its contiguous share of the windows as a part of the store; rank 0 merges the parts."""
    r, w = distributed.rank(), distributed.world()
    distributed.check_shared(root)
    with hold(root, "harvest", lock=".lock" if r == 0 else f".lock.rank{r}"):
        merged = (root / MANIFEST).exists()
        if merged and read_manifest(root)["complete"]:  # finished (perhaps killed before removing its parts)
            stale = [m for m in part_manifests(root) if m.name.endswith(f"of{w}.json")]
        else:
            stale = [m for m in part_manifests(root) if not m.name.endswith(f"of{w}.json")]
            distributed.agree(not merged, f"{root} holds a harvest started by one process; resume it without torchrun, or "
                                          "use a new folder")
            distributed.agree(not stale, f"{root} holds a harvest started with another number of ranks "
                                         f"({stale[0].name if stale else ''}); resume it with as many, or use a new folder")
            start, end = distributed.span(len(windows))
            writer = StoreWriter(root, meta, widths, dtype, part=(r, w, start, end))
            if r == 0:
                _save_windows(root, windows, meta)
            _fill(model, windows, writer, end, hooks, batch_size, windows_per_shard, dtype, progress and r == 0)
            writer.finish()
            distributed.barrier()  # every part is complete
            if r == 0:
                merge_parts(root, w)
            stale = []
        distributed.barrier()
        if r == 0:
            for m in stale:
                m.unlink(missing_ok=True)
        return _open(root, windows, meta, verify=r == 0)


def _save_windows(root: Path, windows: np.ndarray, meta: dict) -> None:
    """The windows this harvest's rows come from (its meta matched), beside its shards."""
    if not (root / "windows.npy").exists() or windows_digest(np.load(root / "windows.npy")) != meta["windows_sha"]:
        np.save(root / "windows.npy.tmp.npy", windows)
        (root / "windows.npy.tmp.npy").replace(root / "windows.npy")


def _fill(model, windows, writer: StoreWriter, end: int, hooks, batch_size, windows_per_shard, dtype, progress):
    """Harvest windows[writer.start_window:end] into shards of `writer`."""
    first_pos, start = writer.manifest["meta"]["first_pos"], writer.start_window
    label = hooks[0] if len(hooks) == 1 else f"{len(hooks)} hooks"  # 30 hook names would fill the terminal
    first = writer.part[2] if writer.part else 0
    bar = tqdm(total=end - first, initial=start - first, desc=f"harvest {label}", unit="win", disable=not progress)
    with torch.inference_mode():
        for s in range(start, end, windows_per_shard):
            e = min(s + windows_per_shard, end)
            parts: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
            for tokens in token_batches(windows[s:e], batch_size):
                for h, x in collect(model, tokens, hooks, first_pos).items():
                    parts[h].append(x.float() if dtype == "float32" else x)
                bar.update(len(tokens))
            writer.add_shard((s, e), {h: torch.cat(v) for h, v in parts.items()})
    bar.close()


def _open(root: Path, windows: np.ndarray, meta: dict, verify: bool = True):
    from .store import ActivationStore

    store = ActivationStore(root, verify=verify)
    expected = len(windows) * (windows.shape[1] - meta["first_pos"])
    if len(store) != expected:
        raise StoreError(f"store has {len(store)} rows, expected {expected}")
    return store
