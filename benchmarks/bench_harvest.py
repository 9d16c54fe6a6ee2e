"""Harvest throughput: tokens/s of collecting blocks.{L}.attn.hook_z, attnsae vs TransformerLens.

One GPT-2-small-shaped model with random weights (12 layers, d_model 768, 12 heads, context 128) is
built as a Hugging Face GPT2LMHeadModel and converted both ways: to attnsae's Transformer
(`attnsae.models.from_hf`) and to TransformerLens's HookedTransformer (TL's own
`convert_gpt2_weights`, loaded without any weight processing), so both compute the same function.
Before timing, each pair is checked to give the same hook_z.

Timed, per layer L and dtype:
  ours        model.run_with_cache(tokens, [hook])  (stops right after the hook, as harvest.collect does)
  TL          model.run_with_cache(tokens, names_filter=hook)  (TL's default: runs to the logits)
  TL stop     the same with stop_at_layer=L+1  (TL told where to stop: the fairer peer)

    python benchmarks/bench_harvest.py [--quick] [--batch 32] [--reps 5]
"""

from __future__ import annotations

import argparse
import warnings

import torch
from _common import timeit

warnings.filterwarnings("ignore")


def build_models(a, dtype):
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights
    from transformers import GPT2Config, GPT2LMHeadModel

    from attnsae.models import from_hf

    torch.manual_seed(0)
    hc = GPT2Config(n_layer=a.layers, n_embd=a.d_model, n_head=a.heads, n_positions=a.ctx, vocab_size=a.vocab,
                    activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = GPT2LMHeadModel(hc).eval()  # random weights (HF's GPT-2 init)
    ours = from_hf(hf, weights="random").to(dtype=dtype).eval()
    cfg = HookedTransformerConfig(
        n_layers=a.layers, d_model=a.d_model, n_heads=a.heads, d_head=a.d_model // a.heads, d_mlp=4 * a.d_model,
        d_vocab=a.vocab, n_ctx=a.ctx, act_fn="gelu_new", normalization_type="LN", eps=hc.layer_norm_epsilon,
        positional_embedding_type="standard", original_architecture="GPT2LMHeadModel", dtype=torch.float32,
        default_prepend_bos=False,
    )
    tl = HookedTransformer(cfg)
    tl.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                   center_unembed=False, fold_value_biases=False,
                                   refactor_factored_attn_matrices=False)
    tl = tl.to(dtype).eval()
    tl.cfg.dtype = dtype
    del hf
    return ours, tl


def time_hook(a, ours, tl, tokens, L, dtype_name):
    """Check that both models give the same blocks.{L}.attn.hook_z, then time collecting it; print one row."""
    hook, dtype = f"blocks.{L}.attn.hook_z", getattr(torch, dtype_name)
    n_tok = tokens.numel()
    with torch.inference_mode():
        z_ours = ours.run_with_cache(tokens, [hook])[1][hook]
        z_tl = tl.run_with_cache(tokens, names_filter=hook)[1][hook]
        z_stop = tl.run_with_cache(tokens, names_filter=hook, stop_at_layer=L + 1)[1][hook]
    tol = dict(rtol=1e-3, atol=1e-4) if dtype == torch.float32 else dict(rtol=5e-2, atol=5e-2)
    torch.testing.assert_close(z_ours.float(), z_tl.float(), **tol, msg=lambda m: f"{hook} {dtype_name}: {m}")
    torch.testing.assert_close(z_stop, z_tl)

    def run_ours():
        with torch.inference_mode():
            ours.run_with_cache(tokens, [hook])

    def run_tl():
        with torch.inference_mode():
            tl.run_with_cache(tokens, names_filter=hook)

    def run_tl_stop():
        with torch.inference_mode():
            tl.run_with_cache(tokens, names_filter=hook, stop_at_layer=L + 1)

    t_ours = timeit(run_ours, a.reps, a.warmup)
    t_tl = timeit(run_tl, a.reps, a.warmup)
    t_stop = timeit(run_tl_stop, a.reps, a.warmup)
    print(f"{dtype_name:<10}{hook:<24}{n_tok / t_ours:10.0f}{n_tok / t_tl:10.0f}{n_tok / t_stop:10.0f}"
          f"{t_tl / t_ours:8.2f}x{t_stop / t_ours:13.2f}x", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a tiny model, one timed run: checks that everything runs")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--hook-layers", type=int, nargs="+", default=[5, 11])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    a = ap.parse_args(argv)
    if a.quick:
        a.batch, a.ctx, a.layers, a.d_model, a.heads, a.vocab = 4, 32, 4, 128, 4, 1000
        a.hook_layers, a.reps = [1, 3], 1
    import transformer_lens

    tl_version = getattr(transformer_lens, "__version__", None)
    if tl_version is None:
        from importlib.metadata import version

        tl_version = version("transformer_lens")
    n_tok = a.batch * a.ctx
    print(f"harvest hook_z: GPT-2-shaped random model, {a.layers} layers, d_model {a.d_model}, {a.heads} heads, "
          f"batch {a.batch}x{a.ctx} = {n_tok} tokens; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"transformer_lens {tl_version}")
    print(f"median of {a.reps} runs after {a.warmup} warm-up, tokens/s (higher is better)")
    header = f"{'dtype':<10}{'hook':<24}{'ours':>10}{'TL':>10}{'TL stop':>10}{'ours/TL':>9}{'ours/TL stop':>14}"
    print(header)
    print("-" * len(header))
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, a.vocab, (a.batch, a.ctx), generator=g)
    for dtype_name in a.dtypes:
        dtype = getattr(torch, dtype_name)
        ours, tl = build_models(a, dtype)
        for L in a.hook_layers:
            time_hook(a, ours, tl, tokens, L, dtype_name)
        del ours, tl
    print("\nhook_z checked equal (allclose) between the two implementations before timing.")
    print("ours/TL: TL time / our time for the same tokens; >1 means ours is faster.")


if __name__ == "__main__":
    main()
