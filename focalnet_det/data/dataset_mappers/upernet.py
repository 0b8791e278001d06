"""UPerNet's training data: the mmseg ADE20K pipeline as a Detectron2 mapper (``SemSegDatasetMapper``).

Resize with a random ratio of a (long, short) scale (``ResizeScaleRatio``), random crop in which no category
covers more than ``INPUT.CROP.SINGLE_CATEGORY_MAX_AREA`` (Detectron2's ``RandomCrop_CategoryAreaConstraint``),
flip, photometric distortion (``PhotometricDistortion``), then padding to the crop size (image with the pixel
mean, i.e. 0 after normalisation as mmseg pads; label with the ignore value).
"""
import copy
from functools import partial

import cv2
import numpy as np
import torch
from PIL import Image

from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..augmentation import category_area_crop, random_flip

__all__ = ["ResizeScaleRatio", "PhotometricDistortion", "build_sem_seg_augmentation", "SemSegDatasetMapper"]


class ResizeScaleRatio(T.Augmentation):
    """mmseg's ``Resize(img_scale=(long, short), ratio_range=(lo, hi), keep_ratio=True)``: draw r ~ U(lo, hi)
    and resize, keeping the aspect ratio, to the largest size with short side <= r * short and long side
    <= r * long. Unlike ``ResizeShortestEdge`` with a fixed ``max_size``, the long-side limit scales with r."""

    def __init__(self, short, long, ratio_range=(0.5, 2.0), interp=Image.BILINEAR):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        h, w = image.shape[:2]
        r = np.random.uniform(*self.ratio_range)
        new_h, new_w = T.ResizeShortestEdge.get_output_shape(h, w, self.short * r, self.long * r)
        return T.ResizeTransform(h, w, new_h, new_w, self.interp)


def _adjust(values, alpha=1.0, beta=0.0):
    return np.clip(values.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def _distort(img, *, to_hsv, from_hsv, beta, alpha, contrast_first, saturation, hue):
    img = _adjust(img, beta=beta) if beta is not None else img
    if alpha is not None and contrast_first:
        img = _adjust(img, alpha=alpha)
    if saturation is not None or hue is not None:
        hsv = cv2.cvtColor(img, to_hsv)
        if saturation is not None:
            hsv[..., 1] = _adjust(hsv[..., 1], alpha=saturation)
        if hue is not None:
            hsv[..., 0] = (hsv[..., 0].astype(np.int32) + hue) % 180
        img = cv2.cvtColor(hsv, from_hsv)
    if alpha is not None and not contrast_first:
        img = _adjust(img, alpha=alpha)
    return img


class PhotometricDistortion(T.Augmentation):
    """mmseg's ``PhotoMetricDistortion`` (= SSD's colour augmentation), on uint8 images: each with
    probability 0.5, brightness + U(-32, 32), contrast x U(0.5, 1.5) (before or after the HSV part, at
    random), saturation x U(0.5, 1.5), hue + randint(-18, 18) (OpenCV hue units), clipping to [0, 255]."""

    def __init__(self, image_format="RGB", brightness_delta=32, contrast_range=(0.5, 1.5),
                 saturation_range=(0.5, 1.5), hue_delta=18):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        rand = np.random
        rgb = self.image_format == "RGB"
        params = dict(
            to_hsv=cv2.COLOR_RGB2HSV if rgb else cv2.COLOR_BGR2HSV,
            from_hsv=cv2.COLOR_HSV2RGB if rgb else cv2.COLOR_HSV2BGR,
            beta=rand.uniform(-self.brightness_delta, self.brightness_delta) if rand.randint(2) else None,
            contrast_first=bool(rand.randint(2)),
            alpha=rand.uniform(*self.contrast_range) if rand.randint(2) else None,
            saturation=rand.uniform(*self.saturation_range) if rand.randint(2) else None,
            hue=int(rand.randint(-self.hue_delta, self.hue_delta)) if rand.randint(2) else None,
        )
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"PhotometricDistortion needs HxWx3 uint8 images, got {image.dtype} {image.shape}")
        return T.ColorTransform(partial(_distort, **params))


def build_sem_seg_augmentation(cfg, is_train):
    """Training: resize (``INPUT.RESIZE_RATIO_RANGE`` -> ``ResizeScaleRatio``, else ``ResizeShortestEdge``),
    ``INPUT.CROP`` with ``SINGLE_CATEGORY_MAX_AREA``, ``INPUT.RANDOM_FLIP``, ``INPUT.COLOR_AUG_SSD``.
    Test: ``ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST)``."""
    if not is_train:
        return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]
    if cfg.INPUT.RESIZE_RATIO_RANGE:
        if len(cfg.INPUT.RESIZE_RATIO_RANGE) != 2:
            raise ValueError(f"INPUT.RESIZE_RATIO_RANGE must be (lo, hi), got {cfg.INPUT.RESIZE_RATIO_RANGE}")
        augs = [ResizeScaleRatio(cfg.INPUT.MIN_SIZE_TRAIN[0], cfg.INPUT.MAX_SIZE_TRAIN, tuple(cfg.INPUT.RESIZE_RATIO_RANGE))]
    else:
        augs = [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)]
    augs += category_area_crop(cfg) + random_flip(cfg)
    if cfg.INPUT.COLOR_AUG_SSD:
        augs.append(PhotometricDistortion(cfg.INPUT.FORMAT))
    return augs


class SemSegDatasetMapper:
    """Dataset dict (``file_name``, ``sem_seg_file_name``) -> ``{"image": CHW uint8, "sem_seg": HW long, ...}``
    through :func:`build_sem_seg_augmentation`. In training with an absolute crop, image and label are padded
    to the crop size, so every batch has the crop's shape (mmseg's ``Pad``). At test time the label is dropped
    (evaluators read the files), as Detectron2's ``DatasetMapper`` does."""

    @configurable
    def __init__(self, is_train=True, *, augmentations, image_format="RGB", ignore_value=255, pad_size=None,
                 pad_value=(0, 0, 0)):
        """
        Args:
            augmentations: Detectron2 augmentations, applied to image and label together.
            image_format: as ``INPUT.FORMAT``.
            ignore_value: label of pixels without a class (also used for padding).
            pad_size: ``(h, w)`` to pad to in training, or None.
            pad_value: per-channel image padding (the pixel mean, in ``image_format`` order).
        """
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.ignore_value = ignore_value
        self.pad_size = tuple(pad_size) if pad_size else None
        self.pad_value = [int(round(v)) for v in pad_value]

    @classmethod
    def from_config(cls, cfg, is_train=True):
        crop = cfg.INPUT.CROP
        return {
            "is_train": is_train,
            "augmentations": build_sem_seg_augmentation(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "pad_size": crop.SIZE if is_train and crop.ENABLED and crop.TYPE == "absolute" else None,
            "pad_value": cfg.MODEL.PIXEL_MEAN,
        }

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        sem_seg = None
        if "sem_seg_file_name" in dataset_dict:
            sem_seg = utils.read_image(dataset_dict.pop("sem_seg_file_name"), "L").squeeze(2)
        aug_input = T.AugInput(image, sem_seg=sem_seg)
        self.augmentations(aug_input)
        image = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        if sem_seg is not None:
            sem_seg = torch.as_tensor(aug_input.sem_seg.astype(np.int64))
        if self.is_train and self.pad_size is not None:
            image, sem_seg = self._pad(image, sem_seg)
        dataset_dict["image"] = image
        if self.is_train and sem_seg is not None:
            dataset_dict["sem_seg"] = sem_seg
        return dataset_dict

    def _pad(self, image, sem_seg):
        (h, w), (ph, pw) = image.shape[-2:], self.pad_size
        if h >= ph and w >= pw:
            return image, sem_seg
        ph, pw = max(h, ph), max(w, pw)
        padded = torch.tensor(self.pad_value, dtype=image.dtype).view(-1, 1, 1).repeat(1, ph, pw)
        padded[:, :h, :w] = image
        if sem_seg is not None:
            label = torch.full((ph, pw), self.ignore_value, dtype=sem_seg.dtype)
            label[:h, :w] = sem_seg
            sem_seg = label
        return padded, sem_seg
