"""Official DINO / FocalNet-DINO checkpoints -> this project's ``DINO`` (``focalnet_det.modeling.dino``).

An official file is ``{"model": state_dict, "optimizer", "lr_scheduler", "epoch", "args", ["ema_model"]}``;
its state dict differs from this project's model in two ways only:

- the backbone is under ``backbone.0.`` (FocalNet: the official FocalNet names; ``backbone.1``, the position
  encoding, has no keys) -> ``backbone.``;
- the decoder's class and box heads are one Linear and one MLP shared by all decoder layers, saved under
  ``class_embed.{i}.*``, ``bbox_embed.{i}.*`` and again under ``transformer.decoder.{class,bbox}_embed.{i}.*``
  (2 x decoder layers aliases each) -> ``class_embed.*``, ``bbox_embed.*``, once. All aliases must be present
  and equal.

Every other key (``transformer.*``, ``label_enc``, ``input_proj``) is the same. ``fit_dino_state_dict`` then
checks the result against the model strictly: a missing, unexpected or mis-shaped key is a one-line
UserError naming it; only the class-dependent parameters (``class_embed``, ``transformer.enc_out_class_embed``,
``label_enc``) may differ in size, and are then re-initialised, with a log line (fine-tuning a COCO or
Objects365 checkpoint on another class count).
"""
import logging
import re

import torch

from ..errors import UserError
from .class_heads import log_reinitialised
from .reading import describe_keys

__all__ = ["is_official_dino", "official_dino_to_detectron2", "fit_dino_state_dict", "CLASS_DEPENDENT_KEYS"]

logger = logging.getLogger(__name__)

_ALIAS = re.compile(r"^(?:transformer\.decoder\.)?(class_embed|bbox_embed)\.(\d+)\.(.+)$")
_DEC_LAYER = re.compile(r"^transformer\.decoder\.layers\.(\d+)\.")
CLASS_DEPENDENT_KEYS = (
    "class_embed.weight",
    "class_embed.bias",
    "transformer.enc_out_class_embed.weight",
    "transformer.enc_out_class_embed.bias",
    "label_enc.weight",
)


def is_official_dino(state_dict):
    """Whether an (unwrapped) state dict is an official DINO model: transformer, label embedding, ``backbone.0.``."""
    return (
        "transformer.level_embed" in state_dict
        and "label_enc.weight" in state_dict
        and any(k.startswith("backbone.0.") for k in state_dict)
    )


def official_dino_to_detectron2(state_dict):
    """Rename an official DINO state dict to this project's keys (see the module docstring)."""
    num_layers = 1 + max((int(m.group(1)) for m in map(_DEC_LAYER.match, state_dict) if m), default=-1)
    out, aliases = {}, {}
    for key, value in state_dict.items():
        m = _ALIAS.match(key)
        if m:
            aliases.setdefault(f"{m.group(1)}.{m.group(3)}", {})[key] = value
        elif key.startswith("backbone.0."):
            out["backbone." + key[len("backbone.0.") :]] = value
        elif key.startswith("backbone."):
            raise UserError(f"unexpected key {key} in the DINO checkpoint (the backbone is expected under backbone.0.)")
        else:
            out[key] = value
    for name, found in aliases.items():
        head, param = name.split(".", 1)
        expected = [f"{p}{head}.{i}.{param}" for p in ("", "transformer.decoder.") for i in range(num_layers)]
        missing = [k for k in expected if k not in found]
        if missing:
            raise UserError(f"the DINO checkpoint lacks {missing[0]} (its decoder heads should appear under "
                            f"{head}.{{0..{num_layers - 1}}} and transformer.decoder.{head}.{{0..{num_layers - 1}}})")
        extra = [k for k in found if k not in expected]
        if extra:
            raise UserError(f"unexpected key {extra[0]} in the DINO checkpoint ({num_layers} decoder layers)")
        first = found[expected[0]]
        differing = [k for k in expected[1:] if found[k].shape != first.shape or not torch.equal(found[k], first)]
        if differing:
            raise UserError(f"{differing[0]} differs from {expected[0]}: the checkpoint's decoder heads are not shared "
                            f"across layers (dec_pred_*_share=False), which this DINO does not implement")
        out[name] = first
    return out


def fit_dino_state_dict(model, state_dict, filename="checkpoint"):
    """Check a converted DINO state dict against ``model`` strictly (see the module docstring); returns it with
    the class-dependent parameters dropped when their size differs from the model's (they keep their init)."""
    model_sd = model.state_dict()
    resized = [k for k in CLASS_DEPENDENT_KEYS
               if k in state_dict and k in model_sd and state_dict[k].shape != model_sd[k].shape]
    if resized:
        log_reinitialised(filename, resized, state_dict, model_sd)
        state_dict = {k: v for k, v in state_dict.items() if k not in resized}
    for k, v in state_dict.items():
        if k in model_sd and v.shape != model_sd[k].shape:
            hint = " (4- vs 5-scale: MODEL.DINO.NUM_FEATURE_LEVELS, MODEL.FOCALNET.OUT_FEATURES)" if (
                "level_embed" in k or "sampling_offsets" in k or "attention_weights" in k) else ""
            raise UserError(f"{filename}: {k} has shape {tuple(v.shape)} in the DINO checkpoint, {tuple(model_sd[k].shape)} "
                            f"in the model{hint}")
    unexpected = [k for k in state_dict if k not in model_sd]
    if unexpected:
        raise UserError(f"{filename}: key {unexpected[0]} of the DINO checkpoint is not in the model "
                        f"(check MODEL.FOCALNET / MODEL.DINO against the checkpoint); unexpected: {describe_keys(unexpected, 3)}")
    missing = [k for k in model_sd if k not in state_dict and k not in resized]
    if missing:
        raise UserError(f"{filename}: the DINO checkpoint lacks the model's key {missing[0]} (check MODEL.FOCALNET / "
                        f"MODEL.DINO against the checkpoint); missing: {describe_keys(missing, 3)}")
    return state_dict
