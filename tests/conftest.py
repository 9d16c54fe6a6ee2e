import importlib
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network here: fail fast instead of retrying the hub

import numpy as np
import pytest
import torch

from attnsae.models import from_hf


def peer(name: str):
    """A peer library (sae_lens, transformer_lens). `make test` runs the tests marked `peers` in .venv-peers with
    ATTNSAE_REQUIRE_PEERS=1, where a missing peer fails instead of skipping; elsewhere they skip."""
    if os.environ.get("ATTNSAE_REQUIRE_PEERS"):
        return importlib.import_module(name)
    return pytest.importorskip(name)


def hf_tiny(family: str, seed: int = 0, vocab: int = 101):
    """A tiny random Hugging Face model of each family, with perturbed norm gains."""
    import transformers as t

    torch.manual_seed(seed)
    small = dict(hidden_size=96, num_attention_heads=6, num_key_value_heads=2, head_dim=16, intermediate_size=96,
                 vocab_size=101, rope_theta=1e4, bos_token_id=0, eos_token_id=1, pad_token_id=None)
    if family == "mistral":  # a window shorter than the test sequences, so that it matters
        return _perturbed(t.MistralForCausalLM(t.MistralConfig(num_hidden_layers=2, sliding_window=5, **small)))
    if family == "qwen2":
        return _perturbed(t.Qwen2ForCausalLM(t.Qwen2Config(num_hidden_layers=2, tie_word_embeddings=True, **small)))
    if family == "gemma":  # multi-query attention, as Gemma-2B
        return _perturbed(t.GemmaForCausalLM(t.GemmaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                                           num_key_value_heads=1, head_dim=16, intermediate_size=96,
                                                           vocab_size=101, bos_token_id=2, eos_token_id=1, pad_token_id=0)))
    if family == "gemma2":  # soft-caps small enough to bite on random weights
        return _perturbed(t.Gemma2ForCausalLM(t.Gemma2Config(
            num_hidden_layers=3, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            intermediate_size=96, vocab_size=101, sliding_window=6, query_pre_attn_scalar=16, attn_logit_softcapping=0.5,
            final_logit_softcapping=2.0, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            bos_token_id=2, eos_token_id=1, pad_token_id=0)))
    if family == "gpt_neox":  # Pythia's layout: parallel attention and MLP, rotary on a quarter of each head
        return _perturbed(t.GPTNeoXForCausalLM(t.GPTNeoXConfig(
            num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128, vocab_size=101,
            max_position_embeddings=64, rope_parameters={"rope_theta": 1e4, "partial_rotary_factor": 0.25,
                                                         "rope_type": "default"}, bos_token_id=0, eos_token_id=0)))
    if family == "gpt2":
        hf = t.GPT2LMHeadModel(t.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=vocab, n_positions=64,
                                            bos_token_id=0, eos_token_id=0))
    elif family == "llama":
        hf = t.LlamaForCausalLM(t.LlamaConfig(num_hidden_layers=2, **small))
    else:
        hf = t.Gemma3ForCausalLM(t.Gemma3TextConfig(
            num_hidden_layers=3, hidden_size=64, num_attention_heads=4, num_key_value_heads=1, head_dim=32,
            intermediate_size=96, vocab_size=101, sliding_window=8, query_pre_attn_scalar=32,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"], bos_token_id=2, eos_token_id=1,
            pad_token_id=0))
    return _perturbed(hf)


def _perturbed(hf):
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name or "ln" in name:
                p.add_(0.2 * torch.randn_like(p))
            elif "bias" in name:
                p.add_(0.05 * torch.randn_like(p))
    return hf.eval()


FAMILIES = ["gpt2", "llama", "gemma3", "mistral", "qwen2", "gemma", "gemma2", "gpt_neox"]


@pytest.fixture(params=FAMILIES)
def tiny(request):
    """(our model, the HF model it came from) for each family."""
    hf = hf_tiny(request.param)
    model = from_hf(hf, weights="random")
    model.cfg.name = f"tiny-{request.param}"
    return model, hf


@pytest.fixture
def tokens():
    return torch.randint(3, 101, (2, 24), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def windows():
    rng = np.random.default_rng(0)
    w = rng.integers(3, 101, size=(24, 16)).astype(np.int32)
    w[:, 0] = 0
    return w


_REAL = {}


def real_model(alias: str):
    """Real offline models, loaded once per session (installed by scripts/setup.sh)."""
    if alias not in _REAL:
        from attnsae.models import load_model

        _REAL[alias] = load_model(alias)
    return _REAL[alias]
