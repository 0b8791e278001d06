"""Loading FocalNet weights: official, timm, Hugging Face, mmdet/mmseg, DINO and Detectron2 checkpoints.

One way through, one module a step: read the file without running anything from it (``reading``) -> recognise
its layout and map it to the model's keys (``convert``, with ``huggingface``, ``dino``, ``mmseg``, ``mmdet`` for
their layouts) -> adapt focal kernels (``adapt``) -> check and load (``inspect``'s structure check,
``FocalNetCheckpointer``). Each module imports only the steps before it.
"""
from .adapt import adapt_focal_kernels, config_target_shapes, new_focal_level_keys
from .convert import (
    FORMATS,
    WHOLE_MODELS,
    convert_checkpoint,
    detect_format,
    find_state_dict,
    focalnet_prefix_in,
    recognise,
    timm_to_official,
    to_official_backbone,
)
from .detection_checkpoint import FocalNetCheckpointer, focalnet_prefix
from .huggingface import hf_config_to_focalnet, huggingface_to_official, is_huggingface
from .reading import TRUST_ENV, describe_keys, read_checkpoint, read_huggingface_folder

__all__ = [
    "FocalNetCheckpointer",
    "focalnet_prefix",
    "FORMATS",
    "WHOLE_MODELS",
    "TRUST_ENV",
    "read_checkpoint",
    "recognise",
    "convert_checkpoint",
    "find_state_dict",
    "detect_format",
    "to_official_backbone",
    "timm_to_official",
    "is_huggingface",
    "huggingface_to_official",
    "read_huggingface_folder",
    "hf_config_to_focalnet",
    "focalnet_prefix_in",
    "describe_keys",
    "adapt_focal_kernels",
    "config_target_shapes",
    "new_focal_level_keys",
]
