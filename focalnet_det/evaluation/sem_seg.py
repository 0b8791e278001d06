"""Semantic-segmentation evaluation (mIoU) shared by UPerNet and Mask2Former."""
import numpy as np
from PIL import Image

from detectron2.evaluation import SemSegEvaluator
from detectron2.utils.file_io import PathManager

__all__ = ["build_sem_seg_evaluator", "read_sem_seg_gt"]


def read_sem_seg_gt(filename, dtype=int):
    """A label PNG as an array. Detectron2 0.7's default reader asks numpy for ``copy=False`` with a dtype
    conversion, which numpy 2 refuses (``ValueError: Unable to avoid copy``)."""
    with PathManager.open(filename, "rb") as f:
        return np.array(Image.open(f), dtype=dtype)


def build_sem_seg_evaluator(dataset_name, output_dir=None, distributed=True):
    """Detectron2's ``SemSegEvaluator`` (mIoU, fwIoU, mACC, pACC) reading labels with :func:`read_sem_seg_gt`."""
    return SemSegEvaluator(dataset_name, distributed=distributed, output_dir=output_dir,
                           sem_seg_loading_fn=read_sem_seg_gt)
