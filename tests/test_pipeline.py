"""The whole job on the real offline model, at a size CI can afford."""

import json

import pytest

from attnsae.data import WindowSpec, load_windows
from attnsae.evals import fidelity
from attnsae.jobs import JobConfig, run_job
from attnsae.sae import TrainConfig

from .conftest import real_model
from .test_evals import identity_sae, zero_sae

pytestmark = pytest.mark.slow


def test_perfect_and_zero_saes_on_smollm2_score_100_and_0():
    model = real_model("smollm2-135m")
    _, held = load_windows(model, WindowSpec(max_tokens=60_000))
    perfect = fidelity(model, identity_sae(model, layer=1), held[:2], progress=False)
    assert perfect.ce_recovered == pytest.approx(1.0, abs=1e-3) and perfect.kl_sae < 1e-6
    assert perfect.delta_ce_zero > 0.1  # zero-ablating layer 1 costs ~3 nats on SmolLM2 (README, per-layer table)
    zero = fidelity(model, zero_sae(model, layer=1), held[:2], progress=False)
    assert zero.ce_recovered == pytest.approx(0.0, abs=1e-3)


def test_main_job_end_to_end_on_smollm2(tmp_path):
    cfg = JobConfig(
        hook="blocks.2.attn.hook_z", out=str(tmp_path / "run"), train_windows=96, eval_windows=4,
        sparsity_windows=16, zero_ablation_windows=1, windows=WindowSpec(max_tokens=80_000),
        train=TrainConfig(steps=60, batch_size=512, checkpoint_every=20, hist_every=30, l1_coeff=2.0),
    )
    report_dir = run_job(cfg, progress=False)
    report = json.loads((report_dir / "report.json").read_text())
    sp, fid = report["sparsity"], report["fidelity"]
    assert report["model"] == "smollm2-135m" and report["d_in"] == 576 and report["d_sae"] == 8 * 576
    assert 0 < sp["l0"] < 4608 and sp["n_inputs"] == 16 * 127
    assert fid["ce_clean"] < fid["ce_zero"]
    assert fid["ce_sae_with_error"] == pytest.approx(fid["ce_clean"], abs=1e-3)
    assert fid["ce_recovered"] == pytest.approx((fid["ce_zero"] - fid["ce_sae"]) / (fid["ce_zero"] - fid["ce_clean"]))
    # CE and KL come from the model loaded in fp32, not the bf16 harvest model cast back (its weights stay rounded)
    exact = real_model("smollm2-135m")
    _, held = load_windows(exact, cfg.windows)
    assert fid["ce_clean"] == pytest.approx(fidelity(exact, identity_sae(exact, layer=2), held[:4], progress=False).ce_clean,
                                            abs=2e-6)
    assert len(report["zero_ablation_by_layer"]) == 30
    for f in ("report.md", "density.png", "zero_ablation_by_layer.png"):
        assert (report_dir / f).stat().st_size > 500
    sae_cfg = json.loads((tmp_path / "run" / "sae" / "cfg.json").read_text())
    assert sae_cfg["attnsae"]["processing"]["weights"] == "gguf:Q4_1" and sae_cfg["attnsae"]["dataset_path"] == "default"
    # re-running finds every stage done and only re-evaluates
    again = json.loads((run_job(cfg, progress=False) / "report.json").read_text())
    assert again["sparsity"]["l0"] == pytest.approx(sp["l0"])


def test_gemma3_hook_z_harvest_width(tmp_path):
    from attnsae.data import harvest

    model = real_model("gemma3-270m")
    _, held = load_windows(model, WindowSpec(max_tokens=40_000))
    store = harvest(model, held[:2], tmp_path / "g", ["blocks.5.attn.hook_z", "blocks.5.attn.hook_k[0]"], progress=False)
    assert store.d("blocks.5.attn.hook_z") == 4 * 256 and store.d("blocks.5.attn.hook_k[0]") == 256
    assert len(store) == 2 * 127
