"""Save and load SAEs: our folders (SAELens-readable), SAELens folders, and the paper's release format.

Our folder = cfg.json + sae_weights.safetensors (+ sparsity.safetensors), the layout SAELens'
`SAE.load_from_disk` reads (v6 keys under "metadata", flat keys for older versions); our own
full config rides along under "attnsae". A JumpReLU SAE (ours, or BatchTopK / Matryoshka trained and
saved as one, as SAELens saves them; or Gemma Scope's) is architecture "jumprelu" with a per-latent
`threshold` tensor beside W_enc, b_enc, W_dec, b_dec (SAELens 6: saes/jumprelu_sae.py, JumpReLUSAE).
The reference code (ckkissane/attention-output-saes) released `{run}.pt` (a torch state dict)
beside `{run}_cfg.json`. Gemma Scope folders hold `params.npz` (Gemma 2: W_enc, W_dec, b_enc, b_dec, threshold)
or `params.safetensors` + `config.json` (Gemma Scope 2, Gemma 3: w_enc, w_dec, b_enc, b_dec, threshold); their
attention SAEs read the input of o_proj, which is hook_z flattened. A hub folder `owner/repo/sub/folder` that is
not a local path is fetched with huggingface_hub (its cache first; HF_HUB_OFFLINE=1 uses only the cache).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..models.hooks import act_name
from .sae import ARCHITECTURES, SAE, SAEConfig

CFG, WEIGHTS, SPARSITY = "cfg.json", "sae_weights.safetensors", "sparsity.safetensors"


def read_tensors(path) -> dict[str, torch.Tensor]:
    """A .safetensors file's tensors, or a one-line ValueError naming the file (truncated, corrupt, not safetensors)."""
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own SafetensorError
        raise ValueError(f"{path} is not a readable .safetensors file ({str(e).splitlines()[0]})") from None


def sae_lens_cfg(cfg: SAEConfig) -> dict:
    hook_z = bool(cfg.hook_spec and cfg.hook_spec.is_layer_z)
    meta = {
        "sae_lens_version": "6.0.0",
        "model_name": cfg.model_name,
        "hook_name": cfg.hook_name,
        "hook_head_index": cfg.hook_head_index,
        "context_size": cfg.context_size,
        "prepend_bos": cfg.prepend_bos,
        "dataset_path": cfg.dataset_path,
    }
    out = {
        "architecture": cfg.architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": cfg.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "hook_z" if hook_z else "none",
        "metadata": meta,
        # pre-6.0 SAELens read these flat keys
        **{k: v for k, v in meta.items() if k != "sae_lens_version"},
        "hook_layer": cfg.layer,
        "activation_fn_str": "topk" if cfg.architecture == "topk" else "relu",
        "attnsae": cfg.to_dict(),
    }
    if cfg.architecture == "topk":
        out["k"] = cfg.k
        out["activation_fn_kwargs"] = {"k": cfg.k}
    return out


def save_sae(sae: SAE, path, feature_density: torch.Tensor | None = None) -> Path:
    """Write the folder atomically (a temp folder renamed into place)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sae.state_dict().items()}
    if "log_threshold" in tensors:  # SAELens stores the threshold itself (process_state_dict_for_saving)
        tensors["threshold"] = tensors.pop("log_threshold").exp()
    save_file(tensors, str(tmp / WEIGHTS))
    (tmp / CFG).write_text(json.dumps(sae_lens_cfg(sae.cfg), indent=2))
    if feature_density is not None:
        save_file({"sparsity": torch.log10(feature_density.float().cpu() + 1e-10)}, str(tmp / SPARSITY))
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


def load_sae(path, device: str = "cpu") -> SAE:
    """An attnsae / SAELens folder, or a reference-code run: `{run}.pt` with `{run}_cfg.json` beside it, given as
    either file or as `{run}` alone (run names hold dots, so no suffix is stripped or replaced but these two)."""
    path = Path(path)
    name = path.name
    if name.endswith("_cfg.json"):
        return load_reference(path.with_name(name.removesuffix("_cfg.json") + ".pt"), device)
    if name.endswith(".pt"):
        return load_reference(path, device)
    if not path.is_dir() and path.with_name(name + ".pt").exists():
        return load_reference(path.with_name(name + ".pt"), device)
    if not path.exists() and not path.is_absolute() and Path(path.parts[0]).is_dir():  # runs/x/sae: local, not the hub
        raise FileNotFoundError(f"{path} is not an SAE folder: it does not exist (a path is read as a hub folder, "
                                f"owner/repo/folder, only when there is no local folder {path.parts[0]}/ here)")
    if not path.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+/.+", str(path)):
        path = _from_hub(str(path))
    if (path / GEMMA_SCOPE_NPZ).exists() or (path / GEMMA_SCOPE_2).exists():
        return load_gemma_scope(path, device)
    if not (path / CFG).exists() or not (path / WEIGHTS).exists():
        raise FileNotFoundError(f"{path} is not an SAE folder: it needs {CFG} and {WEIGHTS} (SAELens, ours), params.npz "
                                "or params.safetensors (Gemma Scope), or a reference run's .pt")
    raw = json.loads((path / CFG).read_text())
    state = read_tensors(path / WEIGHTS)
    if "attnsae" not in raw and raw.get("architecture") == "gated":
        raw, state = {**raw, "architecture": "jumprelu"}, gated_as_jumprelu(state, path)
    cfg = SAEConfig.from_dict(raw["attnsae"]) if "attnsae" in raw else _cfg_from_sae_lens(raw)
    sae = _build(cfg, state, path, device)
    if "attnsae" not in raw and raw.get("rescale_acts_by_decoder_norm"):
        # SAELens' TopK training default (its training checkpoints are saved unfolded): it ranks pre * |W_dec_i|
        # and decodes f / |W_dec_i| @ W_dec; folding the norms into the encoder is the same function
        sae.fold_decoder_norm_(topk_ranks_scaled=True)
    return sae


def gated_as_jumprelu(state: dict, where) -> dict:
    """A Gated SAE (Rajamanoharan et al. 2024; SAELens' "gated": W_enc, b_gate, r_mag, b_mag) as the JumpReLU SAE
    computing the same function. It fires where x W_enc + b_gate > 0 with magnitude relu(x W_enc e^r + b_mag); with
    W = W_enc e^r and b = b_mag the gate is x W + b > b_mag - b_gate e^r, a per-latent threshold (below 0 it adds
    nothing to the relu), so f = (x W + b) where that exceeds max(0, b_mag - b_gate e^r)."""
    need = {"W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec"}
    if not need <= set(state):
        raise ValueError(f"{where}: a gated SAE needs {sorted(need)}; found {sorted(state)}")
    scale = state["r_mag"].float().exp()
    return {"W_enc": state["W_enc"].float() * scale, "b_enc": state["b_mag"].float(), "W_dec": state["W_dec"],
            "b_dec": state["b_dec"], "threshold": (state["b_mag"].float() - state["b_gate"].float() * scale).clamp_min(0),
            **{k: v for k, v in state.items() if k not in need}}  # anything else: refused by _build


def load_feature_density(path) -> torch.Tensor | None:
    f = Path(path) / SPARSITY
    return 10 ** read_tensors(f)["sparsity"] if f.exists() else None


def _cfg_from_sae_lens(raw: dict) -> SAEConfig:
    meta = {**raw, **(raw.get("metadata") or {})}
    norm = raw.get("normalize_activations", "none")
    if norm not in ("none", None, False):
        raise NotImplementedError(f"SAELens normalize_activations={norm!r} is not supported; only 'none'")
    arch = raw.get("architecture", "standard")
    k = raw.get("k") or (raw.get("activation_fn_kwargs") or {}).get("k")
    if raw.get("activation_fn_str", raw.get("activation_fn")) == "topk":
        arch = "topk"
    if arch not in ARCHITECTURES:
        hint = " (save it with SAELens' save_inference_model: a jumprelu SAE)" if "batchtopk" in arch else ""
        raise NotImplementedError(f"SAELens architecture {arch!r} is not supported {ARCHITECTURES}{hint}")
    return SAEConfig(
        d_in=raw["d_in"], d_sae=raw["d_sae"], architecture=arch, k=k,
        model_name=meta.get("model_name"), hook_name=meta.get("hook_name") or meta.get("hook_point"),
        hook_head_index=meta.get("hook_head_index"), context_size=meta.get("context_size") or 128,
        prepend_bos=meta.get("prepend_bos", True), first_pos=0, dataset_path=meta.get("dataset_path"),
        apply_b_dec_to_input=raw.get("apply_b_dec_to_input", True), dtype=raw.get("dtype", "float32"),
    )


GEMMA_SCOPE_NPZ, GEMMA_SCOPE_2 = "params.npz", "params.safetensors"
# Gemma Scope 2's hf_hook_point_in -> our hook (the SAE reads that module's input or output)
_HF_HOOKS = {r"model\.layers\.(\d+)\.self_attn\.o_proj\.input": "blocks.{}.attn.hook_z",
             r"model\.layers\.(\d+)\.output": "blocks.{}.hook_resid_post",
             r"model\.layers\.(\d+)\.post_feedforward_layernorm\.output": "blocks.{}.hook_mlp_out"}


def _from_hub(spec: str) -> Path:
    """`owner/repo/sub/folder` on the Hugging Face hub -> a local folder with its params and config."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    owner, repo, folder = spec.split("/", 2)
    got = None
    for name in (GEMMA_SCOPE_2, GEMMA_SCOPE_NPZ, WEIGHTS):
        try:
            got = Path(hf_hub_download(f"{owner}/{repo}", name, subfolder=folder))
            break
        except (EntryNotFoundError, LocalEntryNotFoundError):
            continue
        except Exception as e:  # no network, unknown repo, ...: one line, with the reason
            raise FileNotFoundError(f"{spec} is neither a local path nor a hub SAE folder ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0]})") from e
    if got is None:
        raise FileNotFoundError(f"hub folder {spec} holds none of {GEMMA_SCOPE_2}, {GEMMA_SCOPE_NPZ}, {WEIGHTS} "
                                "(or it is not in the local cache, offline)")
    for name in ("config.json", CFG):
        try:
            hf_hub_download(f"{owner}/{repo}", name, subfolder=folder)
        except Exception:  # noqa: BLE001 - optional files
            pass
    return got.parent


def load_gemma_scope(folder, device: str = "cpu") -> SAE:
    """A Gemma Scope JumpReLU SAE: f = (x W_enc + b_enc) where that exceeds the latent's threshold, no b_dec
    subtracted first. Gemma Scope 2 names its model and hook in config.json; for a Gemma Scope 1 params.npz
    the layer comes from the folder path (layer_N) and an `att` repo means hook_z."""
    folder = Path(folder)
    if (folder / GEMMA_SCOPE_2).exists():
        state = read_tensors(folder / GEMMA_SCOPE_2)
        raw = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
        model_name = raw.get("model_name")
        if model_name:  # SAELens' normalisation: gemma-v3-270m-pt -> google/gemma-3-270m
            model_name = ("" if model_name.startswith("google/") else "google/") + model_name.replace("-v3", "-3")
            model_name = model_name.replace("-pt", "") if "270m" in model_name else model_name
        hook = next((h.format(m.group(1)) for pat, h in _HF_HOOKS.items()
                     if (m := re.fullmatch(pat, raw.get("hf_hook_point_in", "")))), None)
    else:
        with np.load(folder / GEMMA_SCOPE_NPZ) as data:
            state = {k: torch.from_numpy(np.asarray(data[k])) for k in data.files}
        scale = state.pop("scaling_factor", None)
        if scale is not None and not torch.allclose(scale.float(), torch.ones_like(scale.float())):
            raise NotImplementedError(f"{folder}: a Gemma Scope scaling_factor other than 1 is not supported")
        where = str(folder.resolve())
        layer = re.search(r"layer_(\d+)", where)
        hook = f"blocks.{layer.group(1)}.attn.hook_z" if layer and re.search(r"-att\b|-att[-/]", where) else None
        model_name = None
    state = {("W_" + k[2:] if k.startswith("w_") else k): v for k, v in state.items()}
    if "W_enc" not in state:
        raise ValueError(f"{folder}: Gemma Scope weights lack w_enc / W_enc (found {sorted(state)})")
    d_in, d_sae = state["W_enc"].shape
    cfg = SAEConfig(d_in=int(d_in), d_sae=int(d_sae), architecture="jumprelu", model_name=model_name, hook_name=hook,
                    apply_b_dec_to_input=False, first_pos=0, context_size=1024, dataset_path="monology/pile-uncopyrighted")
    return _build(cfg, state, folder, device)


def load_reference(pt_path, device: str = "cpu") -> SAE:
    """The paper's released format: `{run}.pt` state dict (W_enc, W_dec, b_enc, b_dec) + `{run}_cfg.json`."""
    pt_path = Path(pt_path)
    cfg_path = pt_path.with_name(pt_path.name.removesuffix(".pt") + "_cfg.json")
    if not pt_path.exists():
        raise FileNotFoundError(f"reference SAE {pt_path} does not exist")
    if not cfg_path.exists():
        raise FileNotFoundError(f"reference SAE {pt_path.name} needs its config beside it: {cfg_path.name}")
    raw = json.loads(cfg_path.read_text())
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr
            warnings.simplefilter("ignore")
            state = torch.load(pt_path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
    except pickle.UnpicklingError:  # Python objects, possibly malicious: refused, never run (whatever torch suggests)
        raise ValueError(f"{pt_path} holds Python objects, not only tensors; refusing to unpickle it") from None
    except Exception as e:  # truncated or not a torch file
        raise ValueError(f"{pt_path} is not a readable torch state dict ({type(e).__name__})") from None
    if not (isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise ValueError(f"{pt_path} does not hold a state dict of tensors")
    layer, site = raw.get("layer"), raw.get("site", "z")
    hook = raw.get("act_name") or (act_name(site, layer) if layer is not None else None)
    d_in = raw.get("act_size") or state["W_enc"].shape[0]
    d_sae = raw.get("dict_size") or state["W_enc"].shape[1]
    cfg = SAEConfig(
        d_in=int(d_in), d_sae=int(d_sae), model_name=raw.get("model_name"), hook_name=hook,
        context_size=raw.get("seq_len", 128), first_pos=0, dataset_path=raw.get("dataset_path"),
        processing={"fold_value_biases": True, "weights": "transformer_lens"} if raw.get("model_name") == "gpt2-small" else {},
        training={k: raw[k] for k in ("l1_coeff", "lr", "batch_size", "num_tokens") if k in raw},
    )
    return _build(cfg, state, pt_path, device)


def _build(cfg: SAEConfig, state: dict, where, device) -> SAE:
    want = {"W_enc": (cfg.d_in, cfg.d_sae), "b_enc": (cfg.d_sae,), "W_dec": (cfg.d_sae, cfg.d_in), "b_dec": (cfg.d_in,)}
    if cfg.architecture == "jumprelu":
        want["threshold"] = (cfg.d_sae,)
    missing = [k for k in want if k not in state]
    if missing:
        raise ValueError(f"{where}: weights lack {missing} (found {sorted(state)})")
    extra = sorted(set(state) - set(want))
    if extra:  # e.g. a threshold in a folder that says "standard": dropping it would change the SAE's function
        raise ValueError(f"{where}: weights hold {extra}, which a {cfg.architecture!r} SAE does not have; its config "
                         "and weights disagree")
    for k, shape in want.items():
        if tuple(state[k].shape) != shape:
            raise ValueError(f"{where}: {k} has shape {tuple(state[k].shape)}, config says {shape}")
        if not torch.isfinite(state[k]).all() and not (k == "threshold" and (state[k] >= 0).all()):  # inf threshold: a latent off
            raise ValueError(f"{where}: {k} holds NaN or inf; the SAE is unusable (retrain it, or resume from a checkpoint)")
    sae = SAE(cfg)
    sae.load_state_dict({k: state[k].float() for k in want if k != "threshold"}, strict=False)
    if cfg.architecture == "jumprelu":
        sae.set_threshold_(state["threshold"].float())
    return sae.to(device)
