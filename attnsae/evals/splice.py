"""Splice an SAE into a model's forward pass at its hook, after checking they belong together."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..data.harvest import hook_width
from ..models.loading import same_model


class IncompatibleSAE(ValueError):
    pass


def check_compatible(model, sae, strict_model: bool = True) -> None:
    """Refuse, with the reason, an SAE trained on another hook, width, model or processing."""
    cfg = sae.cfg
    if not cfg.hook_name:
        raise IncompatibleSAE("the SAE's config names no hook_name, so it cannot be spliced")
    try:
        model.check_hook_name(cfg.hook_name)
    except KeyError as e:
        raise IncompatibleSAE(f"SAE hook {cfg.hook_name!r} does not exist in this model: {e.args[0]}") from e
    spec = str(cfg.hook_spec)
    width = hook_width(model, spec)
    if width != cfg.d_in:
        raise IncompatibleSAE(
            f"SAE d_in={cfg.d_in} but {spec} of {model.cfg.name} is {width} wide "
            f"({model.cfg.n_heads} heads x {model.cfg.d_head}): this SAE was trained on another model"
        )
    if strict_model and cfg.model_name and model.cfg.name and not same_model(cfg.model_name, model.cfg.name):
        raise IncompatibleSAE(f"SAE was trained on {cfg.model_name!r}, this model is {model.cfg.name!r}")
    if cfg.processing:
        want = {k: cfg.processing.get(k) for k in ("fold_value_biases", "weights")}
        if want["weights"] == "transformer_lens":  # its default processing (fold_ln, centering) leaves hook_z as it is
            want["weights"] = None
        have = model.processing.activation_key()
        diff = {k: (want[k], have[k]) for k in want if want[k] is not None and want[k] != have[k]}
        if diff:
            detail = ", ".join(f"{k}: SAE trained with {a!r}, model has {b!r}" for k, (a, b) in diff.items())
            raise IncompatibleSAE(
                f"model processed differently from the SAE's training ({detail}); hook activations differ, "
                "so the SAE would be evaluated off-distribution. Load the model the same way "
                "(e.g. load_model(..., fold_value_biases=...))."
            )


def model_for_saes(saes: list, model: str | None = None, **load_kw):
    """The model the SAEs were trained on (or `model`), processed as their activations were: with the value biases
    folded into b_O when their config says so (the paper's GPT-2 SAEs), so that check_compatible passes."""
    from ..features.inputs import sae_model_name
    from ..models import load_model
    from ..models.loading import TL_NAMES

    name = sae_model_name(saes, model)
    if name is None:
        raise ValueError("the SAE names no model; pass --model")
    folds = {bool((s.cfg.processing or {}).get("fold_value_biases")) for s in saes}
    if len(folds) > 1:
        raise ValueError("the SAEs were trained on differently processed models (fold_value_biases differs); use one kind")
    return load_model(TL_NAMES.get(name, name), fold_value_biases=folds.pop() if folds else False, **load_kw)


def sae_hook(
    sae,
    keep_error: bool = False,
    edit: Callable[[torch.Tensor], torch.Tensor] | None = None,
    first_pos: int | None = None,
):
    """A hook fn replacing the activation by the SAE reconstruction at positions >= first_pos.

    keep_error adds back (x - x_hat) so the output equals the input unless `edit` changes the
    feature activations (e.g. zero-ablating a feature while keeping the error term)."""
    head = sae.cfg.hook_spec.head
    first = sae.cfg.first_pos if first_pos is None else first_pos

    def fn(act: torch.Tensor, name: str):
        x = act[:, :, head] if head is not None else act.flatten(2)
        seg = x[:, first:].float()
        out = sae(seg)
        f = edit(out.feature_acts) if edit is not None else out.feature_acts
        new = sae.decode(f) if edit is not None else out.reconstruction
        if keep_error:
            new = new + (seg - out.reconstruction)
        x = x.clone()
        x[:, first:] = new.to(x.dtype)
        if head is not None:
            act = act.clone()
            act[:, :, head] = x
            return act
        return x.view_as(act)

    return fn


def _target(act: torch.Tensor, first_pos: int, head: int | None):
    """The part of a hook activation an ablation replaces: positions >= first_pos, only `head`'s vector when
    given (an SAE on one head's q or k is ablated on that head alone, not on the whole hook)."""
    return (slice(None), slice(first_pos, None)) + (() if head is None else (head,))


def mean_hook(mean: torch.Tensor, first_pos: int = 0, head: int | None = None):
    """Replace the hook (positions >= first_pos; only `head` when given) by a fixed activation, e.g. its dataset
    mean: one row of the SAE's input (a head's vector, or every head concatenated)."""

    def fn(act, name):
        act = act.clone()
        where = _target(act, first_pos, head)
        act[where] = mean.to(act.dtype).view(act[where].shape[2:])
        return act

    return fn


def zero_hook(first_pos: int = 0, head: int | None = None):
    """Zero the hook at positions >= first_pos (only `head`'s vector when given)."""

    def fn(act, name):
        act = act.clone()
        act[_target(act, first_pos, head)] = 0
        return act

    return fn
