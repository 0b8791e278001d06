"""Training mapper of Mask2Former for panoptic segmentation (``INPUT.DATASET_MAPPER_NAME: mask_former_panoptic``).

The augmentation of the semantic mapper (resize, constrained crop, colour, flip, square padding), applied
to the image, the semantic label and the panoptic PNG; targets: one binary mask per non-crowd segment with
its (contiguous) category.
"""
import copy

import numpy as np
import torch

from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances

from ..datasets.panoptic_utils import rgb2id
from .mask_former_semantic_dataset_mapper import MaskFormerSemanticDatasetMapper, pad_to_square

__all__ = ["MaskFormerPanopticDatasetMapper", "panoptic_to_instances", "rgb2id"]


def panoptic_to_instances(pan_seg, segments_info, image_shape, with_boxes=False):
    """Segment id map (H, W) + segments_info -> Instances(gt_classes, gt_masks[, gt_boxes]), crowd skipped."""
    pan_seg = torch.as_tensor(np.asarray(pan_seg))
    segments = [s for s in segments_info if not s.get("iscrowd", 0)]
    instances = Instances(tuple(image_shape))
    instances.gt_classes = torch.tensor([s["category_id"] for s in segments], dtype=torch.int64)
    if segments:
        masks = BitMasks(torch.stack([pan_seg == s["id"] for s in segments]))
    else:
        masks = BitMasks(torch.zeros((0, pan_seg.shape[-2], pan_seg.shape[-1]), dtype=torch.bool))
    instances.gt_masks = masks.tensor
    if with_boxes:
        instances.gt_boxes = masks.get_bounding_boxes()
    return instances


class MaskFormerPanopticDatasetMapper(MaskFormerSemanticDatasetMapper):
    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        if "annotations" in dataset_dict:
            raise ValueError("MaskFormerPanopticDatasetMapper does not read instance annotations")
        image = utils.read_image(dataset_dict["file_name"], format=self.img_format)
        utils.check_image_size(dataset_dict, image)
        sem_seg_gt = None
        if "sem_seg_file_name" in dataset_dict:
            sem_seg_gt = utils.read_image(dataset_dict.pop("sem_seg_file_name")).astype("double")
        if "pan_seg_file_name" not in dataset_dict:
            raise ValueError(f"{self.__class__.__name__}: no pan_seg_file_name for {dataset_dict['file_name']}")
        pan_seg_gt = utils.read_image(dataset_dict.pop("pan_seg_file_name"), "RGB")
        segments_info = dataset_dict["segments_info"]

        aug_input = T.AugInput(image, sem_seg=sem_seg_gt)
        aug_input, transforms = T.apply_transform_gens(self.tfm_gens, aug_input)
        image = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        pan_seg_gt = torch.as_tensor(rgb2id(transforms.apply_segmentation(pan_seg_gt)))
        labels, pads = [pan_seg_gt], [0]  # panoptic padding: 0, the VOID id
        if sem_seg_gt is not None:
            labels.append(torch.as_tensor(aug_input.sem_seg.astype("long")))
            pads.append(self.ignore_label)
        if self.size_divisibility > 0:
            image, labels = pad_to_square(image, self.size_divisibility, 128, labels, pads)
        dataset_dict["image"] = image
        if sem_seg_gt is not None:
            dataset_dict["sem_seg"] = labels[1]
        dataset_dict["instances"] = panoptic_to_instances(labels[0], segments_info, image.shape[-2:])
        return dataset_dict
