"""The inputs of every feature command: SAEs, the model they read, and windows with their activations.

SAEs are loaded and checked (a whole layer's hook_z, one model, compatible with it) before any
window is picked, so a bad argument fails fast. Windows come from an activation store (its
complete windows: a seeded random `windows` of them, the first `windows`, or all) or else from
the corpus (a seeded random `windows` of its train and held-out windows together).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..attribution.heads import require_hook_z
from .source import ActivationSource

STORE_WINDOWS = ("random", "first", "all")


@dataclass
class InputSpec:
    """Where the inputs come from, as the command line names them."""

    saes: list[str]  # SAE folders
    model: str | None = None  # default: the model the SAEs were trained on
    store: str | None = None  # activation store folder: its windows and activations
    corpus: str = "default"  # without a store
    windows: int = 2000
    seed: int = 0
    model_dtype: str = "float32"  # bfloat16 moves activations and DFA by up to 14% on SmolLM2
    device: str = "auto"  # the model's (models.device.resolve_device); statistics and SAEs stay on the CPU
    store_windows: str = "random"  # which of a store's windows (STORE_WINDOWS); a corpus's are always random


@dataclass
class Inputs:
    model: object
    saes: list
    source: ActivationSource

    @property
    def windows(self) -> np.ndarray:
        return self.source.windows


def sae_model_name(saes: list, model: str | None = None, default: str | None = None) -> str | None:
    """`model`, else the model the SAEs were trained on (they must agree), else `default`."""
    names = {s.cfg.model_name for s in saes}
    if len(names) > 1 and not model:
        raise ValueError(f"the SAEs come from different models {sorted(map(str, names))}; pass --model")
    return model or (saes[0].cfg.model_name if saes else default)


def pick_windows(n_total: int, n: int, seed: int) -> np.ndarray:
    """A seeded random n of range(n_total), in order."""
    return np.sort(np.random.default_rng(seed).permutation(n_total)[:n])


def load_inputs(spec: InputSpec, check: Callable | None = None) -> Inputs:
    """Load and check everything; `check(model, saes)` runs once the model is loaded, before the windows
    are picked (a command's own argument checks)."""
    from ..data import ActivationStore, WindowSpec, load_windows
    from ..evals import check_compatible
    from ..evals.splice import model_for_saes
    from ..sae import load_sae

    if spec.store_windows not in STORE_WINDOWS:
        raise ValueError(f"store_windows must be one of {STORE_WINDOWS}, not {spec.store_windows!r}")
    saes = [load_sae(p) for p in spec.saes]
    for sae in saes:
        require_hook_z(sae)
    store = ActivationStore(spec.store) if spec.store else None  # every shard checked against its sha256
    model = model_for_saes(saes, spec.model, dtype=spec.model_dtype, device=spec.device)
    if store is not None:
        store.check_model(model)
    for sae in saes:
        check_compatible(model, sae)
    if check is not None:
        check(model, saes)
    if store is not None:
        n = store.n_windows
        if spec.store_windows == "random":
            index = pick_windows(n, spec.windows, spec.seed)
        elif spec.store_windows == "first":
            index = np.arange(min(n, spec.windows))
        else:
            index = np.arange(n)
        return Inputs(model, saes, ActivationSource.from_store(model, store, index))
    train, held = load_windows(model, WindowSpec(corpus=spec.corpus, ctx=saes[0].cfg.context_size))
    every = np.concatenate([train, held])
    return Inputs(model, saes, ActivationSource(model, every[pick_windows(len(every), spec.windows, spec.seed)]))
