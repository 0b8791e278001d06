"""Large-scale-jitter training mapper of Mask2Former for COCO panoptic (``coco_panoptic_lsj``, the "new baseline").

Flip (``INPUT.RANDOM_FLIP``), resize into ``INPUT.IMAGE_SIZE`` squared scaled by U(``MIN_SCALE``, ``MAX_SCALE``),
then a fixed-size ``IMAGE_SIZE`` squared crop (padded where smaller: image 128, labels 255); targets: one
mask per non-crowd segment, with boxes from the masks.
"""
import copy
import logging

import numpy as np
import torch

from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from .mask_former_panoptic_dataset_mapper import panoptic_to_instances, rgb2id

__all__ = ["COCOPanopticNewBaselineDatasetMapper", "build_lsj_augmentation"]


def build_lsj_augmentation(cfg, is_train=True):
    """Flip, ResizeScale(MIN_SCALE..MAX_SCALE of IMAGE_SIZE), FixedSizeCrop(IMAGE_SIZE)."""
    if not is_train:
        raise ValueError("large-scale jitter is a training augmentation")
    size = cfg.INPUT.IMAGE_SIZE
    augs = []
    if cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(T.RandomFlip(horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                                 vertical=cfg.INPUT.RANDOM_FLIP == "vertical"))
    augs.extend([
        T.ResizeScale(min_scale=cfg.INPUT.MIN_SCALE, max_scale=cfg.INPUT.MAX_SCALE, target_height=size, target_width=size),
        T.FixedSizeCrop(crop_size=(size, size)),
    ])
    return augs


class COCOPanopticNewBaselineDatasetMapper:
    @configurable
    def __init__(self, is_train=True, *, tfm_gens, image_format):
        self.tfm_gens = tfm_gens
        self.img_format = image_format
        self.is_train = is_train
        logging.getLogger(__name__).info(f"[{self.__class__.__name__}] full augmentations: {tfm_gens}")

    @classmethod
    def from_config(cls, cfg, is_train=True):
        return {"is_train": is_train, "tfm_gens": build_lsj_augmentation(cfg, is_train), "image_format": cfg.INPUT.FORMAT}

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.img_format)
        utils.check_image_size(dataset_dict, image)
        image, transforms = T.apply_transform_gens(self.tfm_gens, image)
        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        if "pan_seg_file_name" in dataset_dict:
            pan_seg_gt = utils.read_image(dataset_dict.pop("pan_seg_file_name"), "RGB")
            pan_seg_gt = rgb2id(transforms.apply_segmentation(pan_seg_gt))
            dataset_dict["instances"] = panoptic_to_instances(
                pan_seg_gt, dataset_dict["segments_info"], image_shape, with_boxes=True
            )
        return dataset_dict
