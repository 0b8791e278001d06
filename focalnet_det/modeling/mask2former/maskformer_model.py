"""``MaskFormer``: the Mask2Former meta-architecture (``MODEL.META_ARCHITECTURE: "MaskFormer"``).

Images are normalised, padded to ``MODEL.MASK_FORMER.SIZE_DIVISIBILITY``, and given to the backbone and
the ``MaskFormerHead`` (pixel decoder + transformer decoder). In training the head's outputs go to the
Hungarian-matching ``SetCriterion``; at inference each image gets, as configured by
``MODEL.MASK_FORMER.TEST.{SEMANTIC_ON,PANOPTIC_ON,INSTANCE_ON}``:

- ``sem_seg``: (K, H, W) scores, sum over queries of class probability x mask probability;
- ``panoptic_seg``: ``(int32 (H, W) segment ids, segments_info)``, queries confident enough
  (``OBJECT_MASK_THRESHOLD``) painted by argmax of score x mask probability, a segment kept when at least
  ``OVERLAP_THRESHOLD`` of its mask survives; stuff of one class merged into one segment;
- ``instances``: the ``TEST.DETECTIONS_PER_IMAGE`` best (query, class) pairs as ``Instances`` with
  binary ``pred_masks``, ``scores`` (class x mean mask probability inside the mask), ``pred_classes``
  and empty ``pred_boxes``.

All at the requested output size (``height``/``width`` of the input dict), in Detectron2's usual forms.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import BitMasks, Boxes, ImageList, Instances
from detectron2.utils.memory import retry_if_cuda_oom

from .criterion import SetCriterion
from .matcher import HungarianMatcher

__all__ = ["MaskFormer"]


@META_ARCH_REGISTRY.register()
class MaskFormer(nn.Module):
    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: nn.Module,
        criterion: nn.Module,
        num_queries: int,
        object_mask_threshold: float,
        overlap_threshold: float,
        metadata,
        size_divisibility: int,
        sem_seg_postprocess_before_inference: bool,
        pixel_mean: Tuple[float],
        pixel_std: Tuple[float],
        semantic_on: bool,
        panoptic_on: bool,
        instance_on: bool,
        test_topk_per_image: int,
    ):
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.num_queries = num_queries
        self.overlap_threshold = overlap_threshold
        self.object_mask_threshold = object_mask_threshold
        self.metadata = metadata
        if size_divisibility < 0:
            size_divisibility = self.backbone.size_divisibility
        self.size_divisibility = size_divisibility
        self.sem_seg_postprocess_before_inference = sem_seg_postprocess_before_inference
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.semantic_on = semantic_on
        self.instance_on = instance_on
        self.panoptic_on = panoptic_on
        self.test_topk_per_image = test_topk_per_image
        if not self.semantic_on and not self.sem_seg_postprocess_before_inference:
            raise ValueError("without semantic inference, masks must be post-processed before inference")

    @classmethod
    def from_config(cls, cfg):
        mf = cfg.MODEL.MASK_FORMER
        backbone = build_backbone(cfg)
        sem_seg_head = build_sem_seg_head(cfg, backbone.output_shape())
        matcher = HungarianMatcher(
            cost_class=mf.CLASS_WEIGHT, cost_mask=mf.MASK_WEIGHT, cost_dice=mf.DICE_WEIGHT,
            num_points=mf.TRAIN_NUM_POINTS,
        )
        weight_dict = {"loss_ce": mf.CLASS_WEIGHT, "loss_mask": mf.MASK_WEIGHT, "loss_dice": mf.DICE_WEIGHT}
        if mf.DEEP_SUPERVISION:  # the same weights for the DEC_LAYERS - 1 auxiliary outputs, suffixed _i
            weight_dict.update({f"{k}_{i}": v for i in range(mf.DEC_LAYERS - 1) for k, v in list(weight_dict.items())})
        criterion = SetCriterion(
            sem_seg_head.num_classes,
            matcher=matcher,
            weight_dict=weight_dict,
            eos_coef=mf.NO_OBJECT_WEIGHT,
            losses=["labels", "masks"],
            num_points=mf.TRAIN_NUM_POINTS,
            oversample_ratio=mf.OVERSAMPLE_RATIO,
            importance_sample_ratio=mf.IMPORTANCE_SAMPLE_RATIO,
        )
        test = mf.TEST
        return {
            "backbone": backbone,
            "sem_seg_head": sem_seg_head,
            "criterion": criterion,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "object_mask_threshold": test.OBJECT_MASK_THRESHOLD,
            "overlap_threshold": test.OVERLAP_THRESHOLD,
            "metadata": MetadataCatalog.get(cfg.DATASETS.TRAIN[0]) if cfg.DATASETS.TRAIN else None,
            "size_divisibility": mf.SIZE_DIVISIBILITY,
            "sem_seg_postprocess_before_inference": (
                test.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE or test.PANOPTIC_ON or test.INSTANCE_ON
            ),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "semantic_on": test.SEMANTIC_ON,
            "instance_on": test.INSTANCE_ON,
            "panoptic_on": test.PANOPTIC_ON,
            "test_topk_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    def forward(self, batched_inputs):
        """
        Args:
            batched_inputs: list of dicts from a dataset mapper: "image" (C, H, W) in ``INPUT.FORMAT``;
                in training "instances" with ``gt_classes`` and ``gt_masks``; optionally "height"/"width",
                the output size wanted at inference.
        Returns:
            training: dict of weighted losses; inference: per image a dict with the enabled outputs.
        """
        images = [x["image"].to(self.device) for x in batched_inputs]
        images = [(x - self.pixel_mean) / self.pixel_std for x in images]
        images = ImageList.from_tensors(images, self.size_divisibility)
        features = self.backbone(images.tensor)
        outputs = self.sem_seg_head(features)

        if self.training:
            if "instances" not in batched_inputs[0]:
                raise ValueError("MaskFormer training needs 'instances' (gt_classes, gt_masks) in its inputs")
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
            targets = self.prepare_targets(gt_instances, images)
            losses = self.criterion(outputs, targets)
            for k in list(losses.keys()):
                if k in self.criterion.weight_dict:
                    losses[k] *= self.criterion.weight_dict[k]
                else:
                    losses.pop(k)
            return losses

        mask_cls_results = outputs["pred_logits"]
        mask_pred_results = F.interpolate(
            outputs["pred_masks"], size=images.tensor.shape[-2:], mode="bilinear", align_corners=False
        )
        del outputs
        processed_results = []
        for mask_cls, mask_pred, input_per_image, image_size in zip(
            mask_cls_results, mask_pred_results, batched_inputs, images.image_sizes
        ):
            height = input_per_image.get("height", image_size[0])
            width = input_per_image.get("width", image_size[1])
            result = {}
            if self.sem_seg_postprocess_before_inference:
                mask_pred = retry_if_cuda_oom(sem_seg_postprocess)(mask_pred, image_size, height, width)
                mask_cls = mask_cls.to(mask_pred)
            if self.semantic_on:
                r = retry_if_cuda_oom(self.semantic_inference)(mask_cls, mask_pred)
                if not self.sem_seg_postprocess_before_inference:
                    r = retry_if_cuda_oom(sem_seg_postprocess)(r, image_size, height, width)
                result["sem_seg"] = r
            if self.panoptic_on:
                result["panoptic_seg"] = retry_if_cuda_oom(self.panoptic_inference)(mask_cls, mask_pred)
            if self.instance_on:
                result["instances"] = retry_if_cuda_oom(self.instance_inference)(mask_cls, mask_pred)
            processed_results.append(result)
        return processed_results

    def prepare_targets(self, targets, images):
        """Instances -> {"labels", "masks"} with the masks zero-padded to the padded batch size."""
        h_pad, w_pad = images.tensor.shape[-2:]
        new_targets = []
        for t in targets:
            gt_masks = t.gt_masks.tensor if isinstance(t.gt_masks, BitMasks) else t.gt_masks
            padded = gt_masks.new_zeros((gt_masks.shape[0], h_pad, w_pad))
            padded[:, : gt_masks.shape[1], : gt_masks.shape[2]] = gt_masks
            new_targets.append({"labels": t.gt_classes, "masks": padded})
        return new_targets

    def semantic_inference(self, mask_cls, mask_pred):
        """(Q, K+1) logits, (Q, H, W) mask logits -> (K, H, W) scores."""
        probs = F.softmax(mask_cls, dim=-1)[..., :-1]
        return torch.einsum("qc,qhw->chw", probs, mask_pred.sigmoid())

    def _is_thing(self, contiguous_id):
        if self.metadata is None:
            return True
        thing_ids = getattr(self.metadata, "thing_dataset_id_to_contiguous_id", None)
        return thing_ids is None or contiguous_id in thing_ids.values()

    def panoptic_inference(self, mask_cls, mask_pred):
        """(Q, K+1) logits, (Q, H, W) mask logits -> (int32 (H, W) segment ids, segments_info)."""
        scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
        mask_pred = mask_pred.sigmoid()
        keep = labels.ne(self.sem_seg_head.num_classes) & (scores > self.object_mask_threshold)
        cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], mask_pred[keep]
        h, w = cur_masks.shape[-2:]
        panoptic_seg = torch.zeros((h, w), dtype=torch.int32, device=cur_masks.device)
        segments_info = []
        if cur_masks.shape[0] == 0:
            return panoptic_seg, segments_info
        # each pixel goes to the query with the highest score x mask probability
        cur_mask_ids = (cur_scores.view(-1, 1, 1) * cur_masks).argmax(0)
        current_segment_id = 0
        stuff_segment_ids = {}
        for k in range(cur_classes.shape[0]):
            pred_class = int(cur_classes[k])
            isthing = self._is_thing(pred_class)
            won = cur_mask_ids == k
            own = cur_masks[k] >= 0.5
            mask = won & own
            mask_area, original_area = int(won.sum()), int(own.sum())
            if mask_area == 0 or original_area == 0 or int(mask.sum()) == 0:
                continue
            if mask_area / original_area < self.overlap_threshold:
                continue
            if not isthing:
                if pred_class in stuff_segment_ids:  # one segment per stuff class
                    panoptic_seg[mask] = stuff_segment_ids[pred_class]
                    continue
                stuff_segment_ids[pred_class] = current_segment_id + 1
            current_segment_id += 1
            panoptic_seg[mask] = current_segment_id
            segments_info.append({"id": current_segment_id, "isthing": bool(isthing), "category_id": pred_class})
        return panoptic_seg, segments_info

    def instance_inference(self, mask_cls, mask_pred):
        """(Q, K+1) logits, (Q, H, W) mask logits -> Instances of the top-k (query, class) pairs."""
        image_size = mask_pred.shape[-2:]
        num_classes = self.sem_seg_head.num_classes
        scores = F.softmax(mask_cls, dim=-1)[:, :-1]  # (Q, K)
        labels = torch.arange(num_classes, device=self.device).unsqueeze(0).repeat(scores.shape[0], 1).flatten(0, 1)
        k = min(self.test_topk_per_image, scores.numel())
        scores_per_image, topk_indices = scores.flatten(0, 1).topk(k, sorted=False)
        labels_per_image = labels[topk_indices]
        mask_pred = mask_pred[torch.div(topk_indices, num_classes, rounding_mode="floor")]
        if self.panoptic_on:  # only things are instances
            keep = torch.tensor([self._is_thing(int(c)) for c in labels_per_image], dtype=torch.bool,
                                device=scores_per_image.device)
            scores_per_image, labels_per_image, mask_pred = scores_per_image[keep], labels_per_image[keep], mask_pred[keep]
        result = Instances(image_size)
        result.pred_masks = (mask_pred > 0).float()
        # boxes from masks are slow and not needed by the mask evaluation: empty boxes, as the official model
        result.pred_boxes = Boxes(torch.zeros(mask_pred.size(0), 4, device=mask_pred.device))
        binary = result.pred_masks.flatten(1)
        mask_scores = (mask_pred.sigmoid().flatten(1) * binary).sum(1) / (binary.sum(1) + 1e-6)
        result.scores = scores_per_image * mask_scores
        result.pred_classes = labels_per_image
        return result
