"""Large-scale-jitter training mapper of Mask2Former for COCO instances (``coco_instance_lsj``, the "new baseline").

The augmentation of the panoptic one (flip, resize scale, fixed-size crop); COCO annotations become
binary masks and classes of the non-crowd objects, boxes from the masks; objects cropped away are dropped.
"""
import copy
import logging

import numpy as np
import torch

from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances

from .coco_panoptic_new_baseline_dataset_mapper import build_lsj_augmentation
from .mask_former_instance_dataset_mapper import annotation_masks

__all__ = ["COCOInstanceNewBaselineDatasetMapper"]


class COCOInstanceNewBaselineDatasetMapper:
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
        h, w = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            annos = [
                utils.transform_instance_annotations(obj, transforms, (h, w))
                for obj in dataset_dict.pop("annotations")
                if obj.get("iscrowd", 0) == 0
            ]
            masks = annotation_masks(annos, h, w)
            keep = masks.flatten(1).any(1) if len(masks) else torch.zeros(0, dtype=torch.bool)
            instances = Instances((h, w))
            instances.gt_classes = torch.tensor([int(a["category_id"]) for a in annos], dtype=torch.int64)[keep]
            bitmasks = BitMasks(masks[keep])
            instances.gt_masks = bitmasks.tensor
            instances.gt_boxes = bitmasks.get_bounding_boxes()
            dataset_dict["instances"] = instances
        return dataset_dict
