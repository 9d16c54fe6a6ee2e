"""An SAE on every layer's attn.hook_z, all trained side by side from one model forward per batch
(sae.many): streamed through a shuffled in-memory buffer (data.stream, the paper's approach), or,
with `store=True`, harvested once into out/store and read from there.

Re-running resumes: finished layers are reused (refused if trained with another config), killed ones
resume from their checkpoints, a killed harvest continues after its last complete shard.
    out/store/      every layer's hook_z, one store (store=True only)
    out/L{l}/       train/ (checkpoints) and sae/, per layer
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import distributed
from ..data import StreamedActivations, WindowSpec, harvest, hook_width, load_windows
from ..models import DEFAULT_MODEL, load_model
from ..models.device import fits
from ..models.hooks import act_name
from ..sae import TrainConfig, sae_config_for
from ..sae.many import train_saes


def layers_train_config() -> TrainConfig:
    """BatchTopK SAEs at 16x (9,216 latents on SmolLM2's 576-wide hook_z), k = 16 latents per input on average,
    1000 steps of 2048 (2.05M of SmolLM2's 2.29M training tokens; the whole study then fits in its two hours), lr 2e-3
    warmed up over 100 steps, Adam beta2 0.999, every latent held at a firing floor of 3e-4.

    Without the floor, latents die as training goes on, and more at a higher lr (blocks.15.attn.hook_z, 350 steps, dead
    on 100,000 inputs: lr 3e-3 leaves 42% dead; 1e-3, 3.4%; with the warm-up, 1.2%; and beta2 0.999, 0.9%; over 800
    steps 14.9% on held-out inputs). The floor keeps them alive (floor 3e-4: 0.02% dead), which frees the lr. Layers 15
    and 23, 800 steps from one store, held-out EV: lr 1e-3, 0.620 and 0.599; 2e-3, 0.635 and 0.660; 3e-3, 0.602 and
    0.680 (11 dead on layer 15), so 2e-3. On all 30 layers the median EV went 0.659 -> 0.681; layer 0 alone lost
    (EV 0.924 -> 0.880, 1.2% dead), until the floor's selection biases stopped at the threshold (recipes/batchtopk.py).
    The batch size hardly matters at equal tokens (layer 15, 1.64M tokens: 1024 x 1600 steps at lr 1.4e-3, EV 0.640;
    2048 x 800 at 2e-3, 0.636; 4096 x 400 at 2.8e-3, 0.633), so the tokens are what to spend the time on."""
    return TrainConfig(recipe="batchtopk", k=16, expansion=16, batch_size=2048, steps=1000, lr=2e-3, lr_warmup=100,
                       betas=(0.9, 0.999), firing_floor=3e-4)


@dataclass
class LayersConfig:
    model: str = DEFAULT_MODEL
    out: str = "runs/layers"
    windows: WindowSpec = field(default_factory=WindowSpec)
    train_windows: int | None = None  # the first this many of the corpus's training windows (None: all)
    layers: list[int] | None = None  # None: every layer
    store: bool = False  # harvest into out/store and train from it, instead of streaming
    chunk_windows: int = 256  # streaming: windows per buffer chunk (rows shuffled within it)
    harvest_dtype: str = "bfloat16"
    store_dtype: str = "bfloat16"
    device: str = "auto"  # model and training (models.device.resolve_device)
    distribute: str = "auto"  # under torchrun: data | modules | auto (distributed.layout)
    train: TrainConfig = field(default_factory=layers_train_config)


def training_bytes(sae_cfgs, batch_size: int) -> dict[str, int]:
    """What training the SAEs side by side holds: every SAE's parameters, gradients and Adam moments (fp32),
    and one step's [batch, d_sae] temporaries at a time (about six of them)."""
    params = sum(2 * c.d_in * c.d_sae + c.d_in + c.d_sae for c in sae_cfgs)
    return {f"{len(sae_cfgs)} SAEs in training": 16 * params,
            "one step's temporaries": 6 * 4 * batch_size * max(c.d_sae for c in sae_cfgs)}


def run_layers(cfg: LayersConfig, progress: bool = True) -> dict[int, Path]:
    """{layer: SAE folder} for every layer of the model (or cfg.layers)."""
    out = Path(cfg.out)
    model = load_model(cfg.model, dtype=cfg.harvest_dtype, device=cfg.device)
    n_layers = model.cfg.n_layers
    bad = [l for l in cfg.layers or [] if not 0 <= l < n_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range: {model.cfg.name} has {n_layers} layers")
    train_w, _ = load_windows(model, cfg.windows)
    if cfg.train_windows:
        train_w = train_w[: cfg.train_windows]
    hooks = {l: act_name("z", l) for l in sorted(cfg.layers or range(n_layers))}
    t = cfg.train
    layout = distributed.layout(list(hooks.values()), cfg.distribute, t.batch_size)
    distributed.check_shared(out)
    if cfg.store:
        source = harvest(model, train_w, out / "store", list(hooks.values()), dtype=cfg.store_dtype, progress=progress,
                         extra_meta={"corpus": cfg.windows.corpus})
        meta, buffer = source.meta, {}
    else:
        source = StreamedActivations(model, train_w, list(hooks.values()), chunk_windows=cfg.chunk_windows, layout=layout)
        meta, buffer = source.meta(cfg.windows.corpus), {"activation buffer": source.buffer_bytes()}
    sae_cfgs = {h: sae_config_for(t, hook_width(model, h), h, meta) for h in hooks.values()}
    mine = [sae_cfgs[h] for h in layout.owned()]  # this rank's SAEs
    distributed.agree(*fits(buffer | training_bytes(mine, t.batch_size), model.device,
                            "train fewer layers at once (--layers), or lower --expansion, --batch-size or --chunk-windows"
                            + (", or use more ranks" if layout.mode == "modules" else "")), MemoryError)
    dirs = train_saes(sae_cfgs, t, {h: out / f"L{l}" for l, h in hooks.items()}, source, progress=progress,
                      device=cfg.device, layout=layout)
    return {l: dirs[h] for l, h in hooks.items()}
