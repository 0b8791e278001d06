"""DINO's inference post-processing: the top-k (query, class) pairs over all logits, as ``Instances``.

As the official ``PostProcess``: sigmoid scores of every query x every logit, the ``num_select`` best pairs
(a query can appear with several classes), boxes (cxcywh relative to the unpadded input) scaled to the
output size and not clipped; optional class-agnostic NMS. When the logits are indexed by the dataset's raw
category ids (the released COCO checkpoints: 91 logits), the top-k is taken over all of them first, then
the ids are mapped to Detectron2's contiguous ids and the pairs whose id is not a class are dropped.
"""
import torch
from torchvision.ops import nms

from detectron2.structures import Boxes, Instances

from .utils import box_cxcywh_to_xyxy

__all__ = ["dino_postprocess"]


def dino_postprocess(pred_logits, pred_boxes, output_sizes, num_select=300, logit_to_class=None,
                     nms_iou_threshold=-1.0):
    """
    Args:
        pred_logits: (N, Q, K); pred_boxes: (N, Q, 4) sigmoid cxcywh.
        output_sizes: per image (height, width) of the output.
        logit_to_class: (K,) long, the contiguous class of each logit (-1: none), or None (logit = class).
        nms_iou_threshold: class-agnostic NMS over the selected boxes when > 0.
    Returns: a list of ``Instances`` with ``pred_boxes``, ``scores``, ``pred_classes``, sorted by score.
    """
    n, q, k = pred_logits.shape
    prob = pred_logits.float().sigmoid().view(n, q * k)
    scores, idx = prob.topk(min(num_select, q * k), dim=1)
    queries, labels = idx // k, idx % k
    boxes = box_cxcywh_to_xyxy(torch.gather(pred_boxes.float(), 1, queries[..., None].expand(-1, -1, 4)))
    results = []
    for i, (h, w) in enumerate(output_sizes):
        b = boxes[i] * torch.as_tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
        s, c = scores[i], labels[i]
        if logit_to_class is not None:
            c = logit_to_class.to(c.device)[c]
            keep = c >= 0
            b, s, c = b[keep], s[keep], c[keep]
        if nms_iou_threshold > 0:
            keep = nms(b, s, nms_iou_threshold)
            b, s, c = b[keep], s[keep], c[keep]
        inst = Instances((int(h), int(w)))
        inst.pred_boxes = Boxes(b)
        inst.scores = s
        inst.pred_classes = c
        results.append(inst)
    return results
