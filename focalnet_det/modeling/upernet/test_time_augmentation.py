"""Multi-scale and flip testing of a semantic segmentor (the "MS" numbers of the UPerNet tables).

mmseg's ``aug_test``: the image is resized to every ratio of the test scale (``TEST.AUG.RATIOS`` times
``INPUT.MIN_SIZE_TEST`` / ``INPUT.MAX_SIZE_TEST``: 0.5 ... 1.75 of 512 / 2048 for ADE20K), each view also
flipped when ``TEST.AUG.FLIP``; the softmax of each view's prediction, resized to the original image and
flipped back, is averaged. Switched on by ``TEST.AUG.ENABLED`` in ``tools/train_net.py``.
"""
import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from detectron2.config import configurable
from detectron2.data import transforms as T

__all__ = ["SemanticSegmentorWithTTA"]


class SemanticSegmentorWithTTA(nn.Module):
    """Wraps a model with Detectron2's semantic interface (``[{"image", "height", "width"}]`` ->
    ``[{"sem_seg": K x height x width logits}]``) and returns ``{"sem_seg": mean class probabilities}``
    over the augmented views.

    Inputs are what the test mapper gives: the image already resized to the test size. A view of that
    same size reuses it unchanged, so ratio 1.0 without flip reproduces plain inference exactly
    (probabilities instead of logits); other views are resized from the image brought back to its
    original size. Views run one at a time: batching views of different sizes would pad them, and the
    pyramid pooling averages over the padding.
    """

    @configurable
    def __init__(self, model, *, sizes, flip=True):
        """
        Args:
            model: a semantic segmentor (``DistributedDataParallel`` is unwrapped).
            sizes: ``(short edge, long-edge limit)`` of each scale, as ``ResizeShortestEdge`` takes them.
            flip: also run the horizontally flipped view of each scale.
        """
        super().__init__()
        if isinstance(model, DistributedDataParallel):
            model = model.module
        self.model = model
        self.sizes = [(int(s), int(m)) for s, m in sizes]
        self.flip = flip

    @classmethod
    def from_config(cls, cfg, model):
        ratios = cfg.TEST.AUG.RATIOS
        if not ratios:
            raise ValueError("TEST.AUG.RATIOS is empty: give at least one scale ratio (e.g. [1.0])")
        sizes = [(round(cfg.INPUT.MIN_SIZE_TEST * r), round(cfg.INPUT.MAX_SIZE_TEST * r)) for r in ratios]
        return {"model": model, "sizes": sizes, "flip": cfg.TEST.AUG.FLIP}

    def forward(self, batched_inputs):
        return [self._inference_one(x) for x in batched_inputs]

    @staticmethod
    def _resize(image, new_h, new_w):
        """CHW image tensor resized as Detectron2's test mapper resizes (PIL bilinear for uint8)."""
        h, w = image.shape[-2:]
        array = T.ResizeTransform(h, w, new_h, new_w).apply_image(image.permute(1, 2, 0).cpu().numpy())
        return torch.as_tensor(np.ascontiguousarray(array.transpose(2, 0, 1)))

    def _inference_one(self, inputs):
        image = inputs["image"]
        h, w = inputs.get("height", image.shape[-2]), inputs.get("width", image.shape[-1])
        original = None
        probs, n = 0.0, 0
        for short, long in self.sizes:
            size = T.ResizeShortestEdge.get_output_shape(h, w, short, long) if short > 0 else (h, w)
            if tuple(size) == tuple(image.shape[-2:]):
                view = image
            else:
                if original is None:
                    original = image if tuple(image.shape[-2:]) == (h, w) else self._resize(image, h, w)
                view = self._resize(original, *size)
            for flip in (False, True) if self.flip else (False,):
                x = view.flip(-1) if flip else view
                out = self.model([{"image": x, "height": h, "width": w}])[0]["sem_seg"]
                probs = probs + (out.flip(-1) if flip else out).float().softmax(0)
                n += 1
        return {"sem_seg": probs / n}
