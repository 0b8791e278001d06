"""Training mapper of Mask2Former for instance segmentation (``INPUT.DATASET_MAPPER_NAME: mask_former_instance``).

Resize (short side ``INPUT.MIN_SIZE_TRAIN``), optional random crop (``INPUT.CROP``), flip; COCO-style
annotations (polygons or RLE) become one binary mask per non-crowd object; image and masks padded to
``INPUT.SIZE_DIVISIBILITY`` squared when it is > 0.
"""
import copy
import logging

import numpy as np
import pycocotools.mask as mask_util
import torch

from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances, polygons_to_bitmask

from .mask_former_semantic_dataset_mapper import pad_to_square

__all__ = ["MaskFormerInstanceDatasetMapper", "annotation_masks"]


def annotation_masks(annos, height, width):
    """Transformed COCO annotations -> (N, H, W) bool masks (polygons rasterised, RLE decoded)."""
    masks = []
    for anno in annos:
        segm = anno["segmentation"]
        if isinstance(segm, list):
            masks.append(polygons_to_bitmask(segm, height, width))
        elif isinstance(segm, dict):
            if isinstance(segm.get("counts"), list):
                segm = mask_util.frPyObjects(segm, height, width)
            masks.append(mask_util.decode(segm).astype(bool))
        elif isinstance(segm, np.ndarray):
            if segm.ndim != 2:
                raise ValueError(f"mask annotation must be 2-D, got shape {segm.shape}")
            # decoded RLE (0/1) after the transforms; crops pad segmentations with 255: not the object
            masks.append(segm.astype(np.uint8) == 1)
        else:
            raise ValueError(f"cannot read a segmentation of type {type(segm).__name__}")
    if not masks:
        return torch.zeros((0, height, width), dtype=torch.bool)
    return torch.stack([torch.from_numpy(np.ascontiguousarray(m)) for m in masks])


class MaskFormerInstanceDatasetMapper:
    @configurable
    def __init__(self, is_train=True, *, augmentations, image_format, size_divisibility):
        if not is_train:
            raise ValueError("MaskFormerInstanceDatasetMapper is for training only")
        self.is_train = is_train
        self.tfm_gens = augmentations
        self.img_format = image_format
        self.size_divisibility = size_divisibility
        logging.getLogger(__name__).info(f"[{self.__class__.__name__}] augmentations in training: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train=True):
        augs = [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)]
        if cfg.INPUT.CROP.ENABLED:
            augs.append(T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
        augs.append(T.RandomFlip())
        return {
            "is_train": is_train,
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
        }

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.img_format)
        utils.check_image_size(dataset_dict, image)
        aug_input = T.AugInput(image)
        aug_input, transforms = T.apply_transform_gens(self.tfm_gens, aug_input)
        image = aug_input.image
        h, w = image.shape[:2]
        if "annotations" not in dataset_dict:
            raise ValueError(f"{self.__class__.__name__}: no annotations for {dataset_dict['file_name']}")
        for anno in dataset_dict["annotations"]:
            anno.pop("keypoints", None)
        annos = [
            utils.transform_instance_annotations(obj, transforms, (h, w))
            for obj in dataset_dict.pop("annotations")
            if obj.get("iscrowd", 0) == 0
        ]
        masks = annotation_masks(annos, h, w)
        image = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if self.size_divisibility > 0:
            image, padded = pad_to_square(image, self.size_divisibility, 128, list(masks), [0] * len(masks))
            masks = torch.stack(padded) if padded else masks.new_zeros((0, *image.shape[-2:]))
        instances = Instances(tuple(image.shape[-2:]))
        instances.gt_classes = torch.tensor([int(obj["category_id"]) for obj in annos], dtype=torch.int64)
        instances.gt_masks = BitMasks(masks).tensor
        dataset_dict["image"] = image
        dataset_dict["instances"] = instances
        return dataset_dict
