"""Registry of Mask2Former transformer decoders (``MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME``)."""
from detectron2.utils.registry import Registry

__all__ = ["TRANSFORMER_DECODER_REGISTRY", "build_transformer_decoder"]

TRANSFORMER_DECODER_REGISTRY = Registry("TRANSFORMER_MODULE")
TRANSFORMER_DECODER_REGISTRY.__doc__ = """
Transformer decoders of MaskFormer-style heads, called as ``cls(cfg, in_channels, mask_classification)``.
"""


def build_transformer_decoder(cfg, in_channels, mask_classification=True):
    """The decoder named by ``MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME``."""
    name = cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME
    return TRANSFORMER_DECODER_REGISTRY.get(name)(cfg, in_channels, mask_classification)
