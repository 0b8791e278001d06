"""ROI heads for the released mmdet FocalNet detectors. Public: ``MMDetCascadeROIHeads`` (registered)."""
from .cascade import MMDetCascadeROIHeads

__all__ = ["MMDetCascadeROIHeads"]
