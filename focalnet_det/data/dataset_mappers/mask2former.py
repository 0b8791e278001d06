"""Mask2Former's training mappers, by ``INPUT.DATASET_MAPPER_NAME`` (the official names and behaviour).

- ``mask_former_semantic``: resize (``INPUT.MIN_SIZE_TRAIN``), crop in which no class covers more than
  ``INPUT.CROP.SINGLE_CATEGORY_MAX_AREA``, SSD colour augmentation (``INPUT.COLOR_AUG_SSD``), flip; one
  binary mask per class present.
- ``mask_former_panoptic``: the same augmentation on the image, the semantic label and the panoptic PNG;
  one mask per non-crowd segment.
- ``mask_former_instance``: resize, optional random crop (``INPUT.CROP``), flip; one mask per non-crowd
  COCO object (polygons or RLE).
- ``coco_instance_lsj`` / ``coco_panoptic_lsj`` (the "new baseline"): flip, resize into ``INPUT.IMAGE_SIZE``
  squared scaled by U(``MIN_SCALE``, ``MAX_SCALE``), a fixed ``IMAGE_SIZE`` crop (padding image 128, labels
  255); masks with boxes, objects cropped away dropped.

The first three pad image and labels to ``INPUT.SIZE_DIVISIBILITY`` squared when it is > 0 (image 128 before
normalisation, semantic label the ignore value, panoptic ids 0 = VOID, instance masks 0). All are for
training; evaluation uses Detectron2's ``DatasetMapper(cfg, is_train=False)``, as the official code.
"""
import copy
import logging

import numpy as np
import pycocotools.mask as mask_util
import torch
import torch.nn.functional as F

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.projects.point_rend import ColorAugSSDTransform
from detectron2.structures import BitMasks, Instances, polygons_to_bitmask

from ..augmentation import category_area_crop, random_flip
from ..datasets.panoptic_utils import rgb2id

__all__ = [
    "MASKFORMER_MAPPERS",
    "build_maskformer_train_mapper",
    "MaskFormerSemanticDatasetMapper",
    "MaskFormerPanopticDatasetMapper",
    "MaskFormerInstanceDatasetMapper",
    "COCOInstanceNewBaselineDatasetMapper",
    "COCOPanopticNewBaselineDatasetMapper",
    "annotation_masks",
    "pad_to_square",
    "panoptic_to_instances",
    "semantic_to_instances",
]


# --------------------------------------------------------------------------------------------------
# targets


def pad_to_square(image, size_divisibility, pad_value=128, labels=(), label_pad_values=()):
    """Pad (bottom/right) the CHW image and the HW label tensors to ``size_divisibility`` squared."""
    h, w = image.shape[-2:]
    padding = [0, max(size_divisibility - w, 0), 0, max(size_divisibility - h, 0)]
    image = F.pad(image, padding, value=pad_value).contiguous()
    labels = [F.pad(x, padding, value=v).contiguous() for x, v in zip(labels, label_pad_values)]
    return image, labels


def semantic_to_instances(sem_seg, ignore_label, image_shape):
    """One binary mask per class present (ignored pixels excluded): Instances(gt_classes, gt_masks)."""
    classes = [c for c in torch.unique(sem_seg).tolist() if c != ignore_label]
    masks = [sem_seg == c for c in classes]
    return _instances(image_shape, classes, masks, sem_seg.shape[-2:])


def panoptic_to_instances(pan_seg, segments_info, image_shape, with_boxes=False):
    """Segment id map (H, W) + segments_info -> Instances(gt_classes, gt_masks[, gt_boxes]), crowd skipped."""
    pan_seg = torch.as_tensor(np.asarray(pan_seg))
    segments = [s for s in segments_info if not s.get("iscrowd", 0)]
    masks = [pan_seg == s["id"] for s in segments]
    return _instances(image_shape, [s["category_id"] for s in segments], masks, pan_seg.shape[-2:], with_boxes)


def _instances(image_shape, classes, masks, mask_shape, with_boxes=False):
    instances = Instances(tuple(image_shape))
    instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
    masks = BitMasks(torch.stack(masks) if masks else torch.zeros((0, *mask_shape), dtype=torch.bool))
    instances.gt_masks = masks.tensor
    if with_boxes:
        instances.gt_boxes = masks.get_bounding_boxes()
    return instances


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


def _transformed_annotations(dataset_dict, transforms, image_shape):
    """The non-crowd COCO annotations of ``dataset_dict`` (removed from it), through ``transforms``."""
    if "annotations" not in dataset_dict:
        raise ValueError(f"no annotations for {dataset_dict['file_name']}")
    return [
        utils.transform_instance_annotations({k: v for k, v in obj.items() if k != "keypoints"}, transforms, image_shape)
        for obj in dataset_dict.pop("annotations")
        if obj.get("iscrowd", 0) == 0
    ]


# --------------------------------------------------------------------------------------------------
# mappers


class MaskFormerSemanticDatasetMapper:
    """``mask_former_semantic``; also the base of the other mappers: reading, augmenting, the settings."""

    @configurable
    def __init__(self, is_train=True, *, augmentations, image_format, ignore_label=255, size_divisibility=-1):
        """
        Args:
            augmentations: Detectron2 augmentations, applied to the image and its labels together.
            image_format: as ``INPUT.FORMAT``.
            ignore_label: the semantic label of unlabelled pixels (and of padding).
            size_divisibility: pad to this square when > 0.
        """
        if not is_train:
            raise ValueError(f"{type(self).__name__} is for training only")
        self.is_train = is_train
        self.tfm_gens = augmentations
        self.img_format = image_format
        self.ignore_label = ignore_label
        self.size_divisibility = size_divisibility
        logging.getLogger(__name__).info(f"[{type(self).__name__}] augmentations in training: {augmentations}")

    @classmethod
    def build_augmentation(cls, cfg, is_train=True):
        """ResizeShortestEdge, category-area-constrained crop (``INPUT.CROP``), SSD colour aug, flip."""
        augs = [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)]
        augs += category_area_crop(cfg)
        if cfg.INPUT.COLOR_AUG_SSD:
            augs.append(ColorAugSSDTransform(img_format=cfg.INPUT.FORMAT))
        return augs + [T.RandomFlip()]

    @classmethod
    def from_config(cls, cfg, is_train=True):
        names = cfg.DATASETS.TRAIN
        meta = MetadataCatalog.get(names[0]) if names else None
        return {
            "is_train": is_train,
            "augmentations": cls.build_augmentation(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": getattr(meta, "ignore_label", cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE),
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
        }

    def _read_sem_seg(self, dataset_dict, required=False):
        """The semantic label (removed from ``dataset_dict``), or None."""
        if "sem_seg_file_name" in dataset_dict:
            return utils.read_image(dataset_dict.pop("sem_seg_file_name")).astype("double")
        if required:
            raise ValueError(f"{type(self).__name__}: no sem_seg_file_name for {dataset_dict['file_name']}")
        return None

    def _augment(self, dataset_dict, sem_seg=None):
        """Read the image, augment it (with ``sem_seg``): (CHW image tensor, AugInput, transforms)."""
        image = utils.read_image(dataset_dict["file_name"], format=self.img_format)
        utils.check_image_size(dataset_dict, image)
        aug_input, transforms = T.apply_transform_gens(self.tfm_gens, T.AugInput(image, sem_seg=sem_seg))
        image = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        return image, aug_input, transforms

    def _pad(self, image, labels, pad_values):
        if self.size_divisibility > 0:
            return pad_to_square(image, self.size_divisibility, 128, labels, pad_values)
        return image, labels

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        if "annotations" in dataset_dict:
            raise ValueError(f"{type(self).__name__} does not read instance annotations")
        image, aug_input, _ = self._augment(dataset_dict, self._read_sem_seg(dataset_dict, required=True))
        sem_seg = torch.as_tensor(aug_input.sem_seg.astype("long"))
        image, (sem_seg,) = self._pad(image, [sem_seg], [self.ignore_label])
        dataset_dict["image"] = image
        dataset_dict["sem_seg"] = sem_seg
        dataset_dict["instances"] = semantic_to_instances(sem_seg, self.ignore_label, image.shape[-2:])
        return dataset_dict


class MaskFormerPanopticDatasetMapper(MaskFormerSemanticDatasetMapper):
    """``mask_former_panoptic``: the semantic mapper's augmentation, targets from the panoptic PNG."""

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        if "annotations" in dataset_dict:
            raise ValueError(f"{type(self).__name__} does not read instance annotations")
        if "pan_seg_file_name" not in dataset_dict:
            raise ValueError(f"{type(self).__name__}: no pan_seg_file_name for {dataset_dict['file_name']}")
        pan_seg = utils.read_image(dataset_dict.pop("pan_seg_file_name"), "RGB")
        image, aug_input, transforms = self._augment(dataset_dict, self._read_sem_seg(dataset_dict))
        labels, pads = [torch.as_tensor(rgb2id(transforms.apply_segmentation(pan_seg)))], [0]  # 0: VOID
        if aug_input.sem_seg is not None:
            labels.append(torch.as_tensor(aug_input.sem_seg.astype("long")))
            pads.append(self.ignore_label)
        image, labels = self._pad(image, labels, pads)
        dataset_dict["image"] = image
        if len(labels) > 1:
            dataset_dict["sem_seg"] = labels[1]
        dataset_dict["instances"] = panoptic_to_instances(labels[0], dataset_dict["segments_info"], image.shape[-2:])
        return dataset_dict


class MaskFormerInstanceDatasetMapper(MaskFormerSemanticDatasetMapper):
    """``mask_former_instance``: resize, optional random crop, flip; one mask per non-crowd object."""

    @classmethod
    def build_augmentation(cls, cfg, is_train=True):
        augs = [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)]
        if cfg.INPUT.CROP.ENABLED:
            augs.append(T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
        return augs + [T.RandomFlip()]

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        image, _, transforms = self._augment(dataset_dict)
        annos = _transformed_annotations(dataset_dict, transforms, image.shape[-2:])
        masks = annotation_masks(annos, *image.shape[-2:])
        image, masks = self._pad(image, list(masks), [0] * len(masks))
        masks = torch.stack(masks) if masks else torch.zeros((0, *image.shape[-2:]), dtype=torch.bool)
        instances = Instances(tuple(image.shape[-2:]))
        instances.gt_classes = torch.tensor([int(obj["category_id"]) for obj in annos], dtype=torch.int64)
        instances.gt_masks = BitMasks(masks).tensor
        dataset_dict["image"] = image
        dataset_dict["instances"] = instances
        return dataset_dict


def build_lsj_augmentation(cfg, is_train=True):
    """Flip, ResizeScale(MIN_SCALE..MAX_SCALE of IMAGE_SIZE), FixedSizeCrop(IMAGE_SIZE)."""
    if not is_train:
        raise ValueError("large-scale jitter is a training augmentation")
    size = cfg.INPUT.IMAGE_SIZE
    return random_flip(cfg) + [
        T.ResizeScale(min_scale=cfg.INPUT.MIN_SCALE, max_scale=cfg.INPUT.MAX_SCALE, target_height=size, target_width=size),
        T.FixedSizeCrop(crop_size=(size, size)),
    ]


class COCOInstanceNewBaselineDatasetMapper(MaskFormerSemanticDatasetMapper):
    """``coco_instance_lsj``: large-scale jitter; masks and boxes of the objects left after the crop."""

    build_augmentation = staticmethod(build_lsj_augmentation)

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        image, _, transforms = self._augment(dataset_dict)
        h, w = image.shape[-2:]
        dataset_dict["image"] = image
        if "annotations" in dataset_dict:
            annos = _transformed_annotations(dataset_dict, transforms, (h, w))
            masks = annotation_masks(annos, h, w)
            keep = masks.flatten(1).any(1) if len(masks) else torch.zeros(0, dtype=torch.bool)
            classes = torch.tensor([int(a["category_id"]) for a in annos], dtype=torch.int64)[keep]
            dataset_dict["instances"] = _instances((h, w), classes.tolist(), list(masks[keep]), (h, w), True)
        return dataset_dict


class COCOPanopticNewBaselineDatasetMapper(MaskFormerSemanticDatasetMapper):
    """``coco_panoptic_lsj``: large-scale jitter; one mask (and box) per non-crowd segment."""

    build_augmentation = staticmethod(build_lsj_augmentation)

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        image, _, transforms = self._augment(dataset_dict)
        dataset_dict["image"] = image
        if "pan_seg_file_name" in dataset_dict:
            pan_seg = rgb2id(transforms.apply_segmentation(utils.read_image(dataset_dict.pop("pan_seg_file_name"), "RGB")))
            dataset_dict["instances"] = panoptic_to_instances(
                pan_seg, dataset_dict["segments_info"], image.shape[-2:], with_boxes=True
            )
        return dataset_dict


MASKFORMER_MAPPERS = {
    "mask_former_semantic": MaskFormerSemanticDatasetMapper,
    "mask_former_panoptic": MaskFormerPanopticDatasetMapper,
    "mask_former_instance": MaskFormerInstanceDatasetMapper,
    "coco_instance_lsj": COCOInstanceNewBaselineDatasetMapper,
    "coco_panoptic_lsj": COCOPanopticNewBaselineDatasetMapper,
}


def build_maskformer_train_mapper(cfg):
    """The training mapper named by ``INPUT.DATASET_MAPPER_NAME``, or None for a name not listed above
    (the caller then uses its default mapper, as the official train_net.py does)."""
    mapper = MASKFORMER_MAPPERS.get(cfg.INPUT.DATASET_MAPPER_NAME)
    return mapper(cfg, True) if mapper is not None else None
