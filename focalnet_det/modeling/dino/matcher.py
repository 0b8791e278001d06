"""Hungarian matching of DINO's queries to the ground truth (focal-loss class cost, L1 and GIoU box costs).

Cost of query q for box t: ``cost_class * (focal(p, 1) - focal(p, 0))`` at t's class, with
``focal(p, 1) = alpha (1-p)^gamma (-log(p + 1e-8))`` and ``focal(p, 0) = (1-alpha) p^gamma (-log(1-p + 1e-8))``,
plus ``cost_bbox * |q - t|_1`` (normalised cxcywh) minus ``cost_giou * GIoU(q, t)``; solved per image with
``scipy.optimize.linear_sum_assignment``.
"""
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import generalized_box_iou

from .utils import box_cxcywh_to_xyxy

__all__ = ["HungarianMatcher"]


class HungarianMatcher(nn.Module):
    def __init__(self, cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, focal_alpha=0.25, focal_gamma=2.0):
        super().__init__()
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def cost_matrices(self, pred_logits, pred_boxes, targets):
        """Per image the (Q, n_i) cost matrix (float32, on the CPU)."""
        out = []
        with torch.autocast(device_type=pred_logits.device.type, enabled=False):
            prob = pred_logits.float().sigmoid()
            boxes = pred_boxes.float()
            a, g = self.focal_alpha, self.focal_gamma
            neg = (1 - a) * prob**g * (-(1 - prob + 1e-8).log())
            pos = a * (1 - prob) ** g * (-(prob + 1e-8).log())
            for i, t in enumerate(targets):
                labels, tboxes = t["labels"], t["boxes"].float()
                c = self.cost_class * (pos[i][:, labels] - neg[i][:, labels])
                c = c + self.cost_bbox * torch.cdist(boxes[i], tboxes, p=1)
                if len(labels):
                    c = c - self.cost_giou * generalized_box_iou(box_cxcywh_to_xyxy(boxes[i]), box_cxcywh_to_xyxy(tboxes))
                out.append(c.cpu())
        return out

    @torch.no_grad()
    def forward(self, pred_logits, pred_boxes, targets):
        """pred_logits (N, Q, K), pred_boxes (N, Q, 4) sigmoid cxcywh; targets as in ``prepare_denoising``.
        Returns per image ``(query indices, target indices)`` as int64 tensors."""
        result = []
        for c in self.cost_matrices(pred_logits, pred_boxes, targets):
            rows, cols = linear_sum_assignment(c.numpy())
            result.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return result
