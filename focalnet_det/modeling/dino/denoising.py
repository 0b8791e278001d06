"""Contrastive denoising (DINO, training only): noised copies of the ground truth as extra decoder queries.

Each of ``G`` groups holds ``max_gt`` positive slots then ``max_gt`` negative slots (``max_gt``: the most
boxes of an image in the batch; ``G = max(1, dn_number // max_gt)``, the official rule for its
``dn_number`` >= 50): ground-truth box t of an image goes to slot t of every block, unused slots stay zero
(content 0, box sigmoid(0) = 0.5). Labels are replaced by a random class with probability
``label_noise_ratio / 2``; box corners move by ``u * half the box side * box_noise_scale`` in a random
direction, with ``u`` in [0, 1) for positives and [1, 2) for negatives (which are then trained as background).
The released FocalNet-DINO configs use ``box_noise_scale`` 0.4; the official DINO scripts pass 1.0.

The queries come before the ``num_queries`` matching queries; ``dn_attention_mask`` keeps matching queries
from seeing any denoising query and each group from seeing the others.
"""
import torch

from .utils import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, inverse_sigmoid

__all__ = ["prepare_denoising", "dn_attention_mask", "dn_match_indices"]


def prepare_denoising(targets, label_enc, num_classes, dn_number=100, label_noise_ratio=0.5, box_noise_scale=0.4):
    """
    Args:
        targets: per image ``{"labels": (n,) long logit indices, "boxes": (n, 4) normalised cxcywh}``.
        label_enc: ``nn.Embedding(num_classes + 1, C)``, the label embedding.
    Returns:
        ``(dn_label (N, P, C), dn_box (N, P, 4) unsigmoided, meta)``, meta ``{"pad_size": P, "num_groups": G,
        "max_gt": m}``; ``(None, None, meta)`` with P = 0 when no image has a box or ``dn_number`` is 0.
    """
    counts = [len(t["labels"]) for t in targets]
    max_gt = max(counts, default=0)
    if max_gt == 0 or dn_number <= 0:
        return None, None, {"pad_size": 0, "num_groups": 0, "max_gt": max_gt}
    groups = max(1, dn_number // max_gt)
    pad = 2 * max_gt * groups
    weight = label_enc.weight
    dn_label = weight.new_zeros(len(targets), pad, weight.shape[1])
    dn_box = weight.new_zeros(len(targets), pad, 4)
    negative = (torch.arange(2 * groups, device=weight.device) % 2 == 1).view(-1, 1, 1)
    for i, (t, n) in enumerate(zip(targets, counts)):
        if n == 0:
            continue
        labels = t["labels"].repeat(2 * groups, 1)  # (2G, n): block k = group k // 2, negatives when k is odd
        boxes = t["boxes"].to(dn_box.dtype).repeat(2 * groups, 1, 1)  # (2G, n, 4)
        if label_noise_ratio > 0:
            flip = torch.rand(labels.shape, device=labels.device) < label_noise_ratio * 0.5
            labels = torch.where(flip, torch.randint_like(labels, 0, num_classes), labels)
        if box_noise_scale > 0:
            xyxy = box_cxcywh_to_xyxy(boxes)
            half = boxes[..., 2:].repeat(1, 1, 2) / 2
            u = torch.rand_like(boxes) + negative.to(boxes.dtype)
            sign = torch.randint_like(boxes, 0, 2) * 2.0 - 1.0
            xyxy = (xyxy + u * sign * half * box_noise_scale).clamp(0.0, 1.0)
            boxes = box_xyxy_to_cxcywh(xyxy)
        slots = (torch.arange(2 * groups, device=labels.device)[:, None] * max_gt
                 + torch.arange(n, device=labels.device)[None]).flatten()
        dn_label[i, slots] = label_enc(labels.flatten()).to(dn_label.dtype)
        dn_box[i, slots] = inverse_sigmoid(boxes.reshape(-1, 4))
    return dn_label, dn_box, {"pad_size": pad, "num_groups": groups, "max_gt": max_gt}


def dn_attention_mask(pad_size, num_groups, num_queries, device=None):
    """(P + Q, P + Q) bool, True where attention is blocked: matching queries (the last Q) see no denoising
    query; a denoising query sees its own group and the matching queries."""
    size = pad_size + num_queries
    mask = torch.zeros(size, size, dtype=torch.bool, device=device)
    mask[pad_size:, :pad_size] = True
    group = torch.arange(pad_size, device=device) // (pad_size // num_groups)
    mask[:pad_size, :pad_size] = group[:, None] != group[None, :]
    return mask


def dn_match_indices(targets, meta):
    """The fixed matching of the denoising queries: per image ``(query indices, target indices)``, the
    positive slot of each ground-truth box in every group."""
    out = []
    for t in targets:
        n = len(t["labels"])
        device = t["labels"].device
        tgt = torch.arange(n, device=device).repeat(meta["num_groups"])
        grp = torch.arange(meta["num_groups"], device=device).repeat_interleave(n)
        out.append((grp * 2 * meta["max_gt"] + tgt, tgt))
    return out
