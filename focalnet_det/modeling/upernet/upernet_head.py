"""UPerNet (Xiao et al., ECCV 2018) as the FocalNet/Swin ADE20K recipe uses it: mmseg's ``UPerHead`` and
``FCNHead`` auxiliary head, as one Detectron2 semantic-segmentation head (``MODEL.SEM_SEG_HEAD.NAME: UPerNetHead``).

The model is Detectron2's ``SemanticSegmentor`` (normalisation, padding to the backbone's size divisibility,
``sem_seg`` targets padded with the ignore value, ``sem_seg`` logits at the input resolution). The head:

- pyramid pooling on the last feature (res5): adaptive average pooling to 1, 2, 3, 6 cells, 1x1 conv each,
  upsampled and concatenated with res5, then a 3x3 ``bottleneck`` conv;
- FPN: 1x1 ``lateral_convs`` on res2..res4, top-down addition, 3x3 ``fpn_convs``; all four levels upsampled to
  stride 4, concatenated, 3x3 ``fpn_bottleneck`` conv, dropout, 1x1 ``conv_seg`` classifier;
- an ``auxiliary_head`` on res4 (FCN: 3x3 conv with 256 channels, dropout, classifier), trained with weight
  0.4 and never run at inference.

Module names follow mmseg (``psp_modules.{i}.1``, ``bottleneck``, ``lateral_convs``, ``fpn_convs``,
``fpn_bottleneck``, ``conv_seg``, ``convs``; each conv block has ``conv`` and ``bn`` (``gn`` for GroupNorm)),
so a released mmseg checkpoint maps by renaming ``decode_head.`` -> ``sem_seg_head.`` and ``auxiliary_head.``
-> ``sem_seg_head.auxiliary_head.`` (``focalnet_det.checkpoint.mmseg``).
"""
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

__all__ = ["ConvModule", "FCNHead", "UPerNetHead", "semantic_loss"]


class ConvModule(nn.Module):
    """conv -> norm -> ReLU, named like mmcv's ConvModule (``conv``, then ``bn`` or ``gn``) so that mmseg
    weights load by name. The conv has a bias only without a norm. Initialised as mmcv does: Kaiming normal
    (fan_out, ReLU) convs, unit-weight zero-bias norms."""

    def __init__(self, in_channels, out_channels, kernel_size, norm="BN"):
        super().__init__()
        norm_layer = get_norm(norm, out_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=norm_layer is None)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)
        self.norm_name = None
        if norm_layer is not None:
            self.norm_name = "gn" if isinstance(norm_layer, nn.GroupNorm) else "bn"
            self.add_module(self.norm_name, norm_layer)

    def forward(self, x):
        x = self.conv(x)
        if self.norm_name is not None:
            x = getattr(self, self.norm_name)(x)
        return F.relu(x, inplace=True)


def _classifier(in_channels, num_classes):
    """mmseg's ``conv_seg``: a 1x1 conv initialised N(0, 0.01)."""
    conv = nn.Conv2d(in_channels, num_classes, 1)
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)
    return conv


def _resize(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def semantic_loss(logits, targets, ignore_value, average_all_pixels=True):
    """Cross-entropy of ``logits`` (N, K, h, w) resized bilinearly to the size of ``targets`` (N, H, W).

    ``average_all_pixels``: divide by all pixels, ignored ones contributing 0, as mmseg does (the recipe);
    it is also finite when a batch has no labelled pixel. Otherwise the mean over labelled pixels
    (Detectron2's heads)."""
    logits = _resize(logits.float(), targets.shape[-2:])
    if not average_all_pixels:
        return F.cross_entropy(logits, targets, reduction="mean", ignore_index=ignore_value)
    return F.cross_entropy(logits, targets, reduction="none", ignore_index=ignore_value).mean()


class FCNHead(nn.Module):
    """mmseg's ``FCNHead`` with ``concat_input=False``: ``num_convs`` 3x3 ConvModules, dropout, classifier.
    Used as UPerNet's auxiliary head (logits at the stride of its input feature)."""

    def __init__(self, in_channels, channels, num_classes, num_convs=1, dropout=0.1, norm="BN"):
        super().__init__()
        self.convs = nn.Sequential(
            *[ConvModule(in_channels if i == 0 else channels, channels, 3, norm) for i in range(num_convs)]
        )
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = _classifier(channels if num_convs > 0 else in_channels, num_classes)

    def forward(self, x):
        return self.conv_seg(self.dropout(self.convs(x)))


@SEM_SEG_HEADS_REGISTRY.register()
class UPerNetHead(nn.Module):
    """UPerNet decode head (pyramid pooling + FPN fusion) with an optional FCN auxiliary head.

    ``forward(features, targets)`` follows Detectron2's semantic-head contract: in training
    ``(None, {"loss_sem_seg", "loss_aux"})``; at inference ``(logits at the padded input resolution, {})``,
    which ``SemanticSegmentor`` crops and resizes to each image's output size.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        num_classes: int,
        channels: int = 512,
        pool_scales=(1, 2, 3, 6),
        dropout: float = 0.1,
        norm: str = "BN",
        ignore_value: int = 255,
        loss_weight: float = 1.0,
        average_all_pixels: bool = True,
        aux_in_feature: str = "res4",
        aux_channels: int = 256,
        aux_num_convs: int = 1,
        aux_loss_weight: float = 0.4,
    ):
        """
        Args:
            input_shape: the features to use, finest first (res2..res5); the last one gets the pyramid pooling.
            num_classes: classes of the classifier (150 for ADE20K).
            channels: width of every conv of the decode head (512).
            pool_scales: output sizes of the pyramid pooling (1, 2, 3, 6).
            dropout: ``Dropout2d`` probability before both classifiers (0.1).
            norm: "BN", "SyncBN", "GN", ... (Detectron2's ``get_norm``); "" for none.
            ignore_value: label ignored by the losses (255).
            loss_weight, aux_loss_weight: weights of the decode and auxiliary cross-entropy losses.
            average_all_pixels: see :func:`semantic_loss`.
            aux_in_feature: the feature the auxiliary FCN head reads ("res4"); "" or None: no auxiliary head.
            aux_channels, aux_num_convs: width and depth of the auxiliary head (256, 1).
        """
        super().__init__()
        shapes = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [k for k, _ in shapes]
        in_channels = [s.channels for _, s in shapes]
        self.common_stride = shapes[0][1].stride
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight
        self.average_all_pixels = average_all_pixels

        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(in_channels[-1], channels, 1, norm)) for s in pool_scales
        )
        self.bottleneck = ConvModule(in_channels[-1] + len(pool_scales) * channels, channels, 3, norm)
        self.lateral_convs = nn.ModuleList(ConvModule(c, channels, 1, norm) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3, norm) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3, norm)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = _classifier(channels, num_classes)

        self.aux_in_feature = aux_in_feature or None
        self.aux_loss_weight = aux_loss_weight
        if self.aux_in_feature is not None:
            if self.aux_in_feature not in input_shape:
                raise ValueError(
                    f"MODEL.UPERNET.AUX_IN_FEATURE {aux_in_feature!r} is not among the head's features {self.in_features}"
                )
            self.auxiliary_head = FCNHead(
                input_shape[aux_in_feature].channels, aux_channels, num_classes, aux_num_convs, dropout, norm
            )

    @classmethod
    def from_config(cls, cfg, input_shape):
        head, u = cfg.MODEL.SEM_SEG_HEAD, cfg.MODEL.UPERNET
        missing = [f for f in head.IN_FEATURES if f not in input_shape]
        if missing:
            raise ValueError(f"MODEL.SEM_SEG_HEAD.IN_FEATURES: the backbone has no {missing} (it has {list(input_shape)})")
        return {
            "input_shape": {k: input_shape[k] for k in head.IN_FEATURES},
            "num_classes": head.NUM_CLASSES,
            "channels": head.CONVS_DIM,
            "pool_scales": tuple(u.POOL_SCALES),
            "dropout": u.DROPOUT,
            "norm": head.NORM,
            "ignore_value": head.IGNORE_VALUE,
            "loss_weight": head.LOSS_WEIGHT,
            "average_all_pixels": u.LOSS_AVERAGE_ALL_PIXELS,
            "aux_in_feature": u.AUX_IN_FEATURE,
            "aux_channels": u.AUX_CHANNELS,
            "aux_num_convs": u.AUX_NUM_CONVS,
            "aux_loss_weight": u.AUX_LOSS_WEIGHT,
        }

    def psp_forward(self, x):
        """Pyramid pooling on the coarsest feature, fused by ``bottleneck``."""
        pooled = [_resize(m(x), x.shape[-2:]) for m in self.psp_modules]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))

    def layers(self, features):
        """Logits at the stride of the finest feature (4)."""
        inputs = [features[f] for f in self.in_features]
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)] + [self.psp_forward(inputs[-1])]
        for i in range(len(laterals) - 1, 0, -1):  # top-down
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        outs = [outs[0]] + [_resize(x, outs[0].shape[-2:]) for x in outs[1:]]
        return self.conv_seg(self.dropout(self.fpn_bottleneck(torch.cat(outs, dim=1))))

    def forward(self, features, targets=None):
        logits = self.layers(features)
        if not self.training:
            return F.interpolate(logits, scale_factor=self.common_stride, mode="bilinear", align_corners=False), {}
        if targets is None:
            raise ValueError("UPerNetHead needs sem_seg targets in training")
        losses = {"loss_sem_seg": self.loss_weight * self._loss(logits, targets)}
        if self.aux_in_feature is not None:
            aux = self.auxiliary_head(features[self.aux_in_feature])
            losses["loss_aux"] = self.aux_loss_weight * self._loss(aux, targets)
        return None, losses

    def _loss(self, logits, targets):
        return semantic_loss(logits, targets, self.ignore_value, self.average_all_pixels)
