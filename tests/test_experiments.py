"""The head-role experiments find heads planted by construction."""

import json

import numpy as np
import pytest
import torch

from attnsae.experiments.head_scores import head_scores, top_heads
from attnsae.models.hooks import act_name


def plant_attention(layer: int, head: int, target):
    """Force one head to attend from each t to target(t, n_pos) (or to itself where that is None)."""
    def fn(scores, name):
        n_pos = scores.shape[-1]
        scores = scores.clone()
        planted = torch.full((n_pos, n_pos), float("-inf"))
        for t in range(n_pos):
            s = target(t, n_pos)
            planted[t, s if s is not None and 0 <= s <= t else t] = 0.0
        scores[:, head] = planted
        return scores
    return (act_name("attn_scores", layer), fn)


def test_planted_induction_previous_and_duplicate_heads_are_found(tiny):
    model, _ = tiny
    n = 10
    half = lambda t, n_pos: (n_pos - 1) // 2  # noqa: E731
    hooks = [
        plant_attention(1, 0, lambda t, p: t - half(t, p) + 1 if t > half(t, p) else None),  # induction
        plant_attention(1, 1, lambda t, p: t - 1),  # previous token
        plant_attention(0, 2, lambda t, p: t - half(t, p) if t > half(t, p) else None),  # duplicate token
    ]
    s = head_scores(model, n=n, batch=4, hooks=hooks)
    assert s["induction"].shape == (model.cfg.n_layers, model.cfg.n_heads)
    assert s["induction"][1, 0] == pytest.approx(1.0) and s["previous"][1, 1] == pytest.approx(1.0)
    assert s["duplicate"][0, 2] == pytest.approx(1.0)
    assert top_heads(s["induction"], 1)[0][:2] == (1, 0)
    assert top_heads(s["previous"], 1)[0][:2] == (1, 1)
    assert top_heads(s["duplicate"], 1)[0][:2] == (0, 2)
    # unplanted random heads spread attention: far below 1
    mask = np.ones_like(s["induction"], dtype=bool)
    mask[1, 0] = False
    assert s["induction"][mask].max() < 0.6


@pytest.fixture(scope="module")
def tiny_gpt2_with_tokenizer():
    from attnsae.models import from_hf, gpt2_tokenizer

    from .conftest import hf_tiny

    model = from_hf(hf_tiny("gpt2", vocab=50257), weights="random")
    model.tokenizer = gpt2_tokenizer()
    model.cfg.bos_token_id = 50256
    return model


def test_templates_reuse_slot_values_and_mark_only_answer_tokens(tiny_gpt2_with_tokenizer):
    from attnsae.experiments.head_ablation import TASKS, encode, fill

    model = tiny_gpt2_with_tokenizer
    pairs = fill(TASKS["digits"], 20, seed=1)
    for prompt, answer in pairs:
        noun, digit = prompt.split(" ")[0], prompt.split(",")[0].split(" ")[1]
        assert prompt.endswith(" " + noun) and answer == " " + digit
    url = fill(TASKS["url"], 3)
    assert all(p.split("v=")[1].startswith(a) for p, a in url)  # the id is repeated
    tokens, mask = encode(model, pairs + url)
    for row, m, (_, answer) in zip(tokens, mask, pairs + url, strict=True):
        predicted = row[1:][m[:-1]]  # tokens predicted at the marked positions
        assert model.tokenizer.decode(predicted.tolist()) == answer
    with pytest.raises(ValueError, match="exactly one '\\|'"):
        fill({"template": "no answer", "slots": {}}, 1)
    with pytest.raises(ValueError, match="'x' has no values"):
        fill({"template": "{x}|y", "slots": {}}, 1)


def test_head_ablation_matches_removing_the_head_from_W_O(tiny_gpt2_with_tokenizer):
    from attnsae.experiments.head_ablation import TASKS, ablate_heads, answer_loss, encode, fill

    model = tiny_gpt2_with_tokenizer
    c = model.cfg
    r = ablate_heads(model, 1, {"digits": TASKS["digits"]}, n=8)["digits"]
    assert len(r["delta_loss"]) == c.n_heads and any(abs(d) > 1e-6 for d in r["delta_loss"])
    tokens, mask = encode(model, fill(TASKS["digits"], 8))
    W_O = model.blocks[1].W_O.data
    for h in range(c.n_heads):
        saved = W_O[h * c.d_head:(h + 1) * c.d_head].clone()
        W_O[h * c.d_head:(h + 1) * c.d_head] = 0
        try:
            assert answer_loss(model, tokens, mask) - r["clean_loss"] == pytest.approx(r["delta_loss"][h], abs=1e-5)
        finally:
            W_O[h * c.d_head:(h + 1) * c.d_head] = saved
    # a head that writes nothing has no effect when ablated
    W_O[:c.d_head] = 0
    assert ablate_heads(model, 1, {"digits": TASKS["digits"]}, n=8)["digits"]["delta_loss"][0] == pytest.approx(0, abs=1e-6)


def test_prefix_dataset_matches_exactly_k_tokens(tiny):
    from attnsae.experiments.induction import prefix_dataset

    model, _ = tiny
    for k in (1, 3):
        tokens, pos_b = prefix_dataset(model, k, n=16)
        L = tokens.shape[1]
        assert torch.equal(tokens[:, pos_b - k:pos_b], tokens[:, L - k:])  # x_1..x_k repeated at the end
        assert (tokens[:, pos_b - k - 1] != tokens[:, L - k - 1]).all()  # and not one token more


def test_head_dla_sums_to_the_layers_direct_logit_effect(tiny):
    from attnsae.experiments.induction import head_dla, prefix_dataset

    model, _ = tiny
    c = model.cfg
    tokens, pos_b = prefix_dataset(model, 2, n=4)
    names = ["blocks.1.attn.hook_z", "blocks.1.attn.hook_result", "blocks.1.hook_attn_out", "ln_final.hook_scale"]
    _, cache = model.run_with_cache(tokens, names + (["blocks.1.ln1_post.hook_scale"] if c.post_norms else []), stop_early=False)
    last, answer = tokens.shape[1] - 1, tokens[:, pos_b]
    dla = head_dla(model, cache, 1, last, answer)
    out = cache["blocks.1.hook_attn_out"][:, last]
    if c.biases:
        out = out - model.blocks[1].b_O
    if c.norm == "layernorm":
        out = out - out.mean(-1, keepdim=True)
    gain = model.ln_final_w + c.norm_gain_offset  # Gemma stores norm gains as (gain - 1)
    want = ((out / cache["ln_final.hook_scale"][:, last] * gain) * model.W_U[:, answer].T).sum(-1)
    torch.testing.assert_close(dla.sum(-1), want.detach(), atol=1e-4, rtol=1e-4)


def test_a_planted_induction_head_attends_to_the_target_at_every_prefix_length(tiny):
    from attnsae.experiments.induction import prefix_length_curves

    model, _ = tiny
    filler = 20

    def target(t, n_pos):  # last position -> B
        k = (n_pos - 2 * filler - 3) // 2  # L = 2 filler + 2k + 3
        return 1 + filler + k if t == n_pos - 1 else t - 1

    hook = plant_attention(1, 1, target)
    orig = model.run_with_cache

    def with_plant(tokens, names, stop_early=True):
        return model.run_with_hooks(tokens, [hook], cache=names)

    model.run_with_cache = with_plant
    try:
        r = prefix_length_curves(model, [(1, 1), (1, 0)], lengths=[1, 2, 4], n=4)
    finally:
        model.run_with_cache = orig
    assert r["heads"]["1.1"]["induction"] == pytest.approx([1.0, 1.0, 1.0])
    assert max(r["heads"]["1.0"]["induction"]) < 0.6


def test_prefix_length_counts_the_matching_run():
    from attnsae.experiments.induction import prefix_length

    t = [0, 5, 6, 7, 8, 9, 6, 7, 8]  # at 8, "6 7 8" repeats the tokens before src 5 (9)
    assert prefix_length(t, 8, 5) == 3
    assert prefix_length(t, 8, 5, cap=2) == 2
    assert prefix_length(t, 8, 4) == 0  # t[3] = 7 != 8
    assert prefix_length([0, 3, 4, 9, 3, 4], 5, 3) == 2  # stops at BOS, never matches position 0


def plant_prefix_head(layer: int, head: int, min_prefix: int, held: dict):
    """A head that attends from each token to the latest source whose prefix match with it is at
    least min_prefix long (else to BOS); it reads the tokens from held['tokens']."""
    from attnsae.experiments.induction import prefix_length

    def fn(scores, name):
        scores = scores.clone()
        for b, row in enumerate(held["tokens"].tolist()):
            planted = torch.full(scores.shape[-2:], float("-inf"))
            for d in range(len(row)):
                src = [s for s in range(2, d + 1) if prefix_length(row, d, s) >= min_prefix]
                planted[d, src[-1] if src else 0] = 0.0
            scores[b, head] = planted
        return scores
    return (act_name("attn_scores", layer), fn)


def test_real_text_prefix_lengths_and_corruption_separate_long_and_short_prefix_heads(tiny):
    """Fig. 19b/4b by construction: a planted long-prefix head only attends with prefixes >= 2 and
    stops after the corruption to a 1-token prefix; a planted 1-prefix head keeps attending."""
    from attnsae.experiments.induction import corpus_prefix_lengths, corrupt_long_prefix, random_token_range

    model, _ = tiny
    lo, hi = random_token_range(model)
    g = torch.Generator().manual_seed(0)
    half = torch.stack([lo + torch.randperm(hi - lo, generator=g)[:12] for _ in range(6)])  # no repeats inside
    windows = torch.cat([torch.full((6, 1), model.cfg.bos_token_id or 0), half, half], 1)
    held = {}
    hooks = [plant_prefix_head(1, 0, 2, held), plant_prefix_head(1, 1, 1, held)]
    orig = model.run_with_cache

    def planted(tokens, names, stop_early=True):
        held["tokens"] = tokens
        return model.run_with_hooks(tokens, hooks, cache=names)

    model.run_with_cache = planted
    try:
        found = corpus_prefix_lengths(model, [(1, 0), (1, 1)], windows, cap=9, batch=4, progress=False)
        corrupted = corrupt_long_prefix(model, [(1, 0), (1, 1)], windows, found, n=20)
    finally:
        model.run_with_cache = orig
    # second copy offsets j = 0..11 have prefix min(j + 1, 9); the long head skips j = 0
    want_long = [0, 0] + [6] * 7 + [6 * 4]
    assert found["1.0"]["counts"] == want_long
    assert found["1.1"]["counts"] == [0, 6] + want_long[2:]
    assert corrupted["1.0"]["n"] == 20 and corrupted["1.0"]["clean"] == pytest.approx(1.0)
    assert corrupted["1.0"]["corrupted"] == pytest.approx(0.0, abs=1e-6)
    assert corrupted["1.1"]["clean"] == pytest.approx(1.0) and corrupted["1.1"]["corrupted"] == pytest.approx(1.0)
    assert corrupted["1.0"]["control"] == pytest.approx(1.0)  # an edit outside the match keeps the long prefix


def test_every_written_result_records_how_it_was_computed(tmp_path):
    import dataclasses

    from attnsae.results import Result, write

    @dataclasses.dataclass
    class Tiny(Result):
        name = "tiny"
        value: float = 1.5

        def summary(self):
            return "tiny"

    (path,) = write(Tiny(), tmp_path, {"model_dtype": "bfloat16"})
    assert json.loads(path.read_text()) == {"value": 1.5, "run": {"model_dtype": "bfloat16"}}
