"""Evaluators: mIoU shared by the semantic heads, and Mask2Former's by dataset type (PQ, mask AP, mIoU).
PQ with per-class PQ. Public: ``build_sem_seg_evaluator``, ``read_sem_seg_gt``, ``build_maskformer_evaluators``, ``InstanceSegEvaluator``."""
from .mask2former import InstanceSegEvaluator, build_maskformer_evaluators
from .panoptic import PerClassPanopticEvaluator
from .sem_seg import build_sem_seg_evaluator, read_sem_seg_gt

__all__ = ["build_sem_seg_evaluator", "read_sem_seg_gt", "build_maskformer_evaluators", "InstanceSegEvaluator",
           "PerClassPanopticEvaluator"]
