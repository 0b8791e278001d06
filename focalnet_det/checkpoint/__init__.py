"""Loading FocalNet weights: official, timm, mmdet/mmseg and Detectron2 checkpoints; focal kernel adaptation."""
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

__all__ = [
    "FocalNetCheckpointer",
    "focalnet_prefix",
    "FORMATS",
    "read_checkpoint",
    "find_state_dict",
    "detect_format",
    "to_official_backbone",
    "timm_to_official",
    "focalnet_prefix_in",
    "describe_keys",
    "adapt_focal_kernels",
    "config_target_shapes",
    "new_focal_level_keys",
]
