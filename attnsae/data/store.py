"""On-disk activation store: sharded raw arrays, a manifest with checksums, shuffled reads.

Layout of a store folder:
    manifest.json            model, processing, hooks (shape, dtype), shards with sha256 per file
    windows.npy              the token windows harvested, in order (global row r holds window
                             r // per_window at position first_pos + r % per_window, see `positions`)
    {hook}/shard_00000.bin   raw little-endian rows [n_tokens, d] in the store dtype

Shards are written to a temporary name and renamed, and the manifest is rewritten atomically
after each shard, so a killed harvest loses at most the shard in flight and resumes after the
last complete one.

A harvest under torchrun writes each rank's contiguous share of the windows as a part: its shards
({hook}/rank{r}of{w}_shard_00000.bin) and its own manifest (manifest.rank{r}of{w}.json), resumed the same
way; `merge_parts` then joins the parts, in window order, into the one manifest a reader sees.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

# store dtype -> (torch dtype, numpy dtype of the raw bytes; numpy has no bfloat16, so its bits are stored as int16)
STORE_DTYPES = {"float32": (torch.float32, np.float32), "bfloat16": (torch.bfloat16, np.int16),
                "float16": (torch.float16, np.float16)}
MANIFEST = "manifest.json"


class StoreError(RuntimeError):
    pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_manifest(root: Path, name: str = MANIFEST) -> dict:
    path = Path(root) / name
    if not path.exists():
        raise StoreError(f"{root} is not an activation store (no {MANIFEST})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise StoreError(f"{path} is corrupt: {e}") from e


def windows_digest(windows: np.ndarray) -> str:
    """The token windows' fingerprint, recorded in the store's meta as windows_sha."""
    return hashlib.sha256(np.ascontiguousarray(windows).tobytes()).hexdigest()[:16]


def check_layout(root: Path, manifest: dict, resuming: bool = False) -> None:
    """Shards must tile the windows from 0 (a part: from its first window) in order, each holding its windows' rows,
    and name files inside the store: a row's window is found by counting, so a missing or reordered shard would
    shift every row after it. A store marked complete must reach its last window, unless a harvest is `resuming`
    to refill it."""
    meta = manifest["meta"]
    per_window = meta["context_size"] - meta.get("first_pos", 0)
    end = manifest["part"]["windows"][0] if "part" in manifest else 0
    for i, shard in enumerate(manifest["shards"]):
        w0, w1 = shard["windows"]
        if shard["index"] != i or w0 != end or w1 <= w0:
            raise StoreError(
                f"{root}: shard {i} of the manifest covers windows {w0}..{w1} but the previous shards end at window "
                f"{end}: an entry was removed or reordered. Remove this shard's entry and every later one from "
                f"{MANIFEST} (the harvest resumes after the last one listed), or delete the store.")
        if shard["n_tokens"] != (w1 - w0) * per_window:
            raise StoreError(f"{root}: shard {i} holds {shard['n_tokens']} rows but its windows {w0}..{w1} have "
                             f"{(w1 - w0) * per_window}; the manifest is corrupt. Delete the store.")
        for info in shard["files"].values():
            if not (root / info["file"]).resolve().is_relative_to(root.resolve()):
                raise StoreError(f"{root}: the manifest names a file outside the store ({info['file']}); refusing it")
        end = w1
    last = manifest["part"]["windows"][1] if "part" in manifest else meta.get("n_windows", end)
    if manifest.get("complete") and not resuming and end != last:
        raise StoreError(f"{root}: the manifest says the harvest is complete but its shards end at window {end} of "
                         f"{meta['n_windows']}; re-run the harvest to fill it")


def part_name(rank: int, world: int) -> str:
    return f"rank{rank}of{world}"


class StoreWriter:
    """Appends shards; `start_window` tells a resumed harvest where to continue. `part` (rank, world, first window,
    end window): write that rank's share of a distributed harvest as a part (see the module docstring)."""

    def __init__(self, root, meta: dict, hooks: dict[str, int], dtype: str = "bfloat16",
                 part: tuple[int, int, int, int] | None = None):
        if dtype not in STORE_DTYPES:
            raise ValueError(f"store dtype must be one of {list(STORE_DTYPES)}, not {dtype!r}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.part = part
        self.prefix = f"{part_name(*part[:2])}_" if part else ""
        self.manifest_name = f"manifest.{part_name(*part[:2])}.json" if part else MANIFEST
        if (self.root / self.manifest_name).exists():
            self.manifest = read_manifest(self.root, self.manifest_name)
            want = {"meta": meta, "hooks": {h: {"d": d} for h, d in hooks.items()}, "dtype": dtype}
            have = {k: self.manifest[k] for k in want}
            if have != want:
                raise StoreError(
                    f"{self.root} holds a different harvest ({have}); refusing to mix it with {want}. "
                    "Use a new folder or delete this one."
                )
            check_layout(self.root, self.manifest, resuming=True)
            self.manifest["n_tokens"] = sum(shard["n_tokens"] for shard in self.manifest["shards"])
        else:
            self.manifest = {
                "version": 1, "meta": meta, "hooks": {h: {"d": d} for h, d in hooks.items()},
                "dtype": dtype, "shards": [], "n_tokens": 0, "complete": False,
            }
            if part:
                self.manifest["part"] = {"rank": part[0], "world": part[1], "windows": list(part[2:])}
            self._write_manifest()

    @property
    def start_window(self) -> int:
        shards = self.manifest["shards"]
        return shards[-1]["windows"][1] if shards else (self.part[2] if self.part else 0)

    def _write_manifest(self):
        _atomic_write_text(self.root / self.manifest_name, json.dumps(self.manifest, indent=1))

    def add_shard(self, window_range: tuple[int, int], acts: dict[str, torch.Tensor]) -> None:
        torch_dtype, np_dtype = STORE_DTYPES[self.manifest["dtype"]]
        self.manifest["complete"] = False  # until finish(): a resumed harvest refills a store whose entries were removed
        idx = len(self.manifest["shards"])
        files, n = {}, None
        for hook, x in acts.items():
            d = self.manifest["hooks"][hook]["d"]
            if x.dim() != 2 or x.shape[1] != d:
                raise StoreError(f"shard for {hook} has shape {tuple(x.shape)}, expected [n, {d}]")
            if not torch.isfinite(x).all():
                raise StoreError(f"activations at {hook} in windows {window_range} contain NaN/inf; not storing them")
            n = x.shape[0] if n is None else n
            as_bits = torch.int16 if np_dtype is np.int16 else torch_dtype  # numpy has no bfloat16: its bits as int16
            arr = x.detach().to("cpu", torch_dtype).contiguous().view(as_bits).numpy()
            folder = self.root / hook
            folder.mkdir(exist_ok=True)
            path = folder / f"{self.prefix}shard_{idx:05d}.bin"
            tmp = path.with_suffix(".tmp")
            with tmp.open("wb") as f:
                f.write(arr.tobytes())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            files[hook] = {"file": f"{hook}/{path.name}", "bytes": path.stat().st_size, "sha256": _sha256(path)}
        self.manifest["shards"].append({"index": idx, "windows": list(window_range), "n_tokens": n, "files": files})
        self.manifest["n_tokens"] += n
        self._write_manifest()

    def finish(self) -> None:
        self.manifest["complete"] = True
        self._write_manifest()


def part_manifests(root: Path) -> list[Path]:
    """The part manifests of an unmerged distributed harvest in `root`."""
    return sorted(Path(root).glob("manifest.rank*of*.json"))


def merge_parts(root: Path, world: int) -> None:
    """Join the complete parts rank0of{world}..., in window order, into the store's manifest (then remove them)."""
    root = Path(root)
    parts = [read_manifest(root, f"manifest.{part_name(r, world)}.json") for r in range(world)]
    shards = []
    for part in parts:
        if not part["complete"]:
            raise StoreError(f"{root}: rank {part['part']['rank']}'s part of the harvest is not complete; re-run it")
        shards += part["shards"]
    manifest = {k: parts[0][k] for k in ("version", "meta", "hooks", "dtype")}
    manifest |= {"shards": [s | {"index": i} for i, s in enumerate(shards)], "n_tokens": sum(s["n_tokens"] for s in shards),
                 "complete": True}
    check_layout(root, manifest)
    _atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=1))
    for r in range(world):
        (root / f"manifest.{part_name(r, world)}.json").unlink()


class ActivationStore:
    """Read side: verified, memory-mapped shards and shuffled batches."""

    def __init__(self, root, verify: bool = True):
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        self.torch_dtype, self.np_dtype = STORE_DTYPES[self.manifest["dtype"]]
        self.meta = self.manifest["meta"]
        self.hooks = list(self.manifest["hooks"])
        self.shards = self.manifest["shards"]
        if not self.shards:
            raise StoreError(f"{self.root} has no complete shards")
        check_layout(self.root, self.manifest)
        self._maps: dict[str, list[np.memmap]] = {}
        for shard in self.shards:
            for hook, info in shard["files"].items():
                self._check(shard, hook, info, verify)
        self.offsets = np.cumsum([0] + [s["n_tokens"] for s in self.shards])

    def _check(self, shard, hook, info, verify):
        path = self.root / info["file"]
        if not path.exists():
            raise StoreError(f"shard {shard['index']} of {hook} is missing: {path}")
        size = path.stat().st_size
        d = self.manifest["hooks"][hook]["d"]
        expect = shard["n_tokens"] * d * np.dtype(self.np_dtype).itemsize
        if size != info["bytes"] or size != expect:
            raise StoreError(
                f"shard {path} is truncated or has the wrong size: {size} bytes, manifest says {info['bytes']} "
                f"({shard['n_tokens']} rows x {d}). Remove this shard's entry and every later one from {MANIFEST} and "
                "re-run the harvest (it resumes after the last shard listed), or delete the store."
            )
        if verify and _sha256(path) != info["sha256"]:
            raise StoreError(f"shard {path} is corrupt: its sha256 does not match the manifest. Remove this shard's entry "
                             f"and every later one from {MANIFEST} and re-run the harvest (it resumes after the last one).")

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def d(self, hook: str | None = None) -> int:
        return self.manifest["hooks"][hook or self.hooks[0]]["d"]

    def _shard_maps(self, hook: str) -> list[np.memmap]:
        if hook not in self._maps:
            if hook not in self.manifest["hooks"]:
                raise KeyError(f"{hook!r} is not in this store; it holds {self.hooks}")
            d = self.d(hook)
            self._maps[hook] = [
                np.memmap(self.root / s["files"][hook]["file"], dtype=self.np_dtype, mode="r", shape=(s["n_tokens"], d))
                for s in self.shards
            ]
        return self._maps[hook]

    def _to_torch(self, arr: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(arr))
        return t.view(torch.bfloat16) if self.torch_dtype is torch.bfloat16 else t

    def rows(self, idx: np.ndarray, hook: str | None = None) -> torch.Tensor:
        """Rows at global indices `idx` (any order), as a torch tensor in the store dtype."""
        hook = hook or self.hooks[0]
        maps = self._shard_maps(hook)
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        which = np.searchsorted(self.offsets, sorted_idx, side="right") - 1
        out = np.empty((len(idx), self.d(hook)), dtype=self.np_dtype)
        for s in np.unique(which):
            sel = which == s
            out[order[sel]] = maps[s][sorted_idx[sel] - self.offsets[s]]
        return self._to_torch(out)

    def permutation(self, seed: int, epoch: int) -> np.ndarray:
        return np.random.default_rng([seed, epoch]).permutation(len(self))

    def multi_batches(self, batch_size: int, seed: int = 0, hooks: list[str] | None = None,
                      start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """{hook: rows} of the same shuffled rows for each of `hooks` (default all), forever; batch number
        `start` onward (so a resumed run sees the same order). Each epoch is a fresh permutation; the
        ragged tail of an epoch is dropped."""
        hooks = hooks or self.hooks
        per_epoch = len(self) // batch_size
        if per_epoch == 0:
            raise StoreError(f"store has {len(self)} rows, fewer than one batch of {batch_size}")
        step = start
        while True:
            epoch, i = divmod(step, per_epoch)
            perm = self.permutation(seed, epoch)
            while i < per_epoch:
                idx = perm[i * batch_size:(i + 1) * batch_size]
                yield {h: self.rows(idx, h) for h in hooks}
                i += 1
                step += 1

    def batches(self, batch_size: int, seed: int = 0, hook: str | None = None, start: int = 0) -> Iterator[torch.Tensor]:
        """Rows of one hook (default the first), as `multi_batches`."""
        hook = hook or self.hooks[0]
        return (b[hook] for b in self.multi_batches(batch_size, seed, [hook], start))

    def check_model(self, model) -> None:
        """Refuse to pair these activations with a model other than the one harvested (or one processed differently):
        statistics from one model and attribution from another would be silently mixed."""
        from ..models.loading import same_model

        name, processing = self.meta.get("model"), self.meta.get("processing") or {}
        if name and model.cfg.name and not same_model(name, model.cfg.name):
            raise StoreError(f"{self.root} was harvested from {name!r}, not {model.cfg.name!r}; use a store of this "
                             "model (or pass --model to match the store)")
        have = model.processing.activation_key()
        diff = {k: (processing[k], v) for k, v in have.items() if k in processing and processing[k] != v}
        if diff:
            detail = ", ".join(f"{k}: store {a!r}, model {b!r}" for k, (a, b) in diff.items())
            raise StoreError(f"{self.root} was harvested from a differently processed model ({detail})")
        if not self.manifest.get("complete"):
            print(f"note: {self.root}: its harvest is unfinished; using its {self.n_windows} complete windows",
                  file=sys.stderr)

    def windows(self) -> np.ndarray:
        """The token windows the rows come from (checked against the harvest's record)."""
        windows = np.load(self.root / "windows.npy", mmap_mode="r")
        if "windows_sha" in self.meta and windows_digest(windows) != self.meta["windows_sha"]:
            raise StoreError(f"{self.root / 'windows.npy'} is not the windows this store was harvested from (its digest "
                             "differs from the manifest's windows_sha); re-run the harvest command to rewrite it")
        return windows

    # ---- rows <-> (window, position): every window's positions from first_pos on, windows in order ----

    @property
    def first_pos(self) -> int:
        """The first position stored of each window (1 when BOS was skipped)."""
        return self.meta.get("first_pos", 0)

    @property
    def per_window(self) -> int:
        return self.meta["context_size"] - self.first_pos

    @property
    def n_windows(self) -> int:
        """Windows whose rows are all in the store (a harvest may be unfinished)."""
        return len(self) // self.per_window

    def row(self, window, pos) -> np.ndarray:
        """Global row index of (window, position), position >= first_pos."""
        return np.asarray(window, dtype=np.int64) * self.per_window + np.asarray(pos, dtype=np.int64) - self.first_pos

    def positions(self, rows) -> tuple[np.ndarray, np.ndarray]:
        """(window, position) of global row indices: the inverse of `row`."""
        w, r = np.divmod(np.asarray(rows, dtype=np.int64), self.per_window)
        return w, r + self.first_pos

    def window_rows(self, windows, hook: str | None = None) -> torch.Tensor:
        """[len(windows), per_window, d]: every stored row of the given windows, in the store dtype."""
        w = np.asarray(windows, dtype=np.int64)
        rows = self.row(w[:, None], np.arange(self.first_pos, self.first_pos + self.per_window)).ravel()
        return self.rows(rows, hook).view(len(w), self.per_window, -1)

    def all_rows(self, hook: str | None = None, limit: int | None = None) -> torch.Tensor:
        n = len(self) if limit is None else min(limit, len(self))
        return self.rows(np.arange(n), hook)
