"""An SAE on every layer's attn.hook_z: one harvest pass stores all layers, then each layer trains from it.

Re-running resumes: the harvest continues after its last complete shard, finished layers are reused
(refused if trained with another config), and a killed layer resumes from its checkpoint.
    out/store/      every layer's hook_z, one store
    out/L{l}/       train/ (checkpoints) and sae/, per layer
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..data import WindowSpec, harvest, load_windows
from ..models import DEFAULT_MODEL, load_model
from ..models.hooks import act_name
from ..sae import TrainConfig, sae_config_for, train_sae


def layers_train_config() -> TrainConfig:
    """Small TopK SAEs (4x, k = 32; 800 steps x 2048 = 1.6M activations): about a minute per SmolLM2 layer on
    2 CPU cores, enough for IOI splicing and feature families across layers."""
    return TrainConfig(recipe="topk", k=32, expansion=4, batch_size=2048, steps=800)


@dataclass
class LayersConfig:
    model: str = DEFAULT_MODEL
    out: str = "runs/layers"
    windows: WindowSpec = field(default_factory=WindowSpec)
    train_windows: int | None = 3200  # windows harvested (None: all the corpus's training windows)
    layers: list[int] | None = None  # trained first, in this order; the rest follow (None: all, in order)
    only: bool = False  # harvest and train only `layers`
    harvest_dtype: str = "bfloat16"
    store_dtype: str = "bfloat16"
    device: str = "auto"  # model and training (models.device.resolve_device)
    train: TrainConfig = field(default_factory=layers_train_config)


def run_layers(cfg: LayersConfig, progress: bool = True) -> dict[int, Path]:
    """{layer: SAE folder} for every layer of the model (or only cfg.layers)."""
    out = Path(cfg.out)
    model = load_model(cfg.model, dtype=cfg.harvest_dtype, device=cfg.device)
    n_layers = model.cfg.n_layers
    bad = [l for l in cfg.layers or [] if not 0 <= l < n_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range: {model.cfg.name} has {n_layers} layers")
    train_w, _ = load_windows(model, cfg.windows)
    if cfg.train_windows:
        train_w = train_w[: cfg.train_windows]
    order = list(dict.fromkeys([*(cfg.layers or []), *([] if cfg.only and cfg.layers else range(n_layers))]))
    hooks = {l: act_name("z", l) for l in sorted(order)}
    store = harvest(model, train_w, out / "store", list(hooks.values()), dtype=cfg.store_dtype, progress=progress,
                    extra_meta={"corpus": cfg.windows.corpus})
    t = cfg.train
    saes = {}
    for l in order:
        hook = hooks[l]
        saes[l] = train_sae(sae_config_for(t, store.d(hook), hook, store.meta), t, out / f"L{l}",
                            lambda s, h=hook: store.batches(t.batch_size, seed=t.seed, hook=h, start=s), progress=progress,
                            device=cfg.device)
    return saes
