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
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if family == "gpt2":
        hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=vocab, n_positions=64,
                                        bos_token_id=0, eos_token_id=0))
    elif family == "llama":
        hf = LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=96, num_attention_heads=6, num_key_value_heads=2,
                                          head_dim=16, intermediate_size=96, vocab_size=101, rope_theta=1e4,
                                          bos_token_id=0, eos_token_id=1, pad_token_id=None))
    else:
        hf = Gemma3ForCausalLM(Gemma3TextConfig(num_hidden_layers=3, hidden_size=64, num_attention_heads=4, num_key_value_heads=1,
                                                head_dim=32, intermediate_size=96, vocab_size=101, sliding_window=8,
                                                layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                                                query_pre_attn_scalar=32, bos_token_id=2, eos_token_id=1, pad_token_id=0))
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name or "ln" in name:
                p.add_(0.2 * torch.randn_like(p))
            elif "bias" in name:
                p.add_(0.05 * torch.randn_like(p))
    return hf.eval()


FAMILIES = ["gpt2", "llama", "gemma3"]


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
