"""Ops shared by head families: multi-scale deformable attention and its encoder layer (Mask2Former, DINO): a compiled
CPU kernel where it can be built, plain PyTorch everywhere.
Public: ``MSDeformAttn``, ``MSDeformAttnTransformerEncoderLayer``, ``ms_deform_attn``, ``ms_deform_attn_core_pytorch``,
``cpu_kernel`` (build / load the CPU kernel), ``set_cpu_kernel`` (use it or not)."""
from .ms_deform_attn import (
    MSDeformAttn,
    MSDeformAttnTransformerEncoderLayer,
    compiled_op_available,
    cpu_kernel,
    init_deformable_transformer,
    ms_deform_attn,
    ms_deform_attn_core_pytorch,
    set_cpu_kernel,
)

__all__ = ["MSDeformAttn", "MSDeformAttnTransformerEncoderLayer", "init_deformable_transformer", "ms_deform_attn",
           "ms_deform_attn_core_pytorch", "compiled_op_available", "cpu_kernel", "set_cpu_kernel"]
