"""``MaskFormerHead``: the pixel decoder and the transformer decoder of Mask2Former, as one sem-seg head.

Registered in Detectron2's ``SEM_SEG_HEADS_REGISTRY`` (``MODEL.SEM_SEG_HEAD.NAME: "MaskFormerHead"``);
its children are ``pixel_decoder`` (``MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME``) and ``predictor``
(``MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME``), the official names.
"""
import logging
from typing import Dict

from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ...errors import UserError
from .transformer_decoder import build_transformer_decoder

__all__ = ["MaskFormerHead", "build_pixel_decoder"]


def build_pixel_decoder(cfg, input_shape):
    """The pixel decoder named by ``MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME`` (from ``SEM_SEG_HEADS_REGISTRY``)."""
    name = cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME
    if name not in SEM_SEG_HEADS_REGISTRY:
        raise UserError(
            f"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME: unknown pixel decoder {name!r} "
            f"(this project provides 'MSDeformAttnPixelDecoder')"
        )
    model = SEM_SEG_HEADS_REGISTRY.get(name)(cfg, input_shape)
    if not callable(getattr(model, "forward_features", None)):
        raise UserError(f"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME: {name!r} has no forward_features(); "
                        "it is not a pixel decoder")
    return model


@SEM_SEG_HEADS_REGISTRY.register()
class MaskFormerHead(nn.Module):
    _version = 2

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        num_classes: int,
        pixel_decoder: nn.Module,
        loss_weight: float = 1.0,
        ignore_value: int = -1,
        transformer_predictor: nn.Module,
        transformer_in_feature: str,
    ):
        super().__init__()
        ordered = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [k for k, _ in ordered]
        self.ignore_value = ignore_value
        self.common_stride = 4
        self.loss_weight = loss_weight
        self.pixel_decoder = pixel_decoder
        self.predictor = transformer_predictor
        self.transformer_in_feature = transformer_in_feature
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head, mf = cfg.MODEL.SEM_SEG_HEAD, cfg.MODEL.MASK_FORMER
        missing = [f for f in head.IN_FEATURES if f not in input_shape]
        if missing:
            raise UserError(f"MODEL.SEM_SEG_HEAD.IN_FEATURES: the backbone has no {missing} "
                            f"(it gives {sorted(input_shape)})")
        feature = mf.TRANSFORMER_IN_FEATURE
        if feature in ("transformer_encoder", "multi_scale_pixel_decoder"):
            in_channels = head.CONVS_DIM
        elif feature == "pixel_embedding":
            in_channels = head.MASK_DIM
        elif feature in input_shape:
            in_channels = input_shape[feature].channels
        else:
            raise UserError(f"MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE: unknown {feature!r}")
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "ignore_value": head.IGNORE_VALUE,
            "num_classes": head.NUM_CLASSES,
            "pixel_decoder": build_pixel_decoder(cfg, input_shape),
            "loss_weight": head.LOSS_WEIGHT,
            "transformer_in_feature": feature,
            "transformer_predictor": build_transformer_decoder(cfg, in_channels, mask_classification=True),
        }

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # version-1 checkpoints keep the pixel decoder's parameters directly under the head
        version = local_metadata.get("version", None)
        if version is None or version < 2:
            renamed = False
            for k in [k for k in state_dict if k.startswith(prefix)]:
                rest = k[len(prefix):]
                if rest.split(".")[0] in ("predictor", "pixel_decoder"):
                    continue
                state_dict[prefix + "pixel_decoder." + rest] = state_dict.pop(k)
                renamed = True
            if renamed:
                logging.getLogger(__name__).warning(
                    f"{self.__class__.__name__}: moved pixel decoder weights under pixel_decoder. (old checkpoint format)"
                )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, features, mask=None):
        return self.layers(features, mask)

    def layers(self, features, mask=None):
        mask_features, transformer_encoder_features, multi_scale_features = self.pixel_decoder.forward_features(
            features
        )
        if self.transformer_in_feature == "multi_scale_pixel_decoder":
            return self.predictor(multi_scale_features, mask_features, mask)
        if self.transformer_in_feature == "transformer_encoder":
            if transformer_encoder_features is None:
                raise UserError("MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE 'transformer_encoder' needs a pixel "
                                "decoder with a transformer encoder")
            return self.predictor(transformer_encoder_features, mask_features, mask)
        if self.transformer_in_feature == "pixel_embedding":
            return self.predictor(mask_features, mask_features, mask)
        return self.predictor(features[self.transformer_in_feature], mask_features, mask)
