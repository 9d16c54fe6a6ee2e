"""One SAE on one hook, from a store or streamed straight from the model (no store on disk)."""

from __future__ import annotations

from pathlib import Path

from .. import distributed
from ..data import ActivationStore, StreamedActivations, WindowSpec, hook_width, load_windows
from ..models import load_model
from ..sae import TrainConfig, sae_config_for, train_sae


def train_one(cfg: TrainConfig, out, store: str | None = None, hook: str | None = None, model: str | None = None,
              windows: WindowSpec | None = None, model_dtype: str = "bfloat16", restart: bool = False,
              device: str = "auto") -> Path:
    """Train (or resume, or reuse) an SAE into out/sae. With `store`: on its `hook` (default its first). Without:
    streamed from `model` at `hook` over `windows` of the corpus, harvested chunk by chunk."""
    if store:
        acts = ActivationStore(store)
        hook = hook or acts.hooks[0]
        d_in, meta = acts.d(hook), acts.meta

        def batches(step):
            return acts.batches(cfg.batch_size, seed=cfg.seed, hook=hook, start=step)
    else:
        if not (model and hook):
            raise ValueError("train needs --store, or --model and --hook to stream activations from the model")
        windows = windows or WindowSpec()
        lm = load_model(model, dtype=model_dtype, device=device)
        train_w, _ = load_windows(lm, windows)
        # under torchrun each rank runs the model on its share of each chunk (data layout: all ranks keep the rows)
        stream = StreamedActivations(lm, train_w, hook, layout=distributed.layout([hook], "data", cfg.batch_size))
        d_in, meta = hook_width(lm, hook), stream.meta(windows.corpus)

        def batches(step):
            return stream.batches(cfg.batch_size, seed=cfg.seed, start=step)
    return train_sae(sae_config_for(cfg, d_in, hook, meta), cfg, out, batches, resume=not restart, device=device)
