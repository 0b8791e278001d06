"""Training mapper of Mask2Former for semantic segmentation (``INPUT.DATASET_MAPPER_NAME: mask_former_semantic``).

Resize (short side ``INPUT.MIN_SIZE_TRAIN``), random crop in which no class covers more than
``INPUT.CROP.SINGLE_CATEGORY_MAX_AREA``, optional SSD colour augmentation, flip; then, if
``INPUT.SIZE_DIVISIBILITY > 0``, image and label padded to that square (image with 128 before
normalisation, label with the ignore value). Targets: one binary mask per class present.
"""
import copy
import logging

import numpy as np
import torch
import torch.nn.functional as F

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.projects.point_rend import ColorAugSSDTransform
from detectron2.structures import BitMasks, Instances

__all__ = ["MaskFormerSemanticDatasetMapper", "build_maskformer_augmentation", "pad_to_square"]


def build_maskformer_augmentation(cfg, is_train=True):
    """ResizeShortestEdge, category-area-constrained crop (``INPUT.CROP``), SSD colour aug, flip."""
    augs = [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)]
    if cfg.INPUT.CROP.ENABLED:
        augs.append(
            T.RandomCrop_CategoryAreaConstraint(
                cfg.INPUT.CROP.TYPE,
                cfg.INPUT.CROP.SIZE,
                cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
                cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            )
        )
    if cfg.INPUT.COLOR_AUG_SSD:
        augs.append(ColorAugSSDTransform(img_format=cfg.INPUT.FORMAT))
    augs.append(T.RandomFlip())
    return augs


def pad_to_square(image, size_divisibility, pad_value=128, labels=(), label_pad_values=()):
    """Pad (bottom/right) the CHW image and the HW label tensors to ``size_divisibility`` squared."""
    h, w = image.shape[-2:]
    padding = [0, max(size_divisibility - w, 0), 0, max(size_divisibility - h, 0)]
    image = F.pad(image, padding, value=pad_value).contiguous()
    labels = [F.pad(x, padding, value=v).contiguous() for x, v in zip(labels, label_pad_values)]
    return image, labels


class MaskFormerSemanticDatasetMapper:
    @configurable
    def __init__(self, is_train=True, *, augmentations, image_format, ignore_label, size_divisibility):
        if not is_train:
            raise ValueError("MaskFormerSemanticDatasetMapper is for training only")
        self.is_train = is_train
        self.tfm_gens = augmentations
        self.img_format = image_format
        self.ignore_label = ignore_label
        self.size_divisibility = size_divisibility
        logging.getLogger(__name__).info(f"[{self.__class__.__name__}] augmentations in training: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train=True):
        names = cfg.DATASETS.TRAIN
        meta = MetadataCatalog.get(names[0]) if names else None
        return {
            "is_train": is_train,
            "augmentations": build_maskformer_augmentation(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": getattr(meta, "ignore_label", cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE),
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
        }

    def _read(self, dataset_dict):
        image = utils.read_image(dataset_dict["file_name"], format=self.img_format)
        utils.check_image_size(dataset_dict, image)
        if "sem_seg_file_name" not in dataset_dict:
            raise ValueError(f"{self.__class__.__name__}: no sem_seg_file_name for {dataset_dict['file_name']}")
        sem_seg_gt = utils.read_image(dataset_dict.pop("sem_seg_file_name")).astype("double")
        return image, sem_seg_gt

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        if "annotations" in dataset_dict:
            raise ValueError("MaskFormerSemanticDatasetMapper does not read instance annotations")
        image, sem_seg_gt = self._read(dataset_dict)
        aug_input = T.AugInput(image, sem_seg=sem_seg_gt)
        aug_input, _ = T.apply_transform_gens(self.tfm_gens, aug_input)
        image = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        sem_seg_gt = torch.as_tensor(aug_input.sem_seg.astype("long"))
        if self.size_divisibility > 0:
            image, (sem_seg_gt,) = pad_to_square(image, self.size_divisibility, 128, [sem_seg_gt], [self.ignore_label])
        dataset_dict["image"] = image
        dataset_dict["sem_seg"] = sem_seg_gt
        dataset_dict["instances"] = semantic_to_instances(sem_seg_gt, self.ignore_label, image.shape[-2:])
        return dataset_dict


def semantic_to_instances(sem_seg, ignore_label, image_shape):
    """One binary mask per class present (ignored pixels excluded): Instances(gt_classes, gt_masks)."""
    instances = Instances(tuple(image_shape))
    classes = [c for c in torch.unique(sem_seg).tolist() if c != ignore_label]
    instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
    if classes:
        masks = torch.stack([sem_seg == c for c in classes])
    else:
        masks = torch.zeros((0, sem_seg.shape[-2], sem_seg.shape[-1]), dtype=torch.bool)
    instances.gt_masks = BitMasks(masks).tensor
    return instances
