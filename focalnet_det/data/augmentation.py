"""Augmentations shared by the recipes: the detection recipe's (Mask R-CNN), flips, the class-area crop."""
import numpy as np

from detectron2.data import transforms as T

__all__ = ["RandomBranch", "build_detection_augmentation", "category_area_crop", "random_flip"]


class RandomBranch(T.Augmentation):
    """With probability ``prob`` apply the augmentations of ``branch``, otherwise those of ``default``."""

    def __init__(self, prob, branch, default):
        super().__init__()
        self.prob = prob
        self.branch = T.AugmentationList(branch)
        self.default = T.AugmentationList(default)

    def __call__(self, aug_input):
        chosen = self.branch if np.random.rand() < self.prob else self.default
        return chosen(aug_input)

    def __repr__(self):
        return f"RandomBranch(prob={self.prob}, branch={self.branch}, default={self.default})"


def build_detection_augmentation(cfg, is_train):
    """Multi-scale resize + flip; in training, optionally the DETR-style crop branch (``INPUT.CROP_AUG``)."""
    if not is_train:
        return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)
    augs = [resize]
    crop = cfg.INPUT.CROP_AUG
    if crop.ENABLED:
        branch = [
            T.ResizeShortestEdge(crop.RESIZE_SHORT, cfg.INPUT.MAX_SIZE_TRAIN, "choice"),
            T.RandomCrop("absolute_range", tuple(crop.CROP_SIZE)),
            resize,
        ]
        augs = [RandomBranch(crop.PROB, branch, [resize])]
    return augs + random_flip(cfg)


def random_flip(cfg):
    """``[RandomFlip]`` as ``INPUT.RANDOM_FLIP`` says ("horizontal", "vertical"), or ``[]`` for "none"."""
    if cfg.INPUT.RANDOM_FLIP == "none":
        return []
    return [T.RandomFlip(horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal", vertical=cfg.INPUT.RANDOM_FLIP == "vertical")]


def category_area_crop(cfg):
    """``[RandomCrop_CategoryAreaConstraint]`` from ``INPUT.CROP`` (no class above ``SINGLE_CATEGORY_MAX_AREA``
    of the crop), or ``[]`` when cropping is off: the semantic recipes' crop."""
    crop = cfg.INPUT.CROP
    if not crop.ENABLED:
        return []
    return [T.RandomCrop_CategoryAreaConstraint(crop.TYPE, crop.SIZE, crop.SINGLE_CATEGORY_MAX_AREA,
                                                cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE)]
