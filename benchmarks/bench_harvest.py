"""Harvest throughput: tokens/s of collecting blocks.{L}.attn.hook_z, attnsae vs TransformerLens.

One GPT-2-small-shaped model with random weights (12 layers, d_model 768, 12 heads, context 128) is
built as a Hugging Face GPT2LMHeadModel and converted both ways: to attnsae's Transformer
(`attnsae.models.from_hf`) and to TransformerLens's HookedTransformer (TL's own
`convert_gpt2_weights`, loaded without any weight processing), so both compute the same function.
Both live on --device; before timing, each pair is checked to give the same hook_z there.

Timed, per layer L and dtype (the model's own dtype, as `harvest` loads it):
  ours        model.run_with_cache(tokens, [hook])  (stops right after the hook, as harvest.collect does)
  TL          model.run_with_cache(tokens, names_filter=hook)  (TL's default: runs to the logits)
  TL stop     the same with stop_at_layer=L+1  (TL told where to stop: the fairer peer)

Each timed call starts from the token batch in (pinned, on CUDA) host memory, as harvest's windows
are, and leaves hook_z on the device; on CUDA the timed region is bracketed by synchronizations.
Without transformer_lens only our side runs. Beside tokens/s: the matmul FLOPs our forward executes
(see `forward_flops`) per second, as a fraction of a big square bf16 matmul timed in the same run,
and on CUDA the time to copy the harvested hook_z into pinned host memory (not in tokens/s).

    python benchmarks/bench_harvest.py [--quick] [--device auto|cpu|cuda[:N]] [--batch 32] [--reps 5]
"""

from __future__ import annotations

import argparse
import warnings

import torch
from _common import describe, device_from_args, measured_peak, sync, timeit

warnings.filterwarnings("ignore")


def forward_flops(cfg, n_tok: int, ctx: int, full_layers: int, partial: bool = False, unembed: bool = False) -> int:
    """Matmul FLOPs of a forward over n_tok tokens in windows of ctx: 2 * (weights touched) per token in
    `full_layers` whole blocks (W_Q, W_K, W_V, W_O, the MLP's 2 or 3 matrices), plus attention's QK^T and
    pattern @ V at 2 * ctx * d_attn each per token (the whole ctx x ctx square: both implementations pass
    an explicit mask, so none of it is skipped); `partial`: the next block up to hook_z (W_Q, W_K, W_V and
    attention); `unembed`: W_U. Embedding lookups, norms, biases and activations are not counted."""
    d, dh = cfg.d_model, cfg.d_head
    qkv = d * dh * (cfg.n_heads + 2 * cfg.n_kv_heads)
    attn = 2 * 2 * ctx * cfg.n_heads * dh
    mlp = (3 if cfg.gated_mlp else 2) * d * cfg.d_mlp
    per_tok = full_layers * (2 * (qkv + cfg.n_heads * dh * d + mlp) + attn)
    if partial:
        per_tok += 2 * qkv + attn
    if unembed:
        per_tok += 2 * d * cfg.d_vocab
    return n_tok * per_tok


def build_models(a, dtype, device, with_tl: bool):
    from transformers import GPT2Config, GPT2LMHeadModel

    from attnsae.models import from_hf

    torch.manual_seed(0)
    hc = GPT2Config(n_layer=a.layers, n_embd=a.d_model, n_head=a.heads, n_positions=a.ctx, vocab_size=a.vocab,
                    activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                    bos_token_id=min(50256, a.vocab - 1), eos_token_id=min(50256, a.vocab - 1))
    hf = GPT2LMHeadModel(hc).eval()  # random weights (HF's GPT-2 init), on the CPU
    ours = from_hf(hf, weights="random").to(device=device, dtype=dtype).eval()
    if not with_tl:
        return ours, None
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights

    cfg = HookedTransformerConfig(
        n_layers=a.layers, d_model=a.d_model, n_heads=a.heads, d_head=a.d_model // a.heads, d_mlp=4 * a.d_model,
        d_vocab=a.vocab, n_ctx=a.ctx, act_fn="gelu_new", normalization_type="LN", eps=hc.layer_norm_epsilon,
        positional_embedding_type="standard", original_architecture="GPT2LMHeadModel", dtype=torch.float32,
        default_prepend_bos=False, device=str(device),  # TL's default device is "cuda" whenever there is one
    )
    tl = HookedTransformer(cfg)
    tl.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                   center_unembed=False, fold_value_biases=False,
                                   refactor_factored_attn_matrices=False)
    tl = tl.to(dtype, print_details=False).eval()
    tl.cfg.dtype = dtype
    del hf
    return ours, tl


def time_hook(a, ours, tl, tokens_host, L, dtype_name, device, peak):
    """Check that both models give the same blocks.{L}.attn.hook_z, then time collecting it; print one row."""
    hook, dtype = f"blocks.{L}.attn.hook_z", getattr(torch, dtype_name)
    n_tok = tokens_host.numel()
    tokens = tokens_host.to(device)
    with torch.inference_mode():
        z_ours = ours.run_with_cache(tokens, [hook])[1][hook]
        if tl is not None:
            z_tl = tl.run_with_cache(tokens, names_filter=hook)[1][hook]
            z_stop = tl.run_with_cache(tokens, names_filter=hook, stop_at_layer=L + 1)[1][hook]
            tol = dict(rtol=1e-3, atol=1e-4) if dtype == torch.float32 else dict(rtol=5e-2, atol=5e-2)
            if device.type == "cuda" and dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
                tol = dict(rtol=1e-2, atol=1e-2)  # TF32 matmuls: 10-bit mantissas
            torch.testing.assert_close(z_ours.float(), z_tl.float(), **tol, msg=lambda m: f"{hook} {dtype_name}: {m}")
            torch.testing.assert_close(z_stop, z_tl)
            del z_tl, z_stop

    def batch():  # the windows come from host memory, as in harvest; the DMA copy is asynchronous on CUDA
        return tokens_host.to(device, non_blocking=True)

    def run_ours():
        with torch.inference_mode():
            ours.run_with_cache(batch(), [hook])

    def run_tl():
        with torch.inference_mode():
            tl.run_with_cache(batch(), names_filter=hook)

    def run_tl_stop():
        with torch.inference_mode():
            tl.run_with_cache(batch(), names_filter=hook, stop_at_layer=L + 1)

    t_ours = timeit(run_ours, a.reps, a.warmup, device)
    flops = forward_flops(ours.cfg, n_tok, tokens_host.shape[1], full_layers=L, partial=True)
    tf = flops / t_ours
    d2h = "-"
    if device.type == "cuda":  # hook_z into pinned host memory, as a harvest that writes to disk must
        host = torch.empty(z_ours.shape, dtype=z_ours.dtype, pin_memory=True)
        t_d2h = timeit(lambda: host.copy_(z_ours, non_blocking=True), a.reps, a.warmup, device)
        d2h = f"{t_d2h * 1e3:.2f}"
    row = f"{dtype_name:<10}{hook:<24}{n_tok / t_ours:11.0f}"
    if tl is not None:
        t_tl = timeit(run_tl, a.reps, a.warmup, device)
        t_stop = timeit(run_tl_stop, a.reps, a.warmup, device)
        row += f"{n_tok / t_tl:11.0f}{n_tok / t_stop:11.0f}{t_tl / t_ours:8.2f}x{t_stop / t_ours:13.2f}x"
    else:
        row += f"{'-':>11}{'-':>11}{'-':>9}{'-':>14}"
    print(row + f"{flops / 1e9:9.1f}{tf / 1e12:9.3f}{100 * tf / peak:6.1f}%{d2h:>9}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a tiny model, one timed run: checks that everything runs")
    ap.add_argument("--device", default="auto", help="auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N")
    ap.add_argument("--batch", type=int, default=None, help="windows per forward (default: 32 on the CPU, 256 on CUDA)")
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--hook-layers", type=int, nargs="+", default=[5, 11])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    ap.add_argument("--reps", type=int, default=None,
                    help="CPU: timed runs, the median reported (default 5); CUDA: runs per timed round (default 10)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed runs first (default: 1 on the CPU, 3 on CUDA)")
    ap.add_argument("--peak-n", type=int, default=None, help="size of the square bf16 matmul (default 4096 CPU, 8192 CUDA)")
    a = ap.parse_args(argv)
    device = device_from_args(a.device, ap.prog)
    cuda = device.type == "cuda"
    if a.quick:
        a.batch, a.ctx, a.layers, a.d_model, a.heads, a.vocab = 4, 32, 4, 128, 4, 1000
        a.hook_layers, a.reps, a.warmup = [1, 3], 1, 1
        a.peak_n = a.peak_n or 1024
    a.batch = a.batch or (256 if cuda else 32)
    a.reps = a.reps or (10 if cuda else 5)
    a.warmup = a.warmup if a.warmup is not None else (3 if cuda else 1)
    if bad := [L for L in a.hook_layers if not 0 <= L < a.layers]:
        ap.error(f"--hook-layers {bad} outside the model's {a.layers} layers")
    try:
        import transformer_lens

        tl_version = getattr(transformer_lens, "__version__", None)
        if tl_version is None:
            from importlib.metadata import version

            tl_version = version("transformer_lens")
        peers, with_tl = f"transformer_lens {tl_version}", True
    except ImportError:
        peers, with_tl = "transformer_lens not installed: TL columns skipped (run benchmarks/run.sh)", False
    peak, peak_line = measured_peak(a.peak_n, device, a.reps, a.warmup, "runs")
    n_tok = a.batch * a.ctx
    print(f"harvest hook_z: GPT-2-shaped random model, {a.layers} layers, d_model {a.d_model}, {a.heads} heads, "
          f"batch {a.batch}x{a.ctx} = {n_tok} tokens")
    print(f"{describe(device)}; {peers}")
    print(f"{peak_line}; tokens/s (higher is better)")
    header = (f"{'dtype':<10}{'hook':<24}{'ours':>11}{'TL':>11}{'TL stop':>11}{'ours/TL':>9}{'ours/TL stop':>14}"
              f"{'GFLOP':>9}{'TFLOP/s':>9}{'%peak':>7}{'z->host':>9}")
    print(header)
    print("-" * len(header))
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, a.vocab, (a.batch, a.ctx), generator=g)
    if cuda:
        tokens = tokens.pin_memory()
    for dtype_name in a.dtypes:
        dtype = getattr(torch, dtype_name)
        ours, tl = build_models(a, dtype, device, with_tl)
        for L in a.hook_layers:
            time_hook(a, ours, tl, tokens, L, dtype_name, device, peak)
        del ours, tl
        if cuda:
            sync(device)
            torch.cuda.empty_cache()
    if with_tl:
        print("\nhook_z checked equal (allclose) between the two implementations before timing.")
        print("ours/TL: TL time / our time for the same tokens; >1 means ours is faster.")
    print("GFLOP: matmul FLOPs of our forward per batch (blocks before L whole, block L up to hook_z, attention's full")
    print("ctx^2 square); TFLOP/s, %peak: of our forward, against the bf16 peak above.")
    if cuda:
        print("z->host: ms to copy our hook_z into pinned host memory (not in tokens/s).")


if __name__ == "__main__":
    main()
