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

__all__ = ["dino_postprocess", "dino_topk", "dino_filter"]


def dino_topk(pred_logits, pred_boxes, scale, num_select=300, logit_to_class=None):
    """The ``num_select`` best (query, logit) pairs of each image, in tensors (traceable: the exported graphs
    run it too).

    Args:
        pred_logits: (N, Q, K); pred_boxes: (N, Q, 4) sigmoid cxcywh.
        scale: (N, 4) or (4,): (w, h, w, h) of the output size.
        logit_to_class: (K,) long, the contiguous class of each logit (-1: none), or None (logit = class).
    Returns: boxes (N, k, 4) xyxy in output pixels, scores (N, k) sorted, classes (N, k) (-1: a logit that is
    no class; ``dino_filter`` drops those).
    """
    n, q, k = pred_logits.shape
    prob = pred_logits.float().sigmoid().view(n, q * k)
    scores, idx = prob.topk(min(num_select, q * k), dim=1)
    queries, labels = idx // k, idx % k
    boxes = box_cxcywh_to_xyxy(torch.gather(pred_boxes.float(), 1, queries[..., None].expand(-1, -1, 4)))
    boxes = boxes * scale.to(boxes).view(-1, 1, 4)
    if logit_to_class is not None:
        labels = logit_to_class.to(labels.device)[labels]
    return boxes, scores, labels


def dino_filter(boxes, scores, classes, nms_iou_threshold=-1.0, drop_no_class=True):
    """One image's top-k pairs (k, 4), (k,), (k,) without the logits that are no class (-1, when
    ``drop_no_class``) and, when ``nms_iou_threshold`` > 0, after class-agnostic NMS."""
    if drop_no_class:
        keep = classes >= 0
        boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
    if nms_iou_threshold > 0:
        keep = nms(boxes, scores, nms_iou_threshold)
        boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
    return boxes, scores, classes


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
    scale = torch.as_tensor([[w, h, w, h] for h, w in output_sizes], dtype=torch.float32, device=pred_logits.device)
    boxes, scores, labels = dino_topk(pred_logits, pred_boxes, scale, num_select, logit_to_class)
    results = []
    for i, (h, w) in enumerate(output_sizes):
        b, s, c = dino_filter(boxes[i], scores[i], labels[i], nms_iou_threshold, logit_to_class is not None)
        inst = Instances((int(h), int(w)))
        inst.pred_boxes = Boxes(b)
        inst.scores = s
        inst.pred_classes = c
        results.append(inst)
    return results
