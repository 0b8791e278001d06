"""Mask2Former's losses (``SetCriterion``): classification of every query, and point-sampled mask losses of
the matched ones, for the final and every auxiliary prediction.

- ``loss_ce``: cross-entropy over K+1 classes; unmatched queries are "no object" (class K), weighted
  ``eos_coef`` (0.1).
- ``loss_mask`` / ``loss_dice``: on ``num_points`` points per matched mask, chosen by importance sampling:
  ``oversample_ratio * num_points`` random candidates, the ``importance_sample_ratio`` share with the most
  uncertain predicted logits (closest to 0) kept, the rest uniform random; sigmoid BCE averaged over the
  points, and dice, both summed over masks and divided by the number of target masks in the batch
  (averaged over processes, at least 1).
"""
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.projects.point_rend.point_features import get_uncertain_point_coords_with_randomness, point_sample
from detectron2.utils.comm import get_world_size

__all__ = ["SetCriterion", "sigmoid_ce_loss", "dice_loss", "calculate_uncertainty"]


def sigmoid_ce_loss(inputs, targets, num_masks):
    """(M, P) logits and targets -> sum over masks of the mean BCE, / num_masks."""
    return F.binary_cross_entropy_with_logits(inputs, targets, reduction="none").mean(1).sum() / num_masks


def dice_loss(inputs, targets, num_masks):
    """(M, P) logits and targets -> sum over masks of 1 - (2|X.Y| + 1) / (|X| + |Y| + 1), / num_masks."""
    probs = inputs.sigmoid().flatten(1)
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def calculate_uncertainty(logits):
    """(R, 1, ...) logits -> (R, 1, ...) uncertainty: -|logit| (highest at the decision boundary)."""
    if logits.shape[1] != 1:
        raise ValueError(f"expected one channel, got {logits.shape[1]}")
    return -logits.abs()


def _pad_stack(masks):
    """Targets of the batch, zero-padded to a common size: list of (T_i, H_i, W_i) -> (sum T_i, H, W)."""
    h = max(m.shape[-2] for m in masks)
    w = max(m.shape[-1] for m in masks)
    return torch.cat([F.pad(m, (0, w - m.shape[-1], 0, h - m.shape[-2])) for m in masks])


class SetCriterion(nn.Module):
    def __init__(self, num_classes, matcher, weight_dict, eos_coef, losses, num_points, oversample_ratio,
                 importance_sample_ratio):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.eos_coef = eos_coef
        self.losses = losses
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        # a persistent buffer: official checkpoints carry it as criterion.empty_weight
        self.register_buffer("empty_weight", empty_weight)
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio

    @staticmethod
    def _src_permutation_idx(indices):
        batch = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        src = torch.cat([src for src, _ in indices])
        return batch, src

    def loss_labels(self, outputs, targets, indices, num_masks):
        logits = outputs["pred_logits"].float()
        batch_idx, src_idx = self._src_permutation_idx(indices)
        matched = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        target_classes[batch_idx.to(logits.device), src_idx.to(logits.device)] = matched.to(logits.device)
        return {"loss_ce": F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)}

    def loss_masks(self, outputs, targets, indices, num_masks):
        device = outputs["pred_masks"].device
        batch_idx, src_idx = self._src_permutation_idx(indices)
        src_masks = outputs["pred_masks"][batch_idx.to(device), src_idx.to(device)]
        if src_masks.shape[0] == 0:
            zero = outputs["pred_masks"].sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero.clone()}
        # target masks in the order of the matches: per image, its matched targets
        target_masks = _pad_stack([t["masks"][j.to(t["masks"].device)] for t, (_, j) in zip(targets, indices)])
        target_masks = target_masks.to(src_masks)[:, None]
        src_masks = src_masks[:, None]
        with torch.no_grad():
            point_coords = get_uncertain_point_coords_with_randomness(
                src_masks, calculate_uncertainty, self.num_points, self.oversample_ratio,
                self.importance_sample_ratio,
            )
            point_labels = point_sample(target_masks, point_coords, align_corners=False).squeeze(1)
        point_logits = point_sample(src_masks, point_coords, align_corners=False).squeeze(1)
        point_logits = point_logits.float()
        return {
            "loss_mask": sigmoid_ce_loss(point_logits, point_labels.float(), num_masks),
            "loss_dice": dice_loss(point_logits, point_labels.float(), num_masks),
        }

    def get_loss(self, loss, outputs, targets, indices, num_masks):
        loss_map = {"labels": self.loss_labels, "masks": self.loss_masks}
        if loss not in loss_map:
            raise ValueError(f"unknown loss {loss!r}")
        return loss_map[loss](outputs, targets, indices, num_masks)

    def forward(self, outputs, targets):
        """outputs: the decoder's dict; targets: per image {"labels", "masks"} -> dict of losses."""
        main = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        indices = self.matcher(main, targets)
        num_masks = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))],
                                    device=next(iter(main.values())).device)
        if get_world_size() > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(num_masks)
        num_masks = torch.clamp(num_masks / get_world_size(), min=1).item()

        losses = {}
        for loss in self.losses:
            losses.update(self.get_loss(loss, main, targets, indices, num_masks))
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            aux_indices = self.matcher(aux, targets)
            for loss in self.losses:
                values = self.get_loss(loss, aux, targets, aux_indices, num_masks)
                losses.update({f"{k}_{i}": v for k, v in values.items()})
        return losses

    def extra_repr(self):
        return (f"num_classes={self.num_classes}, eos_coef={self.eos_coef}, losses={self.losses}, "
                f"num_points={self.num_points}, oversample_ratio={self.oversample_ratio}, "
                f"importance_sample_ratio={self.importance_sample_ratio}, weight_dict={self.weight_dict}")
