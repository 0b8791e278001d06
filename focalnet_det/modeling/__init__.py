from .backbone import *  # noqa: F401,F403
from .upernet import FCNHead, UPerNetHead  # noqa: F401  (registers the UPerNet semantic head)
from .test_time_augmentation import SemanticSegmentorWithTTA  # noqa: F401
# Mask2Former (registers MaskFormer, MaskFormerHead, MSDeformAttnPixelDecoder, MultiScaleMaskedTransformerDecoder)
from .maskformer_model import MaskFormer  # noqa: F401
from .mask_former_head import MaskFormerHead  # noqa: F401
from .pixel_decoder import MSDeformAttnPixelDecoder  # noqa: F401
from .transformer_decoder import MultiScaleMaskedTransformerDecoder  # noqa: F401
