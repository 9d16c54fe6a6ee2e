"""The CUDA path: the same numbers on a GPU as on the CPU. Skipped without a CUDA device (scripts/gpu_check.sh
runs them on a GPU machine)."""

import numpy as np
import pytest
import torch

from attnsae.data import harvest
from attnsae.evals import activation_batches, fidelity, sparsity
from attnsae.models import resolve_device

from .test_attribution import random_sae

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture
def windows():
    return np.random.default_rng(0).integers(3, 101, size=(6, 16)).astype(np.int32)


def test_forward_and_hooks_match_the_cpu(tiny, windows):
    model, _ = tiny
    tokens = torch.from_numpy(windows.astype(np.int64))
    names = ["blocks.1.attn.hook_z", "blocks.1.attn.hook_pattern"]
    logits, cache = model.run_with_cache(tokens, names, stop_early=False)
    gpu = model.to(resolve_device("cuda"))
    logits_g, cache_g = gpu.run_with_cache(tokens, names, stop_early=False)
    torch.testing.assert_close(logits_g.cpu(), logits, atol=1e-4, rtol=1e-4)
    for n in names:
        torch.testing.assert_close(cache_g[n].cpu(), cache[n], atol=1e-5, rtol=1e-4)


def test_fidelity_and_sparsity_match_the_cpu(tiny, windows):
    model, _ = tiny
    sae = random_sae(model)
    cpu_fid = fidelity(model, sae, windows, progress=False)
    cpu_sp, cpu_density = sparsity(sae, activation_batches(model, sae, windows), progress=False)
    model, sae = model.to("cuda"), sae.to("cuda")
    fid = fidelity(model, sae, windows, progress=False)
    sp, density = sparsity(sae, activation_batches(model, sae, windows), progress=False)
    for k, v in cpu_fid.to_dict().items():
        assert getattr(fid, k) == pytest.approx(v, rel=1e-4, abs=1e-5), k
    assert sp.l0 == pytest.approx(cpu_sp.l0, abs=1e-3) and density.device.type == "cpu"
    torch.testing.assert_close(density, cpu_density, atol=1e-6, rtol=0)


def test_harvest_from_a_gpu_model_stores_what_the_cpu_stores(tiny, windows, tmp_path):
    model, _ = tiny
    cpu = harvest(model, windows, tmp_path / "cpu", ["blocks.1.attn.hook_z"], dtype="float32", progress=False)
    gpu = harvest(model.to("cuda"), windows, tmp_path / "gpu", ["blocks.1.attn.hook_z"], dtype="float32", progress=False)
    rows = np.arange(len(cpu))
    torch.testing.assert_close(gpu.rows(rows), cpu.rows(rows), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("recipe,extra", [("topk", {}), ("batchtopk", {"firing_floor": 0.05})])
def test_training_on_the_gpu_follows_the_cpu_run(recipe, extra, tmp_path):
    """The same seed and batches on both devices: the same recipe state and close weights (fp32 matmuls); BatchTopK
    with a firing floor's selection biases (plain autograd on the GPU, the sparse step on the CPU)."""
    from attnsae.sae import SAEConfig, TrainConfig, Trainer

    x = torch.randn(4096, 16, generator=torch.Generator().manual_seed(0))

    def batches(start):
        for i in range(start, 10**9):
            yield x[(i * 64) % 4096:(i * 64) % 4096 + 64]

    saes = {}
    for device in ("cpu", "cuda"):
        cfg = TrainConfig(recipe=recipe, k=4, expansion=2, steps=40, batch_size=64, dtype="float32", checkpoint_every=20,
                          **extra)
        arch = "topk" if recipe == "topk" else "standard"
        t = Trainer(SAEConfig(d_in=16, d_sae=32, architecture=arch, k=4 if recipe == "topk" else None), cfg,
                    tmp_path / device, batches, False, device)
        t.train()
        assert t.fire_counts.device.type == device
        saes[device] = t.finished_sae()
    for k, v in saes["cpu"].state_dict().items():
        torch.testing.assert_close(saes["cuda"].state_dict()[k], v, atol=1e-3, rtol=1e-3)
