"""Ops shared by head families: multi-scale deformable attention (Mask2Former's pixel decoder, DINO), pure PyTorch.
Public: ``MSDeformAttn``, ``ms_deform_attn``, ``ms_deform_attn_core_pytorch``, ``compiled_op_available``."""
from .ms_deform_attn import MSDeformAttn, compiled_op_available, ms_deform_attn, ms_deform_attn_core_pytorch

__all__ = ["MSDeformAttn", "ms_deform_attn", "ms_deform_attn_core_pytorch", "compiled_op_available"]
