"""Loading FocalNet weights: official, timm, Hugging Face, mmdet/mmseg and Detectron2 checkpoints; focal kernel
adaptation."""
from .adapt import adapt_focal_kernels, config_target_shapes, new_focal_level_keys
from .convert import (
    FORMATS,
    describe_keys,
    detect_format,
    find_state_dict,
    focalnet_prefix_in,
    read_checkpoint,
    timm_to_official,
    to_official_backbone,
)
from .detection_checkpoint import FocalNetCheckpointer, focalnet_prefix
from .huggingface import hf_config_to_focalnet, huggingface_to_official, is_huggingface, read_huggingface_folder

__all__ = [
    "FocalNetCheckpointer",
    "focalnet_prefix",
    "FORMATS",
    "read_checkpoint",
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
