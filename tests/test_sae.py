import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from attnsae.sae import RECIPES, SAE, SAEConfig, TrainConfig, Trainer, load_sae, sae_config_for, save_sae, train_sae
from attnsae.sae.recipes.base import remove_parallel_grad
from attnsae.sae.trainer import geometric_median
from tests.conftest import peer


def planted(n_feat=16, d=32, n=200_000, k=3, seed=0):
    """Data made of k-sparse nonnegative combinations of n_feat unit directions (the ground truth)."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_feat, d, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)
    idx = torch.stack([torch.randperm(n_feat, generator=g)[:k] for _ in range(n)])
    coef = torch.zeros(n, n_feat).scatter_(1, idx, 1 + torch.rand(n, k, generator=g))
    return coef @ dirs, dirs


def batches_of(data, bs, seed=0):
    def from_step(start):
        step = start
        while True:
            g = torch.Generator().manual_seed(seed * 1_000_003 + step)
            yield data[torch.randint(0, len(data), (bs,), generator=g)]
            step += 1

    return from_step


def best_cosines(sae, dirs):
    dec = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    return (dirs @ dec.T).max(dim=1).values


@pytest.mark.parametrize("recipe,extra,max_l0", [
    ("l1", {"l1_coeff": 0.5}, 6), ("l1_decnorm", {"l1_coeff": 1.0}, 10), ("topk", {"k": 3}, 3.01)])
def test_planted_features_are_found(recipe, extra, max_l0, tmp_path):
    data, dirs = planted()
    cfg = TrainConfig(recipe=recipe, steps=1500, batch_size=256, lr=3e-3, dtype="float32", checkpoint_every=10_000,
                      hist_every=0, resample_every=500, n_resamples=2, resample_inputs=2048, resample_warmup=100, **extra)
    sae_cfg = SAEConfig(d_in=32, d_sae=64, architecture="topk" if recipe == "topk" else "standard", k=extra.get("k"))
    tr = Trainer(sae_cfg, cfg, tmp_path, batches_of(data, 256), progress=False)
    tr.train()
    sae = tr.finished_sae()
    cos = best_cosines(sae, dirs)
    assert (cos > 0.95).all(), cos
    x = data[:4096]
    out = sae(x)
    assert (out.feature_acts > 0).sum(-1).float().mean() < max_l0  # 3 true features per input
    ev = 1 - (out.reconstruction - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert ev > 0.9
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64), atol=1e-4, rtol=0)


def test_decoder_gradient_parallel_component_is_removed():
    sae = SAE(SAEConfig(d_in=8, d_sae=16))
    x = torch.randn(32, 8)
    out = sae(x)
    ((out.reconstruction - x).pow(2).sum() + out.feature_acts.sum()).backward()
    remove_parallel_grad(sae)
    assert (sae.W_dec.grad * sae.W_dec).sum(1).abs().max() < 1e-5


def test_topk_keeps_at_most_k():
    sae = SAE(SAEConfig(d_in=8, d_sae=32, architecture="topk", k=4))
    f = sae.encode(torch.randn(100, 8))
    assert ((f > 0).sum(-1) <= 4).all() and (f >= 0).all()


def _entries(f):
    row, col = f.nonzero(as_tuple=True)
    return row, col, f[row, col]


@pytest.mark.parametrize("arch", ["standard", "jumprelu", "topk"])
@pytest.mark.parametrize("slack", [None, 0.0])
def test_active_entries_equal_the_fp32_encoder_even_at_the_threshold(arch, slack, monkeypatch):
    """SAE.active screens in bf16: thresholds planted a hair (1e-4 |x||w|, far below bf16's error) above and below
    true pre-activations must still come out as fp32 decides. With no slack the screen misses some: the test bites."""
    if slack is not None:
        monkeypatch.setattr("attnsae.sae.sae.SCREEN_SLACK", slack)
    g = torch.Generator().manual_seed(0)
    sae = SAE(SAEConfig(d_in=64, d_sae=512, architecture=arch, k=8 if arch == "topk" else None))
    x = torch.randn(300, 64, generator=g) * 3
    with torch.no_grad():
        sae.W_enc.mul_(torch.rand(1, 512, generator=g) + 0.5)  # columns of different norms
        sae.b_enc.normal_(generator=g)
        sae.b_dec.normal_(generator=g)
        if arch == "jumprelu":  # every latent's threshold a hair above or below its pre-activation on row 0
            pre = sae.pre_acts(x)[0]
            hair = 1e-4 * (x[0] - sae.b_dec).norm() * sae.W_enc.norm(dim=0)
            below = torch.arange(512) % 2 == 0
            sae.log_threshold.copy_((pre.abs() + torch.where(below, -hair, hair)).clamp_min(1e-6).log())
            planted_on = ((pre > 0) & below).sum()
    want = _entries(sae.encode(x))
    got = sae.active(x)
    same = torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])
    if slack == 0.0 and arch != "topk":
        assert not same  # bf16 alone gets entries at the threshold wrong
        return
    assert same
    torch.testing.assert_close(got[2], want[2], rtol=1e-5, atol=1e-5)
    if arch == "jumprelu":
        assert (got[0] == 0).sum() == planted_on > 100


def test_folding_input_scale_and_decoder_norm_preserve_the_function():
    sae = SAE(SAEConfig(d_in=8, d_sae=16))
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(16, 1) + 0.5)
        sae.b_enc.normal_()
        sae.b_dec.normal_()
    x = torch.randn(64, 8)
    s = 3.7
    want = sae(x * s).reconstruction / s
    sae.fold_decoder_norm_()
    sae.fold_input_scale_(s)
    torch.testing.assert_close(sae(x).reconstruction, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(16))
    topk = SAE(SAEConfig(d_in=8, d_sae=16, architecture="topk", k=2))
    with pytest.raises(ValueError, match="ReLU"):
        topk.fold_decoder_norm_()


def test_geometric_median_resists_outliers():
    x = torch.cat([torch.randn(200, 4) * 0.1 + 1.0, torch.full((20, 4), 1000.0)])
    assert (geometric_median(x) - 1.0).abs().max() < 0.2


def test_training_dead_count_is_latents_silent_over_the_last_window(tmp_path, monkeypatch):
    """The curves' "dead" counts latents silent on the last DEAD_WINDOW inputs: one that fired only in the
    first step is dead later (a count since the start would call it alive), and checkpoints keep the record."""
    import attnsae.sae.trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "DEAD_WINDOW", 128 * 20)
    data, _ = planted(n=20_000)
    cfg = TrainConfig(recipe="topk", k=4, steps=60, batch_size=128, dtype="float32", lr_decay_frac=0, hist_every=0,
                      checkpoint_every=50)
    tr = Trainer(SAEConfig(d_in=32, d_sae=64, architecture="topk", k=4), cfg, tmp_path, batches_of(data, 128),
                 progress=False)
    tr.start(resume=False)
    it = tr.batches_from(0)
    with torch.no_grad():  # latent 0 wins every row of the first step...
        tr.sae.b_enc[0] = 1e4
    tr.train_step(next(it))
    assert tr.recipe.last_fired[0] == 128 and not tr.silent_mask().any()  # nothing is silent on 128 inputs
    with torch.no_grad():  # ...and never again
        tr.sae.W_enc[:, 0] = 0
        tr.sae.b_enc[0] = -1e4
    for _ in range(49):
        tr.train_step(next(it))
    silent = tr.silent_mask()
    assert silent[0] and tr.fire_counts[0] > 0
    assert not silent[tr.recipe.silent_for() == 0].any()  # fired in the last step
    assert tr.history[-1]["step"] == 50 and tr.history[-1]["dead"] == int(silent.sum())
    again = Trainer(tr.sae.cfg, cfg, tmp_path, batches_of(data, 128), progress=False)
    again.start(resume=True)
    assert again.step == 50 and torch.equal(again.recipe.last_fired, tr.recipe.last_fired)


def test_resampling_reinitialises_dead_features_and_warms_lr_back(tmp_path):
    data, _ = planted(n=20_000)
    cfg = TrainConfig(steps=300, batch_size=128, dtype="float32", resample_every=100, n_resamples=1,
                      resample_inputs=1024, resample_warmup=50, lr_decay_frac=0, hist_every=0, checkpoint_every=1000)
    tr = Trainer(SAEConfig(d_in=32, d_sae=64), cfg, tmp_path, batches_of(data, 128), progress=False)
    with torch.no_grad():  # kill features 0..9: a huge negative bias means they never fire
        tr.sae.b_enc[:10] = -1e4
    orig_steps = cfg.steps
    cfg.steps = 100
    tr.train()
    dead = tr.dead_mask()
    assert dead[:10].all() and (tr.fire_counts[:10] == 0).all()
    # "dead" is a frequency below 1e-5 since the last resample, not only "never fired"
    counts, tokens = tr.fire_counts.clone(), tr.fire_tokens
    tr.fire_counts[20], tr.fire_counts[21], tr.fire_tokens = 1, 100, 1_000_000
    assert tr.dead_mask()[20] and not tr.dead_mask()[21]
    tr.fire_counts, tr.fire_tokens = counts, tokens
    before = tr.sae.W_dec.detach().clone()
    n = tr.resample(dead)
    assert n == int(dead.sum())
    assert (tr.sae.b_enc[:10] == 0).all()
    assert not torch.allclose(tr.sae.W_dec[:10], before[:10])
    torch.testing.assert_close(tr.sae.W_dec[~dead], before[~dead])
    st = tr.opt.state[tr.sae.W_enc]
    assert (st["exp_avg"][:, :10] == 0).all() and (st["exp_avg_sq"][:, :10] == 0).all()
    assert tr.lr_at(100) == pytest.approx(0.1 * cfg.lr)
    assert tr.lr_at(150) == pytest.approx(cfg.lr)
    assert 0.1 * cfg.lr < tr.lr_at(125) < cfg.lr
    cfg.steps = orig_steps


def _train_script(out, steps, data_seed=0):
    return textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {os.getcwd()!r})
        from tests.test_sae import planted, batches_of
        from attnsae.sae import SAEConfig, TrainConfig, Trainer
        data, _ = planted(n=20_000)
        cfg = TrainConfig(steps={steps}, batch_size=128, dtype="float32", resample_every=40, n_resamples=2,
                          resample_inputs=512, resample_warmup=20, hist_every=0, checkpoint_every=10)
        tr = Trainer(SAEConfig(d_in=32, d_sae=64), cfg, {str(out)!r}, batches_of(data, 128), progress=False)
        tr.train()
        tr.save({str(out / 'sae')!r})
    """)


def test_kill_9_then_resume_continues_the_same_run(tmp_path):
    ref, victim = tmp_path / "ref", tmp_path / "victim"
    subprocess.run([sys.executable, "-c", _train_script(ref, 120)], check=True)
    # start the same run, kill -9 it once a checkpoint exists, then resume
    proc = subprocess.Popen([sys.executable, "-c", _train_script(victim, 120)])
    import time

    deadline = time.time() + 120
    state = victim / "checkpoint" / "state.json"
    while not state.exists() or json.loads(state.read_text())["step"] < 50:
        assert time.time() < deadline and proc.poll() is None, "training finished or hung before the kill"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (victim / "sae").exists()
    killed_at = json.loads((victim / "checkpoint" / "state.json").read_text())["step"]
    assert 50 <= killed_at < 120
    subprocess.run([sys.executable, "-c", _train_script(victim, 120)], check=True)
    a, b = load_sae(ref / "sae"), load_sae(victim / "sae")
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_resume_refuses_a_different_config(tmp_path):
    data, _ = planted(n=5000)
    cfg = TrainConfig(steps=20, batch_size=64, dtype="float32", hist_every=0, checkpoint_every=10)
    Trainer(SAEConfig(d_in=32, d_sae=64), cfg, tmp_path, batches_of(data, 64), progress=False).train()
    other = TrainConfig(steps=20, batch_size=64, dtype="float32", hist_every=0, checkpoint_every=10, l1_coeff=9.0)
    with pytest.raises(ValueError, match="different training config"):
        Trainer(SAEConfig(d_in=32, d_sae=64), other, tmp_path, batches_of(data, 64), progress=False).train()


@pytest.mark.parametrize("field,value", [("model_name", "another-model"), ("hook_name", "blocks.2.attn.hook_z"),
                                         ("processing", {"fold_value_biases": True}), ("dataset_path", "other.txt")])
def test_resume_and_reuse_refuse_an_sae_trained_on_other_data(tmp_path, field, value):
    """A checkpoint or a finished SAE in the folder came from other data (another model's store, hook, processing,
    corpus): continuing or reusing it would label old weights with the new data."""
    import dataclasses

    data, _ = planted(n=5000)
    cfg = TrainConfig(steps=20, batch_size=64, dtype="float32", hist_every=0, checkpoint_every=10)
    ours = SAEConfig(d_in=32, d_sae=64, model_name="tiny", hook_name="blocks.1.attn.hook_z", dataset_path="corpus.txt")
    theirs = dataclasses.replace(ours, **{field: value})
    tr = Trainer(ours, cfg, tmp_path / "ckpt", batches_of(data, 64), progress=False)
    tr.start(resume=False)
    for x in itertools.islice(batches_of(data, 64)(0), 10):
        tr.train_step(x)  # the checkpoint at step 10
    with pytest.raises(ValueError, match=f"holds an SAE trained on other data \\({field}: "):
        Trainer(theirs, cfg, tmp_path / "ckpt", batches_of(data, 64), progress=False).train()
    train_sae(ours, cfg, tmp_path / "run", batches_of(data, 64), progress=False)
    with pytest.raises(ValueError, match=f"holds an SAE trained on other data \\({field}: .*--restart"):
        train_sae(theirs, cfg, tmp_path / "run", batches_of(data, 64), progress=False)
    train_sae(theirs, cfg, tmp_path / "run", batches_of(data, 64), progress=False, resume=False)  # --restart retrains
    assert getattr(load_sae(tmp_path / "run" / "sae").cfg, field) == value


def test_nan_loss_stops_with_a_clear_error(tmp_path):
    data, _ = planted(n=5000)
    data[100:] = float("nan")
    cfg = TrainConfig(steps=50, batch_size=64, dtype="float32", hist_every=0, checkpoint_every=10, normalize_input=False,
                      init_b_dec_median=False)
    sae_cfg = SAEConfig(d_in=32, d_sae=64, hook_name="blocks.3.attn.hook_z")
    with pytest.raises(FloatingPointError, match=r"at step 0 \(hook blocks.3.attn.hook_z\); no checkpoint had been written"):
        Trainer(sae_cfg, cfg, tmp_path, batches_of(data, 64), progress=False).train()


def test_bf16_training_matches_fp32_closely(tmp_path):
    data, dirs = planted(n=50_000)
    results = {}
    for dt in ("float32", "bfloat16"):
        cfg = TrainConfig(steps=600, batch_size=256, lr=3e-3, l1_coeff=0.5, dtype=dt, hist_every=0, checkpoint_every=10_000)
        tr = Trainer(SAEConfig(d_in=32, d_sae=64), cfg, tmp_path / dt, batches_of(data, 256), progress=False)
        tr.train()
        results[dt] = tr.history[-1]["explained_var"]
    assert abs(results["float32"] - results["bfloat16"]) < 0.02, results


def test_training_writes_density_histograms(tmp_path):
    data, _ = planted(n=5000)
    cfg = TrainConfig(steps=20, batch_size=64, dtype="float32", hist_every=10, checkpoint_every=10)
    Trainer(SAEConfig(d_in=32, d_sae=64), cfg, tmp_path, batches_of(data, 64), progress=False).train()
    assert (tmp_path / "density_step10.png").stat().st_size > 1000


# ---- recipes, checkpoints, train_sae ----

def _small_trainer(recipe, out, data, steps=30, **extra):
    cfg = TrainConfig(recipe=recipe, k=3, steps=steps, batch_size=64, dtype="float32", hist_every=0, checkpoint_every=10,
                      resample_every=10, n_resamples=1, resample_inputs=256, resample_warmup=10, **extra)
    sae_cfg = sae_config_for(cfg, 32, "blocks.1.attn.hook_z", {"model": "m", "processing": {}, "context_size": 8, "first_pos": 1})
    return Trainer(sae_cfg, cfg, out, batches_of(data, 64), progress=False)


def _same(a, b):
    return torch.equal(a, b) if torch.is_tensor(a) else a == b


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_every_recipe_round_trips_its_state_through_a_checkpoint(recipe, tmp_path):
    data, _ = planted(n=5000)
    tr = _small_trainer(recipe, tmp_path, data, steps=25)  # last checkpoint: the final one, at step 25
    with torch.no_grad():
        tr.sae.b_enc[:10] = -1e4  # dead latents: l1 resamples at step 10, topk's AuxK has work
    tr.train()
    back = _small_trainer(recipe, tmp_path, data, steps=25)
    assert back.load_checkpoint()
    assert set(back.recipe.state_dict()) == set(tr.recipe.state_dict()) == set(type(tr.recipe).state_keys)
    for k, v in tr.recipe.state_dict().items():
        assert _same(back.recipe.state_dict()[k], v), k
    for k in Trainer.COUNTERS:
        assert _same(getattr(back, k), getattr(tr, k)), k
    for p, q in zip(tr.sae.parameters(), back.sae.parameters()):
        assert torch.equal(p, q)
        assert all(torch.equal(tr.opt.state[p][key], back.opt.state[q][key]) for key in ("exp_avg", "exp_avg_sq", "step"))
    if recipe == "l1":
        assert back.recipe.n_resampled == 1 and back.recipe.last_resample == 10
    assert back.recipe.tokens_seen == 25 * 64 and back.recipe.last_fired.max() == 25 * 64
    assert back.finished_sae().cfg.training["tokens_trained"] == 25 * 64
    if recipe in ("batchtopk", "matryoshka_batchtopk"):
        assert back.recipe.threshold > 0
    if recipe == "jumprelu":  # the thresholds are SAE parameters, trained by Adam
        assert not torch.equal(back.sae.log_threshold, torch.full((256,), math.log(tr.cfg.init_threshold)))


def test_a_checkpoint_from_before_the_recipes_kept_the_silence_count_resumes(tmp_path):
    """Older checkpoints held `tokens` and `last_fired` among the trainer's counters and no `tokens_seen` for an L1
    recipe: the recipe takes them from there."""
    from safetensors.torch import load_file, save_file

    data, _ = planted(n=5000)
    tr = _small_trainer("l1", tmp_path, data, steps=20)
    tr.train()
    state, meta = tmp_path / "checkpoint" / "state.safetensors", tmp_path / "checkpoint" / "state.json"
    t = load_file(str(state))
    t["last_fired"] = t.pop("recipe.last_fired")
    save_file(t, str(state))
    m = json.loads(meta.read_text())
    m["tokens"] = m["recipe"].pop("tokens_seen")
    meta.write_text(json.dumps(m))
    back = _small_trainer("l1", tmp_path, data, steps=20)
    assert back.load_checkpoint() and back.recipe.tokens_seen == tr.recipe.tokens_seen == 20 * 64
    assert torch.equal(back.recipe.last_fired, tr.recipe.last_fired)
    assert torch.equal(back.silent_mask(), tr.silent_mask())


def test_a_checkpoint_left_as_checkpoint_old_is_used(tmp_path):
    """A process killed between the two renames of a save leaves only checkpoint.old."""
    data, _ = planted(n=5000)
    tr = _small_trainer("l1", tmp_path, data, steps=20)
    tr.train()
    os.replace(tmp_path / "checkpoint", tmp_path / "checkpoint.old")
    back = _small_trainer("l1", tmp_path, data, steps=20)
    assert back.load_checkpoint() and back.step == 20
    torch.testing.assert_close(back.sae.W_dec, tr.sae.W_dec, rtol=0, atol=0)


def test_a_corrupt_checkpoint_falls_back_to_the_old_one_or_names_restart(tmp_path, capsys):
    data, _ = planted(n=5000)
    tr = _small_trainer("topk", tmp_path, data, steps=20)  # checkpoints at 10 and 20
    tr.train()
    shutil.copytree(tmp_path / "checkpoint", tmp_path / "checkpoint.old")  # as a kill after the second rename leaves it
    tr.save_checkpoint()  # a leftover checkpoint.old does not block the next save
    assert not (tmp_path / "checkpoint.old").exists()
    shutil.copytree(tmp_path / "checkpoint", tmp_path / "checkpoint.old")
    state = tmp_path / "checkpoint" / "state.safetensors"
    state.write_bytes(state.read_bytes()[:100])  # truncated
    back = _small_trainer("topk", tmp_path, data, steps=20)
    assert back.load_checkpoint() and back.step == 20
    assert "unreadable" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "checkpoint.old")
    with pytest.raises(ValueError, match="unreadable.*--restart"):
        _small_trainer("topk", tmp_path, data, steps=20).load_checkpoint()


def test_corrupt_and_pickled_sae_files_are_refused_in_one_line(tmp_path):
    import pickle

    d = tmp_path / "sae"
    save_sae(_random_sae(), d)
    (d / "sae_weights.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a readable .safetensors file"):
        load_sae(d)

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    run = tmp_path / "gpt2-small_L1_v9"
    with open(f"{run}.pt", "wb") as f:
        pickle.dump({"W_enc": Payload()}, f)
    (tmp_path / "gpt2-small_L1_v9_cfg.json").write_text(json.dumps({"model_name": "gpt2-small", "layer": 1}))
    with pytest.raises(ValueError, match="refusing to unpickle") as e:
        load_sae(f"{run}.pt")
    assert "weights_only" not in str(e.value)  # torch's own hint would be to unpickle it


def test_recipes_registry_drives_the_sae_config():
    meta = {"model": "m", "processing": {"p": 1}, "context_size": 8, "first_pos": 1, "corpus": "c"}
    for name, recipe in RECIPES.items():
        assert recipe.name == name
        cfg = sae_config_for(TrainConfig(recipe=name, k=5, expansion=2), 12, "blocks.3.attn.hook_q[2]", meta)
        assert cfg.architecture == recipe.architecture and cfg.d_sae == 24
        assert cfg.k == (5 if recipe.architecture == "topk" else None)
        assert (cfg.hook_name, cfg.hook_head_index, cfg.dataset_path) == ("blocks.3.attn.hook_q", 2, "c")
    assert RECIPES["topk"].architecture == "topk" and RECIPES["l1"].architecture == "standard"


def test_a_new_recipe_is_one_class_and_one_registry_entry(monkeypatch, tmp_path):
    from attnsae.sae.recipes import L1Recipe, StepOutput

    class MSEOnly(L1Recipe):  # L1's resampling and state, no sparsity penalty
        name = "mse_only"

        def loss(self, x, step):
            out = super().loss(x, step)
            return StepOutput((out.reconstruction - x).pow(2).sum(-1).mean(), out.feature_acts, out.reconstruction)

    monkeypatch.setitem(RECIPES, "mse_only", MSEOnly)
    data, _ = planted(n=5000)
    tr = _small_trainer("mse_only", tmp_path, data, steps=20)
    tr.train()
    assert isinstance(tr.recipe, MSEOnly) and tr.history[-1]["loss"] == pytest.approx(tr.history[-1]["mse"] * tr.scale**2)


def test_train_sae_trains_once_then_returns_the_saved_sae(tmp_path):
    data, _ = planted(n=5000)
    tr = _small_trainer("l1", tmp_path / "scratch", data, steps=20)
    calls = []

    def batches(start):
        calls.append(start)
        return batches_of(data, 64)(start)

    path = train_sae(tr.sae.cfg, tr.cfg, tmp_path / "run", batches, progress=False)
    assert path == tmp_path / "run" / "sae" and (tmp_path / "run" / "train" / "checkpoint").exists()
    want = load_sae(path).W_dec
    n = len(calls)
    assert train_sae(tr.sae.cfg, tr.cfg, tmp_path / "run", batches, progress=False) == path and len(calls) == n
    train_sae(tr.sae.cfg, tr.cfg, tmp_path / "run", batches, progress=False, resume=False)  # starts over
    assert len(calls) > n and torch.equal(load_sae(path).W_dec, want)


# ---- formats ----

def _random_sae(arch="standard"):  # jumprelu: thresholds exp(N(0, 1))
    cfg = SAEConfig(d_in=12, d_sae=24, architecture=arch, k=3 if arch == "topk" else None, model_name="m",
                    hook_name="blocks.1.attn.hook_z", processing={"fold_value_biases": False, "weights": "w"})
    sae = SAE(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_()
    return sae


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_save_load_roundtrip_and_sae_lens_layout(arch, tmp_path):
    from safetensors.torch import load_file

    sae = _random_sae(arch)
    save_sae(sae, tmp_path / "sae", feature_density=torch.full((24,), 0.01))
    raw = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    # the keys SAELens v6 load_from_disk needs, and the pre-6 flat ones
    assert raw["architecture"] == arch and raw["d_in"] == 12 and raw["d_sae"] == 24 and raw["dtype"] == "float32"
    assert raw["metadata"]["sae_lens_version"] >= "6" and raw["metadata"]["hook_name"] == "blocks.1.attn.hook_z"
    assert raw["hook_name"] == "blocks.1.attn.hook_z" and raw["hook_layer"] == 1
    assert raw["reshape_activations"] == "hook_z" and raw["apply_b_dec_to_input"] is True
    assert (raw.get("k") == 3) == (arch == "topk")
    w = load_file(str(tmp_path / "sae" / "sae_weights.safetensors"))
    want = {"W_enc": (12, 24), "b_enc": (24,), "W_dec": (24, 12), "b_dec": (12,)}
    want |= {"threshold": (24,)} if arch == "jumprelu" else {}
    assert {k: tuple(v.shape) for k, v in w.items()} == want
    assert torch.allclose(load_file(str(tmp_path / "sae" / "sparsity.safetensors"))["sparsity"], torch.full((24,), -2.0))
    back = load_sae(tmp_path / "sae")
    x = torch.randn(5, 12)
    torch.testing.assert_close(back(x).reconstruction, sae(x).reconstruction)
    assert back.cfg == sae.cfg


def test_loads_a_sae_lens_folder(tmp_path):
    from safetensors.torch import save_file

    sae = _random_sae()
    d = tmp_path / "saelens"
    d.mkdir()
    save_file({k: v.detach() for k, v in sae.state_dict().items()}, str(d / "sae_weights.safetensors"))
    (d / "cfg.json").write_text(json.dumps({
        "architecture": "standard", "d_in": 12, "d_sae": 24, "dtype": "float32", "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "metadata": {"sae_lens_version": "6.3.0", "model_name": "gpt2-small", "hook_name": "blocks.1.attn.hook_z",
                     "context_size": 128},
    }))
    got = load_sae(d)
    assert got.cfg.model_name == "gpt2-small" and got.cfg.hook_name == "blocks.1.attn.hook_z" and not got.cfg.apply_b_dec_to_input
    x = torch.randn(5, 12)
    torch.testing.assert_close(got(x).feature_acts, torch.relu(x @ sae.W_enc + sae.b_enc))
    raw = json.loads((d / "cfg.json").read_text())
    raw["normalize_activations"] = "layer_norm"
    (d / "cfg.json").write_text(json.dumps(raw))
    with pytest.raises(NotImplementedError, match="normalize_activations"):
        load_sae(d)


def _gated_folder(d, d_in=12, d_sae=24, seed=0):
    """A SAELens 6 "gated" folder (saes/gated_sae.py: W_enc, b_gate, r_mag, b_mag, W_dec, b_dec)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    w = {"W_enc": torch.randn(d_in, d_sae, generator=g) * 0.5, "b_gate": torch.randn(d_sae, generator=g) * 0.3,
         "r_mag": torch.randn(d_sae, generator=g) * 0.5, "b_mag": torch.randn(d_sae, generator=g) * 0.3,
         "W_dec": torch.randn(d_sae, d_in, generator=g), "b_dec": torch.randn(d_in, generator=g) * 0.1}
    d.mkdir()
    save_file(w, str(d / "sae_weights.safetensors"))
    (d / "cfg.json").write_text(json.dumps({
        "architecture": "gated", "d_in": d_in, "d_sae": d_sae, "dtype": "float32", "apply_b_dec_to_input": True,
        "normalize_activations": "none", "metadata": {"sae_lens_version": "6.54.12", "model_name": "gpt2-small",
                                                      "hook_name": "blocks.1.attn.hook_z"}}))
    return w


def test_a_gated_sae_loads_as_the_jumprelu_sae_it_equals(tmp_path):
    w = _gated_folder(tmp_path / "gated")
    got = load_sae(tmp_path / "gated")
    assert got.cfg.architecture == "jumprelu"
    x = torch.randn(200, 12)
    xc = x - w["b_dec"]
    gate = (xc @ w["W_enc"] + w["b_gate"]) > 0
    want = gate * torch.relu(xc @ (w["W_enc"] * w["r_mag"].exp()) + w["b_mag"])
    assert 0 < int(gate.sum()) < gate.numel()  # both sides of the gate are exercised
    torch.testing.assert_close(got(x).feature_acts, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got(x).reconstruction, want @ w["W_dec"] + w["b_dec"], atol=1e-4, rtol=1e-4)


@pytest.mark.peers
def test_sae_lens_gated_sae_equals_ours(tmp_path):
    sae_lens = peer("sae_lens")
    _gated_folder(tmp_path / "gated")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "gated"))
    ours = load_sae(tmp_path / "gated")
    z = torch.randn(50, 3, 4)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(z.flatten(-2)), theirs.encode(z.flatten(-2)), atol=1e-5, rtol=1e-5)


def test_loads_the_reference_code_release_format(tmp_path):
    """ckkissane/attention-output-saes: {run}.pt state dict + {run}_cfg.json."""
    run = "gpt2-small_L5_Hcat_z_lr1.20e-03_l11.00e+00_ds49152_bs4096_dc1.00e-06_rsanthropic_rie25000_nr4_v9"
    g = torch.Generator().manual_seed(0)
    state = {"W_enc": torch.randn(768, 96, generator=g), "W_dec": torch.randn(96, 768, generator=g),
             "b_enc": torch.randn(96, generator=g), "b_dec": torch.randn(768, generator=g)}
    torch.save(state, tmp_path / f"{run}.pt")
    (tmp_path / f"{run}_cfg.json").write_text(json.dumps({
        "seed": 49, "batch_size": 4096, "lr": 0.0012, "l1_coeff": 1.0, "dict_mult": 0.125, "seq_len": 128,
        "model_name": "gpt2-small", "site": "z", "layer": 5, "head": "cat", "act_name": "blocks.5.attn.hook_z",
        "act_size": 768, "dict_size": 96, "name": run,
    }))
    sae = load_sae(tmp_path / f"{run}.pt")
    assert sae.cfg.hook_name == "blocks.5.attn.hook_z" and (sae.cfg.d_in, sae.cfg.d_sae) == (768, 96)
    assert sae.cfg.processing["fold_value_biases"] is True  # TransformerLens' default processing
    x = torch.randn(3, 768, generator=g)
    want_f = torch.relu((x - state["b_dec"]) @ state["W_enc"] + state["b_enc"])
    torch.testing.assert_close(sae(x).feature_acts, want_f)
    torch.testing.assert_close(sae(x).reconstruction, want_f @ state["W_dec"] + state["b_dec"])
    for alias in (tmp_path / run, tmp_path / f"{run}_cfg.json"):  # the run name (it holds dots) or its config
        torch.testing.assert_close(load_sae(alias).W_enc, sae.W_enc)
    (tmp_path / f"{run}_cfg.json").unlink()
    with pytest.raises(FileNotFoundError, match="_cfg.json"):
        load_sae(tmp_path / f"{run}.pt")


def test_sae_lens_topk_with_decoder_norm_rescaling_is_folded_on_load(tmp_path):
    """SAELens' TopK training default (rescale_acts_by_decoder_norm=True) ranks pre * |W_dec_i| and decodes
    f / |W_dec_i| @ W_dec; the loaded SAE must compute exactly that."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(1)
    state = {"W_enc": torch.randn(12, 24, generator=g), "b_enc": torch.randn(24, generator=g),
             "W_dec": torch.randn(24, 12, generator=g) * torch.rand(24, 1, generator=g) * 3,  # rows far from unit norm
             "b_dec": torch.randn(12, generator=g)}
    d = tmp_path / "topk"
    d.mkdir()
    save_file(state, str(d / "sae_weights.safetensors"))
    (d / "cfg.json").write_text(json.dumps({
        "architecture": "topk", "d_in": 12, "d_sae": 24, "k": 4, "dtype": "float32", "apply_b_dec_to_input": True,
        "normalize_activations": "none", "rescale_acts_by_decoder_norm": True,
        "metadata": {"sae_lens_version": "6.54.12", "model_name": "gpt2-small", "hook_name": "blocks.1.attn.hook_z"}}))
    x = torch.randn(32, 12, generator=g)
    norms = state["W_dec"].norm(dim=1)
    pre = ((x - state["b_dec"]) @ state["W_enc"] + state["b_enc"]) * norms  # SAELens' TopKSAE.encode
    vals, idx = pre.topk(4, dim=-1)
    f = torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))
    want = (f / norms) @ state["W_dec"] + state["b_dec"]  # its decode
    got = load_sae(d)
    torch.testing.assert_close(got.encode(x), f)
    torch.testing.assert_close(got(x).reconstruction, want)
    torch.testing.assert_close(got.W_dec.norm(dim=1), torch.ones(24))


def test_load_refuses_weights_its_architecture_does_not_have(tmp_path):
    """A threshold in a folder that says "standard" would otherwise load as plain ReLU, silently another function."""
    from safetensors.torch import save_file

    sae = _random_sae()
    save_sae(sae, tmp_path / "sae")
    state = {k: v.detach() for k, v in sae.state_dict().items()} | {"threshold": torch.ones(24)}
    save_file(state, str(tmp_path / "sae" / "sae_weights.safetensors"))
    with pytest.raises(ValueError, match=r"weights hold \['threshold'\], which a 'standard' SAE does not have"):
        load_sae(tmp_path / "sae")


def test_load_refuses_non_finite_weights(tmp_path):
    from safetensors.torch import save_file

    sae = _random_sae()
    save_sae(sae, tmp_path / "sae")
    state = {k: v.detach().clone() for k, v in sae.state_dict().items()}
    state["W_dec"][3, 2] = float("nan")
    save_file(state, str(tmp_path / "sae" / "sae_weights.safetensors"))
    with pytest.raises(ValueError, match="W_dec holds NaN or inf"):
        load_sae(tmp_path / "sae")


def test_load_rejects_shape_mismatch_and_missing_files(tmp_path):
    from safetensors.torch import save_file

    sae = _random_sae()
    save_sae(sae, tmp_path / "sae")
    save_file({"W_enc": torch.zeros(12, 24)}, str(tmp_path / "sae" / "sae_weights.safetensors"))
    with pytest.raises(ValueError, match="lack"):
        load_sae(tmp_path / "sae")
    with pytest.raises(FileNotFoundError, match="not an SAE folder"):
        load_sae(tmp_path)


@pytest.mark.peers
@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_sae_lens_itself_loads_our_folder(arch, tmp_path):
    """make test runs it in .venv-peers (scripts/setup_peers.sh), where SAELens is installed."""
    sae_lens = peer("sae_lens")
    sae = _random_sae(arch)
    save_sae(sae, tmp_path / "sae")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "sae"))
    z = torch.randn(7, 3, 4)  # hook_z shape [.., n_heads, d_head]; 3 * 4 = d_in
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(z), sae.encode(z.flatten(-2)))
        torch.testing.assert_close(theirs(z).flatten(-2), sae(z.flatten(-2)).reconstruction)


def _gemma_scope_weights(d_in, d_sae, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"w_enc": torch.randn(d_in, d_sae, generator=g) * 0.3, "w_dec": torch.randn(d_sae, d_in, generator=g),
            "b_enc": torch.randn(d_sae, generator=g) * 0.1, "b_dec": torch.randn(d_in, generator=g),
            "threshold": torch.rand(d_sae, generator=g) * 0.5}


def _jumprelu(w, x):
    pre = x @ w["w_enc"] + w["b_enc"]  # Gemma Scope subtracts no b_dec first
    f = pre * (pre > w["threshold"])
    return f, f @ w["w_dec"] + w["b_dec"]


def test_gemma_scope_folders_and_hub_cache_load_and_splice(tmp_path, monkeypatch):
    """Gemma Scope 2 (params.safetensors + config.json, Gemma 3) and Gemma Scope (params.npz) attention SAEs, in their
    published layouts, built locally: the function, the hook, and the model they splice into; and the hub path
    owner/repo/folder from a local Hugging Face cache, offline."""
    import numpy as np
    from safetensors.torch import save_file as save_st

    from attnsae.evals.splice import IncompatibleSAE, check_compatible
    from attnsae.models import from_hf
    from tests.conftest import hf_tiny

    model = from_hf(hf_tiny("gemma3"), weights="random")
    d_in = model.cfg.n_heads * model.cfg.d_head
    w = _gemma_scope_weights(d_in, 16)
    x = torch.randn(5, d_in)
    want_f, want_x = _jumprelu(w, x)
    scope2 = tmp_path / "attn_out" / "layer_1_width_16k_l0_small"
    scope2.mkdir(parents=True)
    save_st(w, str(scope2 / "params.safetensors"))
    (scope2 / "config.json").write_text(json.dumps({"architecture": "jump_relu", "model_name": "gemma-v3-270m-pt",
                                                     "hf_hook_point_in": "model.layers.1.self_attn.o_proj.input"}))
    sae = load_sae(scope2)
    assert (sae.cfg.hook_name, sae.cfg.model_name, sae.cfg.architecture) == ("blocks.1.attn.hook_z", "google/gemma-3-270m",
                                                                             "jumprelu")
    out = sae(x)
    torch.testing.assert_close(out.feature_acts, want_f)
    torch.testing.assert_close(out.reconstruction, want_x)
    model.cfg.name = "gemma3-270m"  # the offline alias of google/gemma-3-270m (quantized from it)
    check_compatible(model, sae)
    model.cfg.name = "smollm2-135m"
    with pytest.raises(IncompatibleSAE, match="trained on 'google/gemma-3-270m'"):
        check_compatible(model, sae)

    scope1 = tmp_path / "gemma-scope-2b-pt-att" / "layer_1" / "width_16k" / "average_l0_5"
    scope1.mkdir(parents=True)
    np.savez(scope1 / "params.npz", **{k.replace("w_", "W_"): v.numpy() for k, v in w.items()})
    old = load_sae(scope1)
    assert old.cfg.hook_name == "blocks.1.attn.hook_z"
    torch.testing.assert_close(old(x).reconstruction, want_x)

    import huggingface_hub.constants as hub

    cache, commit = tmp_path / "hub", "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--google--gemma-scope-2-270m-pt"
    shutil.copytree(scope2, repo / "snapshots" / commit / "attn_out" / scope2.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    from_hub = load_sae(f"google/gemma-scope-2-270m-pt/attn_out/{scope2.name}")
    torch.testing.assert_close(from_hub(x).reconstruction, want_x)
    with pytest.raises(FileNotFoundError, match="not in the local cache|neither a local path"):
        load_sae("google/gemma-scope-2-270m-pt/attn_out/layer_9_width_16k_l0_small")


def test_the_papers_gpt2_small_sae_splices_into_gpt2_processed_to_match(tmp_path, monkeypatch):
    """A reference-format SAE (gpt2-small, fold_value_biases, TransformerLens weights) fits load_model("gpt2") once
    its value biases are folded, which model_for_saes does; unfolded, or on another model, it is refused."""
    from attnsae.evals.splice import IncompatibleSAE, check_compatible, model_for_saes
    from attnsae.models.loading import fold_value_biases_, from_hf
    from tests.conftest import hf_tiny

    hf = hf_tiny("gpt2")
    run = "gpt2-small_L1_Hcat_z_lr1.20e-03_l11.00e+00_ds128_v9"
    d_in = hf.config.n_embd
    torch.save({"W_enc": torch.randn(d_in, 8), "W_dec": torch.randn(8, d_in), "b_enc": torch.zeros(8),
                "b_dec": torch.zeros(d_in)}, tmp_path / f"{run}.pt")
    (tmp_path / f"{run}_cfg.json").write_text(json.dumps({"model_name": "gpt2-small", "site": "z", "layer": 1,
                                                          "act_size": d_in, "dict_size": 8, "seq_len": 32}))
    sae = load_sae(tmp_path / run)
    plain = from_hf(hf, weights="hf:gpt2")
    plain.cfg.name = "gpt2"
    with pytest.raises(IncompatibleSAE, match="fold_value_biases: SAE trained with True, model has False"):
        check_compatible(plain, sae)
    folded = fold_value_biases_(from_hf(hf, weights="hf:gpt2"))
    folded.cfg.name = "gpt2"
    check_compatible(folded, sae)  # TransformerLens's other processing leaves hook_z as it is: not a mismatch
    folded.cfg.name = "smollm2-135m"
    with pytest.raises(IncompatibleSAE, match="trained on 'gpt2-small'"):
        check_compatible(folded, sae)

    asked = {}

    def fake_load(name, **kw):
        asked.update(kw, name=name)
        model = from_hf(hf, weights="hf:gpt2")
        return fold_value_biases_(model) if kw.get("fold_value_biases") else model

    monkeypatch.setattr("attnsae.models.load_model", fake_load)
    model = model_for_saes([sae], device="cpu")
    assert asked["name"] == "gpt2" and asked["fold_value_biases"] is True
    model.cfg.name = "gpt2"
    check_compatible(model, sae)


def test_lr_warms_up_linearly_then_decays(tmp_path):
    cfg = TrainConfig(lr=1e-3, lr_warmup=10, steps=100, lr_decay_frac=0.2)
    tr = Trainer(SAEConfig(d_in=4, d_sae=8), cfg, tmp_path, lambda s: iter(()), progress=False)
    assert [tr.lr_at(s) for s in (0, 4, 9, 10, 50)] == pytest.approx([1e-4, 5e-4, 1e-3, 1e-3, 1e-3])
    assert tr.lr_at(90) == pytest.approx(0.5e-3)
