"""Cascade R-CNN ROI heads that compute what the released FocalNet Cascade Mask R-CNN (mmdet 2.x
``CascadeRoIHead``) computes, so that its checkpoint gives its published AP here.

Detectron2's ``CascadeROIHeads`` regresses one class-agnostic box per stage, averages the stages'
probabilities and has one mask head. The mmdet model differs (``reference/mmdet_conversion_spec.md`` §4.2):

- C1: every stage regresses per class (``MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG False``; True also works);
- C2: the next stage's RoI is the box of this stage's own argmax foreground class (in training, of the
  ground-truth class for foreground RoIs, as mmdet does), clipped to the image;
- C3, C4: the final score is the softmax of the mean of the stages' logits; the boxes are the last stage's
  per-class boxes;
- C7: each stage has its own mask head (``roi_heads.mask_head.{k}``); at inference their sigmoid maps are averaged.

The per-stage box weights (C5) and the 4conv+1fc BN box head (C6) are config values (the Cascade yaml).

Training: the box losses are Detectron2's cascade losses per stage (``loss_cls_stage{k}``,
``loss_box_reg_stage{k}``). Mask head k is trained on the foreground RoIs of stage k (as in mmdet), and its loss
``loss_mask_stage{k}`` is scaled by 1 / number of stages: the three add up to their **mean**, one Mask R-CNN mask
loss in size (mmdet weights them 1, 0.5, 0.25 instead).
"""
import torch
from torch import nn

from detectron2.layers import cat
from detectron2.modeling.roi_heads import (
    ROI_HEADS_REGISTRY,
    CascadeROIHeads,
    FastRCNNOutputLayers,
    select_foreground_proposals,
)
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import pairwise_iou
from detectron2.utils.events import get_event_storage

__all__ = ["MMDetCascadeROIHeads"]


@ROI_HEADS_REGISTRY.register()
class MMDetCascadeROIHeads(CascadeROIHeads):
    """``CascadeROIHeads`` with mmdet's class-specific refinement, logit averaging and one mask head per stage."""

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        # the parent asserts class-agnostic regression: build with it, then swap in the configured predictors
        agnostic = cfg.clone()
        agnostic.defrost()
        agnostic.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
        ret = super()._init_box_head(agnostic, input_shape)
        if not cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG:
            ret["box_predictors"] = [
                FastRCNNOutputLayers(cfg, head.output_shape, box2box_transform=predictor.box2box_transform)
                for head, predictor in zip(ret["box_heads"], ret["box_predictors"])
            ]
        return ret

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        ret = super()._init_mask_head(cfg, input_shape)
        if ret:  # one independently initialised head per stage
            heads = [ret["mask_head"]]
            for _ in range(len(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS) - 1):
                heads.append(super()._init_mask_head(cfg, input_shape)["mask_head"])
            ret["mask_head"] = nn.ModuleList(heads)
        return ret

    def forward(self, images, features, proposals, targets=None):
        if not self.training:
            return super().forward(images, features, proposals)
        proposals = self.label_and_sample_proposals(proposals, targets)
        stages = self._run_cascade(features, proposals, targets)
        losses = self._box_losses(stages)
        losses.update(self._mask_losses(features, [stage_proposals for _, _, stage_proposals in stages]))
        losses.update(self._forward_keypoint(features, proposals))
        return proposals, losses

    def _forward_box(self, features, proposals, targets=None):
        stages = self._run_cascade(features, proposals, targets)
        if self.training:
            return self._box_losses(stages)
        predictor, predictions, proposals = stages[-1]
        mean_logits = sum(stage_predictions[0] for _, stage_predictions, _ in stages) / len(stages)
        scores = predictor.predict_probs((mean_logits, predictions[1]), proposals)
        boxes = predictor.predict_boxes(predictions, proposals)
        instances, _ = fast_rcnn_inference(
            boxes,
            scores,
            [x.image_size for x in proposals],
            predictor.test_score_thresh,
            predictor.test_nms_thresh,
            predictor.test_topk_per_image,
        )
        return instances

    def _run_cascade(self, features, proposals, targets=None):
        """Run every stage; returns ``[(predictor, predictions, proposals)]``, one per stage."""
        features = [features[f] for f in self.box_in_features]
        image_sizes = [x.image_size for x in proposals]
        stages = []
        for k in range(self.num_cascade_stages):
            if k > 0:
                proposals = self._create_proposals_from_boxes(self._refined_boxes(*stages[-1]), image_sizes)
                if self.training:
                    proposals = self._match_and_label_boxes(proposals, k, targets)
            stages.append((self.box_predictor[k], self._run_stage(features, proposals, k), proposals))
        return stages

    def _refined_boxes(self, predictor, predictions, proposals):
        """A stage's output box per RoI (per image): with per-class regression, the box of the RoI's argmax
        foreground class, or in training of its ground-truth class when it is foreground (mmdet's rule)."""
        boxes = predictor.predict_boxes(predictions, proposals)
        if predictions[1].shape[1] == 4:  # class-agnostic
            return boxes
        labels = predictions[0][:, :-1].argmax(dim=1)
        if self.training:
            gt_classes = cat([x.gt_classes for x in proposals])
            labels = torch.where(gt_classes < self.num_classes, gt_classes, labels)
        return [
            b.view(len(b), -1, 4)[torch.arange(len(b), device=b.device), lab]
            for b, lab in zip(boxes, labels.split([len(x) for x in proposals]))
        ]

    def _box_losses(self, stages):
        losses = {}
        storage = get_event_storage()
        for k, (predictor, predictions, proposals) in enumerate(stages):
            with storage.name_scope(f"stage{k}"):
                stage_losses = predictor.losses(predictions, proposals)
            losses.update({f"{name}_stage{k}": value for name, value in stage_losses.items()})
        return losses

    @torch.no_grad()
    def _match_and_label_boxes(self, proposals, stage, targets):
        """The parent's matching, plus the matched ground-truth masks (mask head ``stage`` trains on them)."""
        proposals = super()._match_and_label_boxes(proposals, stage, targets)
        if self.mask_on:
            for proposals_per_image, targets_per_image in zip(proposals, targets):
                if len(targets_per_image) and targets_per_image.has("gt_masks"):
                    iou = pairwise_iou(targets_per_image.gt_boxes, proposals_per_image.proposal_boxes)
                    matched, _ = self.proposal_matchers[stage](iou)
                    proposals_per_image.gt_masks = targets_per_image.gt_masks[matched]
        return proposals

    def _mask_losses(self, features, stage_proposals):
        """Mask head k on the foreground RoIs of stage k; each loss divided by the number of heads (their mean)."""
        if not self.mask_on:
            return {}
        features = [features[f] for f in self.mask_in_features]
        losses = {}
        for k, (head, proposals) in enumerate(zip(self.mask_head, stage_proposals)):
            foreground, _ = select_foreground_proposals(proposals, self.num_classes)
            pooled = self.mask_pooler(features, [x.proposal_boxes for x in foreground])
            losses[f"loss_mask_stage{k}"] = head(pooled, foreground)["loss_mask"] / len(self.mask_head)
        return losses

    def _forward_mask(self, features, instances):
        """Training: every head on ``instances``' foreground (``forward`` gives each head its own stage's RoIs).
        Inference: ``pred_masks`` = the mean of the heads' sigmoid maps of the predicted class."""
        if not self.mask_on:
            return {} if self.training else instances
        if self.training:
            return self._mask_losses(features, [instances] * len(self.mask_head))
        pooled = self.mask_pooler([features[f] for f in self.mask_in_features], [x.pred_boxes for x in instances])
        probs = sum(head.layers(pooled).sigmoid() for head in self.mask_head) / len(self.mask_head)
        if probs.shape[1] > 1:  # class-specific masks: the predicted class's channel
            labels = cat([x.pred_classes for x in instances])
            probs = probs[torch.arange(len(probs), device=probs.device), labels][:, None]
        for x, p in zip(instances, probs.split([len(x) for x in instances])):
            x.pred_masks = p
        return instances
