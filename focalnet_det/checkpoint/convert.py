"""Recognising a checkpoint's layout and mapping it to the model's keys: the second and third steps of loading
(``reading.py`` reads the file safely before; ``adapt.py`` fits the focal kernels after; ``FocalNetCheckpointer``
loads). ``convert_checkpoint`` runs the steps for ``tools/convert_checkpoint.py``.

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

``recognise`` tells apart, beside those, the released whole models converted whole (``WHOLE_MODELS``): an official
DINO (``dino.py``), an mmseg UPerNet (``mmseg.py``) and an mmdet (Cascade) Mask R-CNN (``mmdet.py``).

"Official backbone layout" means plain official key names with no prefix (``patch_embed.proj.weight``...).
"""
import logging
import re
from collections.abc import Mapping

import numpy as np
import torch

from ..errors import UserError
from .adapt import adapt_focal_kernels, config_target_shapes
from .dino import is_official_dino, official_dino_to_detectron2
from .huggingface import huggingface_to_official, is_huggingface
from .mmdet import is_mmdet_detector, is_mmdet_rcnn, log_mmdet_meta, mmdet_rcnn_to_detectron2
from .mmseg import is_mmseg_upernet, mmseg_upernet_to_detectron2
from .reading import describe_keys, read_checkpoint

__all__ = [
    "FORMATS",
    "WHOLE_MODELS",
    "read_checkpoint",
    "find_state_dict",
    "detect_format",
    "recognise",
    "timm_to_official",
    "to_official_backbone",
    "whole_model_to_detectron2",
    "convert_checkpoint",
    "focalnet_prefix_in",
    "describe_keys",
]

logger = logging.getLogger(__name__)

FORMATS = ("official", "timm", "huggingface", "mm", "detectron2", "unknown")
WHOLE_MODELS = ("dino", "mmseg-upernet", "mmdet-rcnn")
_STEM = "patch_embed.proj.weight"  # present in every official-layout FocalNet state dict
_WRAPPERS = ("model", "state_dict", "teacher", "module")


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


def recognise(state_dict, wrapper=None):
    """The layout of an unwrapped state dict: one of ``WHOLE_MODELS`` for a released whole model, else
    ``detect_format``'s answer (``mm`` is then a detector or segmentor of which only the backbone is used)."""
    if is_official_dino(state_dict):
        return "dino"
    fmt = detect_format(state_dict, wrapper)
    if fmt == "mm" and is_mmseg_upernet(state_dict):
        return "mmseg-upernet"
    if fmt == "mm" and is_mmdet_rcnn(state_dict):
        return "mmdet-rcnn"
    return fmt


def whole_model_to_detectron2(state_dict, layout, source="checkpoint"):
    """Rename a released whole model (``layout`` in ``WHOLE_MODELS``) to this project's keys."""
    if layout == "dino":
        return official_dino_to_detectron2(state_dict)
    if layout == "mmseg-upernet":
        return mmseg_upernet_to_detectron2(state_dict)
    if layout == "mmdet-rcnn":
        return mmdet_rcnn_to_detectron2(state_dict, source)
    raise ValueError(f"not a whole-model layout: {layout}")


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
    """Convert an unwrapped state dict of layout ``fmt`` (``recognise``'s answers but ``unknown``) to the official
    backbone layout.

    For ``detectron2``, ``mm`` and the whole models the FocalNet part is taken from wherever it sits (e.g.
    ``backbone.``, ``backbone.0.`` or ``backbone.bottom_up.``); the rest (heads, FPN) is dropped.
    """
    if fmt == "timm":
        return timm_to_official(state_dict)
    if fmt == "huggingface":
        return huggingface_to_official(state_dict)
    if fmt == "official":
        return {k: v for k, v in state_dict.items() if not k.startswith(("head.", "norm."))}
    prefix = focalnet_prefix_in(state_dict)
    if fmt not in ("mm", "detectron2", *WHOLE_MODELS) or prefix is None:
        raise UserError(f"no FocalNet backbone found in the checkpoint; its keys: {describe_keys(state_dict)}")
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def convert_checkpoint(path, focal_windows=None, focal_levels=None):
    """Read the local file or Hugging Face folder ``path`` and return ``(state dict, layout)``: the official-layout
    backbone and ``detect_format``'s answer, or for a released whole model (``WHOLE_MODELS``) the whole model under
    this project's keys. ``focal_windows`` / ``focal_levels`` adapt a backbone's focal kernels
    (``adapt.config_target_shapes``)."""
    loaded = read_checkpoint(path)
    state_dict, wrapper = find_state_dict(loaded)
    if state_dict is None:
        raise UserError(f"no state dict found in {path}")
    layout = recognise(state_dict, wrapper)
    if layout in WHOLE_MODELS:
        if focal_windows or focal_levels:
            what = {"dino": "DINO", "mmseg-upernet": "mmseg UPerNet", "mmdet-rcnn": "mmdet R-CNN"}[layout]
            raise UserError(f"--focal-windows/--focal-levels apply to backbones, not to a whole {what} checkpoint")
        if layout == "mmdet-rcnn":
            log_mmdet_meta(loaded, path)
        return whole_model_to_detectron2(state_dict, layout, path), layout
    if layout == "unknown":
        raise UserError(f"{path} is not a FocalNet checkpoint; its keys: {describe_keys(state_dict)}")
    if layout == "mm" and is_mmdet_detector(state_dict):
        logger.info(f"{path}: an mmdet detector without an R-CNN head (e.g. ATSS, Sparse R-CNN): only its "
                    f"backbone is converted")
    try:
        backbone = to_official_backbone(state_dict, layout)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    if focal_windows or focal_levels:
        backbone = adapt_focal_kernels(backbone, config_target_shapes(backbone, focal_windows, focal_levels))
    return backbone, layout
