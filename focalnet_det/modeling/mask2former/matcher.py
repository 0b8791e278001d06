"""Hungarian matching of predicted masks to ground-truth masks (Mask2Former).

Cost of assigning prediction i to target j:
``w_class * (-p_i(class_j)) + w_mask * BCE(mask_i, mask_j) + w_dice * dice(mask_i, mask_j)``,
the mask terms computed on ``num_points`` random points shared by all predictions and targets of an image
(uniform in [0, 1]^2, bilinear sampling of logits and of the padded binary targets). The assignment
minimising the total cost is ``scipy.optimize.linear_sum_assignment``.
"""
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from detectron2.projects.point_rend.point_features import point_sample

__all__ = ["HungarianMatcher", "batch_sigmoid_ce_loss", "batch_dice_loss"]


def batch_sigmoid_ce_loss(inputs, targets):
    """Mean binary cross-entropy of every (prediction, target) pair: (N, P) logits, (M, P) in [0,1] -> (N, M)."""
    num_points = inputs.shape[1]
    pos = F.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction="none")
    neg = F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction="none")
    return (pos @ targets.T + neg @ (1 - targets).T) / num_points


def batch_dice_loss(inputs, targets):
    """Dice loss of every pair (add-one smoothed): (N, P) logits, (M, P) -> (N, M)."""
    probs = inputs.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher(nn.Module):
    def __init__(self, cost_class: float = 1, cost_mask: float = 1, cost_dice: float = 1, num_points: int = 0):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("all matching costs are 0")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    def cost_matrix(self, pred_logits, pred_masks, tgt_labels, tgt_masks, point_coords):
        """(Q, K+1) logits, (Q, H, W) mask logits, (T,) labels, (T, H', W') masks, (P, 2) points -> (Q, T) cost."""
        cost_class = -pred_logits.softmax(-1)[:, tgt_labels]
        tgt = point_sample(tgt_masks[:, None].to(pred_masks), point_coords[None].expand(tgt_masks.shape[0], -1, -1),
                           align_corners=False).squeeze(1)
        out = point_sample(pred_masks[:, None], point_coords[None].expand(pred_masks.shape[0], -1, -1),
                           align_corners=False).squeeze(1)
        with torch.autocast(device_type=out.device.type, enabled=False):
            out, tgt = out.float(), tgt.float()
            cost_mask = batch_sigmoid_ce_loss(out, tgt)
            cost_dice = batch_dice_loss(out, tgt)
        return self.cost_mask * cost_mask + self.cost_class * cost_class + self.cost_dice * cost_dice

    @torch.no_grad()
    def forward(self, outputs, targets):
        """
        Args:
            outputs: {"pred_logits": (B, Q, K+1), "pred_masks": (B, Q, H, W)}
            targets: per image {"labels": (T,), "masks": (T, H', W')}
        Returns:
            per image (prediction indices, target indices), int64, of length min(Q, T)
        """
        indices = []
        for b, target in enumerate(targets):
            pred_masks = outputs["pred_masks"][b]
            if len(target["labels"]) == 0:
                empty = torch.empty(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            coords = torch.rand(self.num_points, 2, device=pred_masks.device)
            cost = self.cost_matrix(outputs["pred_logits"][b], pred_masks, target["labels"], target["masks"], coords)
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices

    def extra_repr(self):
        return (f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, cost_dice={self.cost_dice}, "
                f"num_points={self.num_points}")
