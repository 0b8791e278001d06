"""Ops shared by head families: multi-scale deformable attention and its encoder layer (Mask2Former, DINO), pure PyTorch.
Public: ``MSDeformAttn``, ``MSDeformAttnTransformerEncoderLayer``, ``ms_deform_attn``, ``ms_deform_attn_core_pytorch``."""
from .ms_deform_attn import (
    MSDeformAttn,
    MSDeformAttnTransformerEncoderLayer,
    compiled_op_available,
    init_deformable_transformer,
    ms_deform_attn,
    ms_deform_attn_core_pytorch,
)

__all__ = ["MSDeformAttn", "MSDeformAttnTransformerEncoderLayer", "init_deformable_transformer", "ms_deform_attn",
           "ms_deform_attn_core_pytorch", "compiled_op_available"]
