"""Reading FocalNet checkpoints of any known layout and converting them to the official backbone keys.

Layouts (``detect_format`` tells them apart by their keys, not by file names):

- ``official``: the authors' classification ``.pth`` (``{"model": sd}``, or a bare / ``state_dict`` /
  ``teacher`` wrapped state dict, possibly with ``module.``); ``head.*`` and the final ``norm.*`` are dropped.
- ``timm``: timm's FocalNet (``stem.*``, downsample at the start of the next stage, 1x1-conv linears),
  ``.safetensors`` or ``.pth``; renamed to the official layout.
- ``huggingface``: a ``transformers`` FocalNet (``embeddings.*``, ``encoder.stages.*``; the Hub's
  ``microsoft/focalnet-*``), a file or its model folder; renamed to the official layout (see ``huggingface.py``).
- ``mm``: an mmdet/mmseg detection or segmentation checkpoint (``state_dict`` with ``backbone.*`` plus
  heads); its ``backbone.*`` part is taken.
- ``detectron2``: anything else wrapped as ``{"model": sd}`` (including this project's own checkpoints);
  passed through unchanged.
- ``unknown``: a bare state dict of something else (e.g. a ResNet).

"Official backbone layout" means plain official key names with no prefix (``patch_embed.proj.weight``...).
"""
import logging
import os
import pickle
import re
from collections.abc import Mapping

import numpy as np
import torch

from ..errors import UserError
from .huggingface import huggingface_to_official, is_huggingface, read_huggingface_folder

__all__ = [
    "FORMATS",
    "read_checkpoint",
    "find_state_dict",
    "detect_format",
    "timm_to_official",
    "to_official_backbone",
    "focalnet_prefix_in",
    "describe_keys",
]

logger = logging.getLogger(__name__)

FORMATS = ("official", "timm", "huggingface", "mm", "detectron2", "unknown")
_STEM = "patch_embed.proj.weight"  # present in every official-layout FocalNet state dict
_WRAPPERS = ("model", "state_dict", "teacher", "module")


def describe_keys(keys, n=5):
    """``'a, b, c, ... (N keys)'``: the first few keys and the count, for error messages."""
    keys = list(keys)
    head = ", ".join(keys[:n])
    return f"{head}{', ...' if len(keys) > n else ''} ({len(keys)} keys)"


def torch_load(path):
    """``torch.load`` on CPU; tensors-only first, full unpickling (with a warning) for files that need it.

    Released checkpoints may carry a training config or an argparse Namespace beside the weights, which
    the weights-only unpickler refuses.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        logger.warning(f"{path} holds more than tensors; unpickling it fully (only do this for trusted files)")
        return torch.load(path, map_location="cpu", weights_only=False)


def read_checkpoint(path):
    """Read a local checkpoint file: ``.safetensors``, Detectron2 ``.pkl`` or anything ``torch.load`` reads; or a
    Hugging Face model folder.

    Raises UserError if the file is missing or cannot be read.
    """
    if os.path.isdir(path) or path.endswith(".index.json"):  # a Hugging Face model folder or shard index
        return read_huggingface_folder(path)
    if not os.path.isfile(path):
        raise UserError(f"weights file not found: {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        if path.endswith(".pkl"):
            with open(path, "rb") as f:
                return pickle.load(f, encoding="latin1")
        return torch_load(path)
    except Exception as e:
        raise UserError(f"cannot read weights file {path}: {type(e).__name__}: {first_line(e)}") from e


def first_line(e):
    return (str(e).strip().splitlines() or [""])[0][:200]


def _is_state_dict(obj):
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, (torch.Tensor, np.ndarray)) for k, v in obj.items())
    )


def find_state_dict(obj):
    """Unwrap a loaded checkpoint to its state dict.

    Returns ``(state_dict, wrapper)`` where ``wrapper`` is the key directly holding the state dict
    (``"model"``, ``"state_dict"``, ...) or None for a bare one; ``(None, None)`` if there is none.
    ``module.`` prefixes (DataParallel) are stripped; numpy arrays become tensors.
    """
    wrapper = None
    for _ in range(3):  # e.g. {"model": {"state_dict": sd}}
        if _is_state_dict(obj):
            break
        if not isinstance(obj, Mapping):
            return None, None
        key = next((k for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            return None, None
        wrapper = key
        obj = obj[key]
    else:
        return None, None
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return {k: torch.as_tensor(v) for k, v in obj.items()}, wrapper


def detect_format(state_dict, wrapper=None):
    """Which layout a (``find_state_dict``-unwrapped) state dict is in; one of ``FORMATS``."""
    if "stem.proj.weight" in state_dict and any(k.startswith("layers.") for k in state_dict):
        return "timm"
    if is_huggingface(state_dict):
        return "huggingface"
    if _STEM in state_dict:
        return "official"
    if "backbone." + _STEM in state_dict and wrapper == "state_dict":
        return "mm"
    if wrapper == "model" or focalnet_prefix_in(state_dict) is not None:
        return "detectron2"
    return "unknown"


def focalnet_prefix_in(state_dict):
    """The prefix under which a state dict holds an official-layout FocalNet (``""``, ``"backbone."``,
    ``"backbone.bottom_up."`` ...), or None; the shortest if there are several."""
    prefixes = [k[: -len(_STEM)] for k in state_dict if k.endswith(_STEM) and (k == _STEM or k[-len(_STEM) - 1] == ".")]
    return min(prefixes, key=len) if prefixes else None


# timm name -> official name, applied in order to each key
_TIMM_RENAMES = [
    (re.compile(r"^stem\."), "patch_embed."),
    (re.compile(r"\.ls([12])\.gamma$"), r".gamma_\1"),
    (re.compile(r"\.norm([12])_post\."), r".norm\1."),
    (re.compile(r"\.modulation\.norm\."), ".modulation.ln."),
]
# timm stores these linears as 1x1 convs; ours are nn.Linear (modulation.h stays a 1x1 conv in both)
_TIMM_SQUEEZE = re.compile(r"\.(modulation\.f|modulation\.proj|mlp\.fc1|mlp\.fc2)\.weight$")
_TIMM_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.")


def timm_to_official(state_dict):
    """Rename a timm FocalNet state dict to the official backbone layout (inverse of timm's
    ``checkpoint_filter_fn``); the classifier ``head.*`` and final ``norm.*`` are dropped."""
    out = {}
    for k, v in state_dict.items():
        if k.startswith(("head.", "norm.")):
            continue
        # timm's layers.{i}.downsample opens stage i; the official one closes stage i-1
        m = _TIMM_DOWNSAMPLE.match(k)
        if m:
            k = f"layers.{int(m.group(1)) - 1}.downsample." + k[m.end() :]
        for pattern, repl in _TIMM_RENAMES:
            k = pattern.sub(repl, k)
        if _TIMM_SQUEEZE.search(k) and v.dim() == 4:
            v = v.flatten(1)
        out[k] = v
    return out


def to_official_backbone(state_dict, fmt):
    """Convert an unwrapped state dict of layout ``fmt`` (not ``unknown``) to the official backbone layout.

    For ``detectron2`` and ``mm`` the FocalNet part is taken from wherever it sits (e.g. ``backbone.`` or
    ``backbone.bottom_up.``); the rest (heads, FPN) is dropped.
    """
    if fmt == "timm":
        return timm_to_official(state_dict)
    if fmt == "huggingface":
        return huggingface_to_official(state_dict)
    if fmt == "official":
        return {k: v for k, v in state_dict.items() if not k.startswith(("head.", "norm."))}
    prefix = focalnet_prefix_in(state_dict)
    if fmt not in ("mm", "detectron2") or prefix is None:
        raise UserError(f"no FocalNet backbone found in the checkpoint; its keys: {describe_keys(state_dict)}")
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
