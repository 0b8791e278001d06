from .focalnet import FocalNet, build_focalnet_backbone, build_focalnet_fpn_backbone  # noqa: F401
