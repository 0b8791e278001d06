"""Mask2Former, key- and config-compatible with the official one: meta-architecture, head, decoders, loss.
Public: ``MaskFormer``, ``MaskFormerHead``, ``MSDeformAttnPixelDecoder``, ``MultiScaleMaskedTransformerDecoder``,
``PositionEmbeddingSine``, ``SetCriterion``, ``HungarianMatcher``, ``TRANSFORMER_DECODER_REGISTRY``."""
from .criterion import SetCriterion
from .mask_former_head import MaskFormerHead
from .maskformer_model import MaskFormer
from .matcher import HungarianMatcher
from .pixel_decoder import MSDeformAttnPixelDecoder
from .position_encoding import PositionEmbeddingSine
from .transformer_decoder import (
    TRANSFORMER_DECODER_REGISTRY,
    MultiScaleMaskedTransformerDecoder,
    build_transformer_decoder,
)

__all__ = [
    "MaskFormer",
    "MaskFormerHead",
    "MSDeformAttnPixelDecoder",
    "MultiScaleMaskedTransformerDecoder",
    "PositionEmbeddingSine",
    "SetCriterion",
    "HungarianMatcher",
    "TRANSFORMER_DECODER_REGISTRY",
    "build_transformer_decoder",
]
