"""Many SAEs from one stream (sae.many): the same SAEs as training each alone, one model forward per
buffer chunk for all hooks, and a resume after kill -9 that loses and repeats nothing."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from attnsae.sae import SAEConfig, TrainConfig, load_sae, train_sae
from attnsae.sae.many import train_saes
from tests.test_sae import planted

HOOKS = ("blocks.0.attn.hook_z", "blocks.1.attn.hook_z")


class PlantedSource:
    """Two hooks of planted data (different directions per hook); batch s is a pure function of (seed, s)."""

    def __init__(self, n=20_000):
        self.data = {h: planted(n=n, seed=i)[0] for i, h in enumerate(HOOKS)}
        self.shared_reads = 0  # batches handed out for all hooks at once

    def multi_batches(self, batch_size, seed=0, hooks=None, start=0):
        step = start
        while True:
            g = torch.Generator().manual_seed(seed * 1_000_003 + step)
            idx = torch.randint(0, len(self.data[HOOKS[0]]), (batch_size,), generator=g)
            self.shared_reads += len(hooks or HOOKS) > 1
            yield {h: self.data[h][idx] for h in hooks or HOOKS}
            step += 1

    def batches(self, batch_size, seed=0, hook=None, start=0):
        return (b[hook] for b in self.multi_batches(batch_size, seed, [hook], start))


def configs():
    return {h: SAEConfig(d_in=32, d_sae=64, architecture="standard", hook_name=h) for h in HOOKS}


def small(recipe, **kw):
    extra = {"l1": {"l1_coeff": 0.5, "resample_every": 20, "n_resamples": 2, "resample_inputs": 512,
                    "resample_warmup": 10}}.get(recipe, {"k": 3})
    return TrainConfig(recipe=recipe, batch_size=128, dtype="float32", hist_every=0, checkpoint_every=10,
                       **{"steps": 60} | extra | kw)


def same_sae(a, b):
    for name in ("W_enc", "b_enc", "W_dec", "b_dec") + (("log_threshold",) if a.cfg.architecture == "jumprelu" else ()):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize("recipe", ["l1", "batchtopk", "jumprelu"])
def test_many_saes_from_one_stream_equal_each_trained_alone(recipe, tmp_path):
    """Including the L1 recipe's resampling, which reads ahead in its own hook's batches."""
    from attnsae.sae import RECIPES

    cfg = small(recipe)
    sae_cfgs = {h: SAEConfig(d_in=32, d_sae=64, architecture=RECIPES[recipe].architecture, hook_name=h) for h in HOOKS}
    source = PlantedSource()
    many = train_saes(sae_cfgs, cfg, {h: tmp_path / "many" / h for h in HOOKS}, source, progress=False)
    assert source.shared_reads == cfg.steps  # the training steps read every hook's batch at once
    for h in HOOKS:
        alone = train_sae(sae_cfgs[h], cfg, tmp_path / "alone" / h,
                          lambda s, h=h: source.batches(cfg.batch_size, seed=cfg.seed, hook=h, start=s), progress=False)
        same_sae(load_sae(many[h]), load_sae(alone))


def test_a_trainer_whose_checkpoint_is_ahead_skips_the_batches_it_has_seen(tmp_path):
    """kill -9 can land between two trainers' checkpoints: the loop restarts at the earliest and the one ahead waits."""
    cfg, out = small("batchtopk"), {h: tmp_path / "run" / h for h in HOOKS}
    ref = train_saes(configs(), cfg, {h: tmp_path / "ref" / h for h in HOOKS}, PlantedSource(), progress=False)

    class Dies(PlantedSource):
        def multi_batches(self, batch_size, seed=0, hooks=None, start=0):
            for i, b in enumerate(super().multi_batches(batch_size, seed, hooks, start)):
                if i == 25 and len(b) > 1:  # the training loop's 26th step
                    raise KeyboardInterrupt
                yield b

    with pytest.raises(KeyboardInterrupt):
        train_saes(configs(), cfg, out, Dies(), progress=False)
    for h in HOOKS:
        assert json.loads((out[h] / "train" / "checkpoint" / "state.json").read_text())["step"] == 20
    import shutil

    shutil.rmtree(out[HOOKS[1]] / "train")  # as if killed before its first checkpoint
    got = train_saes(configs(), cfg, out, PlantedSource(), progress=False)
    for h in HOOKS:
        same_sae(load_sae(got[h]), load_sae(ref[h]))


def _many_script(out, recipe, extra):
    return textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.getcwd()!r})
        from tests.test_many import HOOKS, PlantedSource, configs, small
        from attnsae.sae.many import train_saes
        cfg = small({recipe!r}, steps=400, **{extra!r})
        train_saes(configs(), cfg, {{h: {str(out)!r} + "/" + h for h in HOOKS}}, PlantedSource(), progress=False)
    """)


@pytest.mark.parametrize("recipe,extra", [("batchtopk", {"firing_floor": 0.01}), ("matryoshka_batchtopk", {})])
def test_kill_9_then_resume_gives_the_uninterrupted_saes(recipe, extra, tmp_path):
    """BatchTopK with a firing floor: its selection biases and firing rates resume too (a threshold per latent)."""
    ref, victim = tmp_path / "ref", tmp_path / "victim"
    subprocess.run([sys.executable, "-c", _many_script(ref, recipe, extra)], check=True)
    proc = subprocess.Popen([sys.executable, "-c", _many_script(victim, recipe, extra)])
    state = victim / HOOKS[1] / "train" / "checkpoint" / "state.json"
    deadline = time.time() + 120
    while not state.exists() or json.loads(state.read_text())["step"] < 50:
        assert time.time() < deadline and proc.poll() is None, "training finished or hung before the kill"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (victim / HOOKS[0] / "sae").exists()
    subprocess.run([sys.executable, "-c", _many_script(victim, recipe, extra)], check=True)
    for h in HOOKS:
        same_sae(load_sae(victim / h / "sae"), load_sae(ref / h / "sae"))


def test_stream_runs_the_model_once_per_chunk_for_every_hook(tiny, windows, monkeypatch):
    """All hooks' activations of a chunk come from one forward per model batch, and trainers reading the same
    chunk (to initialise) reuse the buffer instead of running the model again."""
    import attnsae.data.stream as stream_module

    model, calls, collect = tiny[0], [], stream_module.collect
    monkeypatch.setattr(stream_module, "collect", lambda *a, **kw: calls.append(1) or collect(*a, **kw))
    stream = stream_module.StreamedActivations(model, windows, list(HOOKS), chunk_windows=8, batch_size_model=8)
    first = next(stream.multi_batches(20, seed=1))
    assert set(first) == set(HOOKS) and len(calls) == 1
    for h in HOOKS:  # each hook's own iterator reads the cached chunk
        assert torch.equal(next(stream.batches(20, seed=1, hook=h)), first[h])
    assert len(calls) == 1
    chunk = 8 * 15 * 2 * model.cfg.n_heads * model.cfg.d_head * 4  # rows x (two hooks' widths) x float32
    assert stream.cache_chunks * 120 >= 65536 and stream.buffer_bytes() == (stream.cache_chunks + 1) * chunk


def test_nan_in_one_hooks_batch_stops_naming_the_step_and_hook_with_checkpoints_intact(tmp_path):
    class Poisoned(PlantedSource):
        def multi_batches(self, batch_size, seed=0, hooks=None, start=0):
            for step, b in enumerate(super().multi_batches(batch_size, seed, hooks, start), start):
                if len(b) > 1 and step == 15:
                    b[HOOKS[1]] = b[HOOKS[1]] * float("nan")
                yield b

    cfg, out = small("batchtopk"), {h: tmp_path / h for h in HOOKS}
    with pytest.raises(FloatingPointError, match=r"at step 15 \(hook blocks.1.attn.hook_z\); the last checkpoint \(step 10, in "):
        train_saes(configs(), cfg, out, Poisoned(), progress=False)
    for h in HOOKS:
        assert json.loads((out[h] / "train" / "checkpoint" / "state.json").read_text())["step"] == 10
    ref = train_saes(configs(), cfg, {h: tmp_path / "ref" / h for h in HOOKS}, PlantedSource(), progress=False)
    got = train_saes(configs(), cfg, out, PlantedSource(), progress=False)  # resumes from the intact step-10 checkpoints
    for h in HOOKS:
        same_sae(load_sae(got[h]), load_sae(ref[h]))
