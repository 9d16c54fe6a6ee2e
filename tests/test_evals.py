import numpy as np
import pytest
import torch

from attnsae.evals import IncompatibleSAE, ce_recovered, fidelity, sae_hook, sparsity
from attnsae.evals.metrics import activation_batches
from attnsae.models.loading import fold_value_biases_, from_hf
from attnsae.sae import SAE, SAEConfig

from .conftest import hf_tiny


def identity_sae(model, layer=1, hook="z", head=None):
    """A perfect reconstruction of blocks.{layer}.attn.hook_{hook} (one head's vector when `head` is given):
    x = relu(x) - relu(-x), with d_sae = 2 d_in."""
    from attnsae.models.hooks import act_name, width

    name = act_name(hook, layer)
    d = width(model.cfg, name + ("" if head is None else f"[{head}]"))
    sae = SAE(SAEConfig(d_in=d, d_sae=2 * d, model_name=model.cfg.name, hook_name=name, hook_head_index=head,
                        processing=model.processing.to_dict()))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def zero_sae(model, layer=1, hook="z", head=None):
    sae = identity_sae(model, layer, hook, head)
    with torch.no_grad():
        sae.W_dec.zero_()
    return sae


def test_ce_recovered_formula():
    assert ce_recovered(3.0, 3.0, 4.0) == 1.0
    assert ce_recovered(3.0, 4.0, 4.0) == 0.0
    assert ce_recovered(3.0, 3.25, 4.0) == pytest.approx(0.75)
    assert np.isnan(ce_recovered(3.0, 3.1, 3.0))


def test_perfect_reconstruction_scores_100_and_zero_scores_0(tiny, windows):
    model = tiny[0]
    perfect = fidelity(model, identity_sae(model), windows, progress=False)
    assert perfect.ce_recovered == pytest.approx(1.0, abs=1e-4)
    assert perfect.kl_sae == pytest.approx(0.0, abs=1e-6)
    # zero ablation moves the loss (on random text and weights it may lower it), so the ratio means something
    assert abs(perfect.delta_ce_zero) > 1e-5
    zero = fidelity(model, zero_sae(model), windows, progress=False)
    assert zero.ce_recovered == pytest.approx(0.0, abs=1e-4)
    assert zero.ce_sae == pytest.approx(zero.ce_zero, abs=1e-5)
    assert zero.kl_sae == pytest.approx(zero.kl_zero, rel=1e-4)
    # the error term restores the clean forward whatever the SAE
    assert zero.ce_sae_with_error == pytest.approx(zero.ce_clean, abs=1e-5)
    assert perfect.n_tokens == windows.shape[0] * (windows.shape[1] - 1)


@pytest.mark.parametrize("hook,head", [("q", 2), ("k", 1), ("v", 0), ("rot_q", 3), ("z", 4)])
def test_a_per_head_sae_is_scored_against_ablating_its_own_head(hook, head, windows):
    """An SAE on one head's q/k/v/z is compared with zero- and mean-ablating that head alone (SAELens issue #163):
    a zeroing SAE scores 0% and equals the zero baseline, a perfect one 100%, and the baselines leave the hook's
    other heads as they were."""
    import torch.nn.functional as F

    from attnsae.models.hooks import act_name

    model = from_hf(hf_tiny("llama"), weights="random")  # 6 query heads, 2 kv heads
    model.cfg.name = "tiny-llama"
    with torch.no_grad():  # sharper attention, so that ablating q or k moves the loss
        for w in (model.blocks[1].W_Q, model.blocks[1].W_K):
            w.mul_(8)
    zero = fidelity(model, zero_sae(model, 1, hook, head), windows, progress=False)
    perfect = fidelity(model, identity_sae(model, 1, hook, head), windows, progress=False)
    assert zero.ce_recovered == pytest.approx(0.0, abs=1e-4) and zero.ce_sae == pytest.approx(zero.ce_zero, abs=1e-6)
    assert perfect.ce_recovered == pytest.approx(1.0, abs=1e-4)
    name = act_name(hook, 1)
    tokens = torch.from_numpy(np.asarray(windows, dtype=np.int64))

    def ablate(head_only):
        def fn(act, _):
            act = act.clone()
            if head_only:
                act[:, 1:, head] = 0
            else:
                act[:, 1:] = 0
            return act
        with torch.no_grad():
            return model.loss(tokens, [(name, fn)]).item()

    assert zero.ce_zero == pytest.approx(ablate(head_only=True), rel=1e-5)
    assert abs(ablate(head_only=False) - zero.ce_zero) > 1e-3  # the whole-hook baseline would be another number
    with torch.no_grad():  # the mean baseline: this head's mean vector, the other heads untouched
        x = model.run_with_cache(tokens, [name])[1][name]
        mean = x[:, 1:, head].float().mean((0, 1))

        def put_mean(act, _):
            act = act.clone()
            act[:, 1:, head] = mean
            return act
        logits = model.run_with_hooks(tokens, [(name, put_mean)])
        ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()).item()
    assert zero.ce_mean == pytest.approx(ce, rel=1e-5)


def test_a_partial_reconstruction_lands_between(tiny, windows):
    model = tiny[0]
    sae = identity_sae(model)
    with torch.no_grad():
        sae.W_dec.mul_(0.5)  # half of z: CE in between clean and zero ablation
    r = fidelity(model, sae, windows, progress=False)
    assert min(r.ce_clean, r.ce_zero) < r.ce_sae < max(r.ce_clean, r.ce_zero) and 0 < r.ce_recovered < 1


def test_fidelity_many_equals_each_splice_in_a_whole_forward(tiny, windows):
    """The shared clean forward and the splices that start at the SAE's block give what a whole forward with the
    hook gives, for SAEs at different layers evaluated together."""
    import torch.nn.functional as F

    from attnsae.evals.metrics import fidelity_many
    from attnsae.evals.splice import mean_hook, zero_hook

    model = tiny[0]
    saes = [identity_sae(model, 0), zero_sae(model, 1)]
    with torch.no_grad():
        saes[0].W_dec.mul_(0.5)
    results = fidelity_many(model, saes, windows, batch_size=3, progress=False)
    tokens = torch.from_numpy(np.asarray(windows, dtype=np.int64))
    with torch.no_grad():
        clean_logp = F.log_softmax(model(tokens)[:, :-1].float(), -1)

        def ce_kl(fn, hook):
            logp = F.log_softmax(model.run_with_hooks(tokens, [(hook, fn)])[:, :-1].float(), -1)
            ce = F.nll_loss(logp.flatten(0, 1), tokens[:, 1:].flatten()).item()
            return ce, (clean_logp.exp() * (clean_logp - logp)).sum(-1).mean().item()

        for sae, r in zip(saes, results):
            hook = sae.cfg.hook_name
            mean = model.run_with_cache(tokens, [hook])[1][hook][:, 1:].float().mean(dim=(0, 1))
            want = {"sae": ce_kl(sae_hook(sae), hook), "zero": ce_kl(zero_hook(1), hook),
                    "mean": ce_kl(mean_hook(mean, 1), hook)}
            for key, (ce, kl) in want.items():
                assert getattr(r, f"ce_{key}") == pytest.approx(ce, rel=1e-5)
                assert getattr(r, f"kl_{key}") == pytest.approx(kl, rel=1e-4, abs=1e-7)
    assert results[0].ce_clean == results[1].ce_clean and results[0].ce_sae != results[1].ce_sae


def test_zero_ablation_by_layer_equals_each_ablation_in_a_whole_forward(tiny, windows):
    from attnsae.evals.metrics import zero_ablation_by_layer
    from attnsae.evals.splice import zero_hook
    from attnsae.models.hooks import act_name

    model = tiny[0]
    rows = zero_ablation_by_layer(model, windows, batch_size=5, progress=False)  # 24 windows: a short last batch
    tokens = torch.from_numpy(np.asarray(windows, dtype=np.int64))
    with torch.no_grad():
        clean = model.loss(tokens).item()
        for r in rows:
            zero = model.loss(tokens, [(act_name("z", r["layer"]), zero_hook(1))]).item()
            assert r["ce_clean"] == pytest.approx(clean, rel=1e-5) and r["ce_zero"] == pytest.approx(zero, rel=1e-5)
            assert r["delta_ce_zero"] == pytest.approx(zero - clean, rel=1e-4, abs=1e-6)
    assert [r["layer"] for r in rows] == list(range(model.cfg.n_layers))


def test_sparsity_counts_l0_dead_and_explained_variance(tiny, windows):
    model = tiny[0]
    sae = identity_sae(model)
    with torch.no_grad():
        sae.b_enc[:3] = -1e6  # three features that can never fire
    res, density = sparsity(sae, activation_batches(model, sae, windows), progress=False)
    acts = torch.cat(list(activation_batches(model, sae, windows)))
    assert res.n_inputs == len(acts) == windows.shape[0] * (windows.shape[1] - 1)
    assert res.n_dead >= 3 and (density[:3] == 0).all()
    nonzero = ((acts[:, 3:] > 0).sum() + (acts < 0).sum()).item() / len(acts)
    assert res.l0 == pytest.approx(nonzero, rel=1e-6)
    perfect, _ = sparsity(identity_sae(model), activation_batches(model, sae, windows), progress=False)
    assert perfect.explained_variance == pytest.approx(1.0, abs=1e-6) and perfect.mse < 1e-10


def test_splice_with_edit_and_error_term_zero_ablates_one_feature(tiny, windows):
    model = tiny[0]
    sae = identity_sae(model)
    tokens = torch.from_numpy(windows[:2].astype(np.int64))
    name = sae.cfg.hook_name
    _, clean = model.run_with_cache(tokens, [name])
    j = int((clean[name].flatten(2)[:, 1:] > 0).sum((0, 1)).argmax())  # a feature (dimension) that fires somewhere

    def kill(f):
        f = f.clone()
        f[..., j] = 0
        return f

    _, edited = model.run_with_hooks(tokens, [(name, sae_hook(sae, keep_error=True, edit=kill))], cache=[name])
    diff = edited[name].flatten(2) - clean[name].flatten(2)
    # only dimension j changes (where it was positive), and only at positions >= 1
    assert diff[:, 0].abs().max() == 0
    others = torch.ones(diff.shape[-1], dtype=torch.bool)
    others[j] = False
    assert (diff[:, 1:, others].abs().max() == 0) and diff[:, 1:, j].abs().max() > 0


def test_incompatible_saes_are_refused_with_reasons(tiny, windows):
    model = tiny[0]
    bad_width = SAE(SAEConfig(d_in=model.cfg.d_attn + 1, d_sae=8, hook_name="blocks.1.attn.hook_z", model_name=model.cfg.name))
    with pytest.raises(IncompatibleSAE, match="trained on another model"):
        fidelity(model, bad_width, windows, progress=False)
    bad_hook = identity_sae(model)
    bad_hook.cfg.hook_name = "blocks.99.attn.hook_z"
    with pytest.raises(IncompatibleSAE, match="does not exist"):
        fidelity(model, bad_hook, windows, progress=False)
    other_model = identity_sae(model)
    other_model.cfg.model_name = "someone-else"
    with pytest.raises(IncompatibleSAE, match="trained on 'someone-else'"):
        fidelity(model, other_model, windows, progress=False)


def test_sae_from_a_differently_processed_model_is_refused(windows):
    raw = from_hf(hf_tiny("gpt2"), weights="random")
    raw.cfg.name = "tiny"
    sae = identity_sae(raw)  # records fold_value_biases=False
    folded = fold_value_biases_(from_hf(hf_tiny("gpt2"), weights="random"))
    folded.cfg.name = "tiny"
    with pytest.raises(IncompatibleSAE, match="processed differently.*fold_value_biases"):
        fidelity(folded, sae, windows, progress=False)
    fidelity(raw, sae, windows[:2], progress=False)  # the matching model is fine


def test_mean_ablation_baseline_equals_an_sae_that_outputs_the_mean(tiny, windows):
    from attnsae.evals.metrics import _mean_activations

    model = tiny[0]
    sae = zero_sae(model)
    mean = _mean_activations(model, [sae], windows, 8)[0].flatten()
    with torch.no_grad():
        sae.b_dec.copy_(mean)  # reconstruction = the mean whatever the input
    r = fidelity(model, sae, windows, progress=False)
    assert r.ce_sae == pytest.approx(r.ce_mean, abs=1e-5) and r.kl_sae == pytest.approx(r.kl_mean, rel=1e-4)
    assert r.kl_mean > 0 and r.ce_mean != pytest.approx(r.ce_zero)


@pytest.mark.parametrize("delta_zero,lead", [(0.05, "ill-conditioned at this layer"), (1.8, "means something here")])
def test_the_main_report_leads_with_the_fidelity_numbers_that_mean_something(delta_zero, lead, tmp_path):
    from attnsae.jobs.main import write_report

    fid = {"ce_clean": 3.0, "ce_sae": 3.01, "ce_zero": 3.0 + delta_zero, "ce_mean": 3.02, "ce_recovered": 0.8,
           "delta_ce_sae": 0.01, "delta_ce_zero": delta_zero, "kl_sae": 0.01, "kl_zero": 0.1, "kl_mean": 0.04,
           "ce_sae_with_error": 3.0, "n_tokens": 1000}
    sp = {"l0": 15.0, "explained_variance": 0.7, "n_dead": 3, "n_dense": 0, "n_inputs": 101_600, "dead_threshold": 1e-5,
          "dense_threshold": 0.1}
    write_report({"model": "m", "hook": "blocks.1.attn.hook_z", "d_in": 8, "d_sae": 64, "recipe": "batchtopk",
                  "tokens_trained": 10, "sparsity": sp, "fidelity": fid}, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "trained on 10 activations" in md
    assert lead in md and md.index(lead) < md.index("ΔCE vs clean") < md.index("L0 (held-out)")
    assert "| ΔCE vs clean (nats) | +0.0100 |" in md and "0.25 × the mean-ablation KL" in md


def test_the_report_of_an_sae_trained_elsewhere_says_it_has_no_training_record(tmp_path):
    """SAELens folders and the paper's .pt files carry no tokens_trained; the report must still be written."""
    from attnsae.jobs.main import write_report

    fid = dict.fromkeys(["ce_clean", "ce_sae", "ce_zero", "ce_mean", "ce_recovered", "delta_ce_sae", "delta_ce_zero",
                         "kl_sae", "kl_zero", "ce_sae_with_error"], 0.1) | {"kl_mean": 0.2, "n_tokens": 10}
    sp = {"l0": 1.0, "explained_variance": 0.5, "n_dead": 0, "n_dense": 0, "n_inputs": 10, "dead_threshold": 1e-5,
          "dense_threshold": 0.1}
    write_report({"model": "gpt2", "hook": "blocks.5.attn.hook_z", "d_in": 8, "d_sae": 64, "recipe": None,
                  "tokens_trained": None, "sparsity": sp, "fidelity": fid}, tmp_path)
    assert "no training record" in (tmp_path / "report.md").read_text()
