"""Raw image in, plain tensors out: the modules that are traced into TorchScript and ONNX.

Each takes a float (1, 3, H, W) tensor ``image`` with values 0-255 in the config's ``INPUT.FORMAT`` and does the
model's normalisation (and padding) inside, so a deployed file needs nothing from this package. The shapes are
those of the image traced with: export at the size you deploy at.
"""
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.structures import ImageList

from ..modeling.dino import dino_filter, dino_topk

__all__ = ["RawImageBackbone", "RawImageSemSeg", "RawImageDINO", "RawImageMaskFormer"]


def _padding(size_divisibility, height, width, padding_constraints=None):
    """``F.pad`` argument that pads an (H, W) image as ``ImageList.from_tensors`` does."""
    probe = ImageList.from_tensors([torch.zeros(3, height, width)], size_divisibility,
                                   padding_constraints=padding_constraints)
    return (0, probe.tensor.shape[-1] - width, 0, probe.tensor.shape[-2] - height)


class RawImageBackbone(nn.Module):
    """image -> the backbone's features, as a tuple in ``names`` order."""

    def __init__(self, backbone, pixel_mean, pixel_std):
        super().__init__()
        self.backbone = backbone
        self.names = list(backbone.output_shape())
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(1, -1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(1, -1, 1, 1), False)

    def forward(self, image):
        features = self.backbone((image - self.pixel_mean) / self.pixel_std)
        return tuple(features[name] for name in self.names)


class RawImageSemSeg(nn.Module):
    """image -> (1, C, H, W) logits of a ``SemanticSegmentor`` (UPerNet): normalised, zero-padded as ``ImageList``
    pads (to the size fixed at construction), cropped back, as the model does."""

    names = ["sem_seg"]

    def __init__(self, model, height, width):
        super().__init__()
        self.model = model
        self.height, self.width = height, width
        self.pad = _padding(model.backbone.size_divisibility, height, width,
                            getattr(model.backbone, "padding_constraints", None))

    def forward(self, image):
        m = self.model
        x = F.pad((image - m.pixel_mean) / m.pixel_std, self.pad)
        logits, _ = m.sem_seg_head(m.backbone(x), None)
        return (logits[:, :, : self.height, : self.width],)


class RawImageDINO(nn.Module):
    """image -> ``boxes`` (k, 4) xyxy in input pixels, ``scores`` (k,) sorted, ``labels`` (k,) contiguous class ids:
    the official post-processing (sigmoid of every query x logit, the ``MODEL.DINO.NUM_SELECT`` best pairs) in the
    graph, then, as the eager model, logits that are no class dropped (``LOGITS_BY_DATASET_ID``) and class-agnostic
    NMS when ``NMS_IOU_THRESHOLD`` > 0 (k then depends on the image; otherwise k = NUM_SELECT)."""

    names = ["boxes", "scores", "labels"]

    def __init__(self, model, height, width):
        super().__init__()
        self.model = model
        self.register_buffer("scale", torch.tensor([width, height, width, height], dtype=torch.float32), False)

    def forward(self, image):
        m = self.model
        raw = m.forward_raw([(image[0] - m.pixel_mean) / m.pixel_std])
        boxes, scores, labels = dino_topk(raw["pred_logits"], raw["pred_boxes"], self.scale, m.num_select,
                                          m.logit_to_class)
        return dino_filter(boxes[0], scores[0], labels[0], m.nms_iou_threshold, m.logit_to_class is not None)


class RawImageMaskFormer(nn.Module):
    """image -> ``pred_logits`` (1, Q, K + 1) class logits (the last is "no object"), ``pred_masks`` (1, Q, H, W)
    mask logits at the image's size (upsampled from stride 4 over the padded image, then cropped, as the eager
    model), and, when ``MODEL.MASK_FORMER.TEST.SEMANTIC_ON``, ``sem_seg`` (1, K, H, W): sum over queries of class
    probability x mask probability, the model's ``sem_seg`` output. Panoptic and instance results are made from
    ``pred_logits`` and ``pred_masks`` by the model's ``panoptic_inference`` / ``instance_inference`` (data-dependent
    loops over the segments: outside the graph)."""

    def __init__(self, model, height, width):
        super().__init__()
        self.model = model
        self.height, self.width = height, width
        self.pad = _padding(model.size_divisibility, height, width)
        self.semantic = model.semantic_on
        self.names = ["pred_logits", "pred_masks"] + (["sem_seg"] if self.semantic else [])

    def forward(self, image):
        m = self.model
        x = F.pad((image - m.pixel_mean) / m.pixel_std, self.pad)
        outputs = m.sem_seg_head(m.backbone(x))
        logits = outputs["pred_logits"]
        masks = F.interpolate(outputs["pred_masks"], size=x.shape[-2:], mode="bilinear", align_corners=False)
        masks = masks[:, :, : self.height, : self.width]
        if not self.semantic:
            return logits, masks
        return logits, masks, m.semantic_inference(logits[0], masks[0])[None]
