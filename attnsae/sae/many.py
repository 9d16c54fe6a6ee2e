"""Many SAEs from one stream of batches: one model forward (or one store read) per step feeds every
hook's SAE, as SAELens' MultiSAETrainingRunner and sparsify do.

`source` is an `ActivationStore` or a `StreamedActivations`: `multi_batches` gives every hook's rows of
one batch, `batches` one hook's (what a trainer reads to initialise or resample). Each SAE is an
ordinary `Trainer` with its own run folder and checkpoints; this loop only hands each the batch of
its hook. Batches are a pure function of the step (data.stream, data.store), so after
kill -9 every trainer resumes from its own checkpoint and the loop restarts at the earliest of them:
a trainer that had checkpointed further skips the batches it has seen, so nothing is lost or repeated.

Under torchrun a `distributed.Layout` spreads the work: in the data layout every rank trains every SAE on its
slice of each batch (the trainers reduce across ranks, rank 0 writes); in the modules layout each rank trains its
own hooks' SAEs on whole batches. Every rank walks the same steps, from the earliest any rank resumes at, since
a streamed source builds each chunk with all ranks together.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import distributed
from ..lock import hold
from .sae import SAEConfig
from .trainer import TrainConfig, Trainer, check_same_training


def train_saes(sae_cfgs: dict[str, SAEConfig], cfg: TrainConfig, out_dirs: dict[str, Path], source,
               progress: bool = True, resume: bool = True, device: str | torch.device = "cpu",
               layout: distributed.Layout | None = None) -> dict[str, Path]:
    """{hook: out_dirs[hook]/sae}: an SAE per hook of `sae_cfgs`, all trained with `cfg` on the same
    batches of `source`. As `train_sae` for each: a finished SAE is reused (refused if trained with
    another config), a checkpoint resumed. `layout`: how torchrun's ranks share the work (None: one process)."""
    layout = layout or distributed.Layout("data", tuple(sae_cfgs))
    with ExitStack() as held:  # one run per SAE folder, as train_sae
        for hook in sae_cfgs:
            if layout.writes(hook):
                held.enter_context(hold(out_dirs[hook], "training"))
        dirs = _train(sae_cfgs, cfg, out_dirs, source, progress, resume, device, layout)
    distributed.barrier()  # every SAE is saved before any rank goes on to use them
    return dirs


def _train(sae_cfgs, cfg, out_dirs, source, progress, resume, device, layout) -> dict[str, Path]:
    bs, seed = cfg.batch_size, cfg.seed
    done, trainers = {h: Path(out_dirs[h]) / "sae" for h in sae_cfgs}, {}
    for hook in layout.owned():
        sae_cfg, out = sae_cfgs[hook], Path(out_dirs[hook])
        if resume and (out / "sae" / "cfg.json").exists():
            check_same_training(out / "sae", cfg, sae_cfg)
            continue
        trainers[hook] = Trainer(sae_cfg, cfg, out / "train",
                                 lambda s, h=hook: source.batches(bs, seed=seed, hook=h, start=s), progress=False,
                                 device=device, data_parallel=layout.data_parallel, writer=layout.writes(hook))
    for t in trainers.values():
        t.start(resume)
    # the earliest step any rank's trainers resume at (cfg.steps when all are done)
    first = int(distributed.all_min(torch.tensor([min([t.step for t in trainers.values()], default=cfg.steps)])))
    bar = tqdm(total=cfg.steps, initial=first, desc=f"train {len(trainers)} SAEs ({cfg.recipe})", unit="step",
               disable=not (progress and distributed.is_main()))
    evs = {}
    # (a rank whose SAEs are all done still reads the batches: it builds its share of each streamed chunk)
    batches = source.multi_batches(bs, seed=seed, hooks=list(trainers), start=first)
    for step, batch in zip(range(first, cfg.steps), batches):
        for hook, t in trainers.items():
            if t.step == step:  # a trainer whose checkpoint is ahead has seen this batch
                rec = t.train_step(layout.local(batch[hook]))
                if rec:
                    evs[hook] = rec["explained_var"]
        if evs:
            bar.set_postfix(min_EV=f"{min(evs.values()):.3f}", mean_EV=f"{sum(evs.values()) / len(evs):.3f}")
        bar.update(1)
    bar.close()
    for hook, t in trainers.items():
        t.save(done[hook], t.finish())
    return done
