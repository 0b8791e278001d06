"""DINO's losses: sigmoid focal loss on the class logits, L1 and GIoU on the boxes, for the final decoder
layer, every earlier one (``_0`` .. ``_{L-2}``), the selected encoder outputs (``_interm``) and the denoising
queries (``_dn``, ``_dn_0`` ..; matched by construction, normalised by boxes x groups).

Each loss is a sum over queries (x classes) divided by the number of ground-truth boxes in the batch
(averaged over workers, at least 1); unmatched queries and denoising negatives are trained towards all-zero
class targets. The dict returned holds the weighted losses (``weight_dict``), which Detectron2 sums.
"""
import torch
import torch.distributed as dist
from torch import nn
from torchvision.ops import generalized_box_iou, sigmoid_focal_loss

from .denoising import dn_match_indices
from .utils import box_cxcywh_to_xyxy

__all__ = ["SetCriterion"]


class SetCriterion(nn.Module):
    def __init__(self, num_classes, matcher, class_weight=1.0, bbox_weight=5.0, giou_weight=2.0,
                 focal_alpha=0.25, focal_gamma=2.0):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weights = {"loss_ce": class_weight, "loss_bbox": bbox_weight, "loss_giou": giou_weight}
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def single(self, logits, boxes, targets, indices, num_boxes):
        """The three (unweighted) losses of one set of predictions given the matching."""
        logits, boxes = logits.float(), boxes.float()
        batch = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(indices)]).to(logits.device)
        query = torch.cat([q for q, _ in indices]).to(logits.device)
        onehot = torch.zeros_like(logits)
        if len(query):
            labels = torch.cat([t["labels"][j.to(t["labels"].device)] for t, (_, j) in zip(targets, indices)])
            onehot[batch, query, labels.to(logits.device)] = 1.0
        loss_ce = sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma, reduction="sum") / num_boxes
        src = boxes[batch, query]
        tgt = torch.cat([t["boxes"][j.to(t["boxes"].device)] for t, (_, j) in zip(targets, indices)]).to(src)
        loss_bbox = (src - tgt).abs().sum() / num_boxes
        if len(query):
            giou = torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt)))
            loss_giou = (1 - giou).sum() / num_boxes
        else:
            loss_giou = src.sum() * 0.0
        return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}

    def forward(self, outputs, targets, dn_meta=None):
        """
        outputs: ``{"pred_logits", "pred_boxes", "aux_outputs": [{...}], "interm_outputs": {...},
        "dn_outputs": [{...} per decoder layer, last = final]}``.
        """
        num_boxes = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))],
                                    device=outputs["pred_logits"].device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(num_boxes)
            num_boxes = num_boxes / dist.get_world_size()
        num_boxes = num_boxes.clamp(min=1).item()

        # (suffix, predictions): the final layer, the earlier layers, the encoder's selection
        sets = [("", outputs)]
        sets += [(f"_{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs", []))]
        if "interm_outputs" in outputs:
            sets.append(("_interm", outputs["interm_outputs"]))
        losses = {}
        for suffix, out in sets:
            indices = self.matcher(out["pred_logits"], out["pred_boxes"], targets)
            for k, v in self.single(out["pred_logits"], out["pred_boxes"], targets, indices, num_boxes).items():
                losses[k + suffix] = v * self.weights[k]

        # denoising: the last entry is the final layer's, the others the earlier layers'
        dn = outputs.get("dn_outputs")
        dn_suffixes = [""] + [f"_{i}" for i in range(len(outputs.get("aux_outputs", [])))]
        if dn and dn_meta and dn_meta["pad_size"] > 0:
            indices = dn_match_indices(targets, dn_meta)
            norm = num_boxes * dn_meta["num_groups"]
            for suffix, out in zip(dn_suffixes, [dn[-1]] + dn[:-1]):
                for k, v in self.single(out["pred_logits"], out["pred_boxes"], targets, indices, norm).items():
                    losses[k + "_dn" + suffix] = v * self.weights[k]
        else:  # no ground truth in the batch: the same keys, zero (every worker logs the same ones)
            zero = outputs["pred_logits"].sum() * 0.0
            for suffix in dn_suffixes:
                for k in self.weights:
                    losses[k + "_dn" + suffix] = zero
        return losses
