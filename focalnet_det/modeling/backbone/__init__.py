"""The FocalNet backbone (every released variant) and its Detectron2 wrappers, plain and with FPN.
Public: ``FocalNet``, ``build_focalnet_backbone``, ``build_focalnet_fpn_backbone`` (both registered)."""
from .focalnet import FocalNet, build_focalnet_backbone, build_focalnet_fpn_backbone

__all__ = ["FocalNet", "build_focalnet_backbone", "build_focalnet_fpn_backbone"]
