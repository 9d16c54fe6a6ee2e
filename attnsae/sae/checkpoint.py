"""Atomic training checkpoints: the SAE, Adam's state, the trainer's counters and the recipe's state,
so that `kill -9` loses at most one checkpoint interval.

    <out>/checkpoint/state.safetensors   the tensors: sae.*, adam.<i>.*, the counters', recipe.*
    <out>/checkpoint/state.json          the other counters, "recipe": its other state, "train_config"

A save writes checkpoint.tmp, renames the old checkpoint to checkpoint.old, renames the new one
into place, then deletes checkpoint.old: a process killed between the two renames leaves only
checkpoint.old, which `load` then uses.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .sae import SAE

NAME = "checkpoint"
ADAM_MOMENTS = ("exp_avg", "exp_avg_sq")


def folder(out) -> Path:
    return Path(out) / NAME


def save(out, sae: SAE, opt: torch.optim.Optimizer, train_config: dict, counters: dict, recipe_state: dict) -> None:
    """`counters` and `recipe_state`: name -> tensor or JSON value (counter tensor names have no dot)."""
    out = Path(out)
    tmp, old = out / f"{NAME}.tmp", out / f"{NAME}.old"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    tensors = {f"sae.{k}": v.detach().cpu().clone() for k, v in sae.state_dict().items()}
    for i, p in enumerate(sae.parameters()):
        st = opt.state.get(p, {})
        tensors |= {f"adam.{i}.{key}": st[key].cpu().clone() for key in ADAM_MOMENTS if key in st}
        if "step" in st:
            tensors[f"adam.{i}.step"] = torch.as_tensor(st["step"], dtype=torch.float32).cpu().reshape(1)
    tensors |= {k: v.cpu().clone() for k, v in counters.items() if torch.is_tensor(v)}
    tensors |= {f"recipe.{k}": v.cpu().clone() for k, v in recipe_state.items() if torch.is_tensor(v)}
    save_file(tensors, str(tmp / "state.safetensors"))
    meta = {k: v for k, v in counters.items() if not torch.is_tensor(v)}
    meta["recipe"] = {k: v for k, v in recipe_state.items() if not torch.is_tensor(v)}
    meta["train_config"] = train_config
    meta["sae_config"] = sae.cfg.to_dict()  # what it is trained on: a resume on other data is refused
    (tmp / "state.json").write_text(json.dumps(meta))
    if folder(out).exists():
        if old.exists():  # left by a kill after the last save's second rename: the current checkpoint supersedes it
            shutil.rmtree(old)
        os.replace(folder(out), old)
    os.replace(tmp, folder(out))
    if old.exists():
        shutil.rmtree(old)


def load(out, sae: SAE, opt: torch.optim.Optimizer, train_config: dict) -> tuple[dict, dict] | None:
    """Load the SAE and Adam's state in place, on the SAE's device (a run may resume on another device);
    returns (counters, recipe_state) with their tensors there too, or None without a checkpoint. Refuses
    a checkpoint made with a different training config."""
    candidates = [d for d in (folder(out), Path(out) / f"{NAME}.old") if (d / "state.json").exists()]
    if not candidates:
        return None
    for i, d in enumerate(candidates):  # checkpoint.old: left by a kill between the two renames, or the fallback
        try:
            meta = json.loads((d / "state.json").read_text())
            t = load_file(str(d / "state.safetensors"), device=str(sae.W_enc.device))
            break
        except Exception as e:  # truncated or corrupt: fall back to the older one, else say what to do
            why = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
            if i == len(candidates) - 1:
                raise ValueError(f"checkpoint {d} is unreadable ({why}); delete it or pass --restart to train from "
                                 "the start") from None
            print(f"note: checkpoint {d} is unreadable ({why}); resuming from {candidates[i + 1]}", file=sys.stderr)
    _check_same_config(meta.pop("train_config"), train_config, d)
    if "sae_config" in meta:  # older checkpoints did not record it
        check_same_data(meta.pop("sae_config"), sae.cfg, d)
    sae.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("sae.")})
    for i, p in enumerate(sae.parameters()):
        if f"adam.{i}.exp_avg" in t:
            # on the parameter's device: the fused Adam wants it there
            opt.state[p] = {"step": torch.tensor(float(t[f"adam.{i}.step"][0]), device=p.device)}
            opt.state[p] |= {key: t[f"adam.{i}.{key}"] for key in ADAM_MOMENTS}
    recipe_state = meta.pop("recipe") | {k[7:]: v for k, v in t.items() if k.startswith("recipe.")}
    counters = meta | {k: v for k, v in t.items() if "." not in k}
    return counters, recipe_state


def config_diff(saved: dict, current: dict) -> dict:
    """{field: (saved, current)} where a saved training config differs from the current one. Fields the saved
    one predates (added to TrainConfig since) are not compared; tuples compare as the lists JSON saved."""
    current = json.loads(json.dumps(current))
    return {k: (saved[k], v) for k, v in current.items() if k in saved and saved[k] != v}


# The fields of an SAE config that say what data it is trained on
DATA_FIELDS = ("model_name", "hook_name", "hook_head_index", "processing", "context_size", "first_pos", "dataset_path", "d_in")


def check_same_data(saved: dict, asked, where: Path) -> None:
    """Refuse to continue (or reuse) an SAE trained on other data (another model, hook, processing, context or
    corpus) than `asked` (an SAEConfig): the result would be labelled with the new data but learnt from the old."""
    asked = json.loads(json.dumps(asked.to_dict()))
    diff = {k: (saved[k], asked[k]) for k in DATA_FIELDS if k in saved and saved[k] != asked[k]}
    if diff:
        detail = ", ".join(f"{k}: {a!r} there, {b!r} asked" for k, (a, b) in diff.items())
        raise ValueError(f"{where} holds an SAE trained on other data ({detail}); use a new output folder, or --restart "
                         "to train from the start")


def _check_same_config(saved: dict, current: dict, where: Path) -> None:
    diff = config_diff(saved, current)
    if diff:
        raise ValueError(f"checkpoint in {where} was made with a different training config {diff}; use a new out_dir")
