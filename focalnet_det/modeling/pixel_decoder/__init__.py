from .ms_deform_attn import MSDeformAttn, ms_deform_attn_core_pytorch  # noqa: F401
from .msdeformattn import MSDeformAttnPixelDecoder  # noqa: F401
