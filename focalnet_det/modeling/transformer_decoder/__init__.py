from .mask2former_transformer_decoder import MultiScaleMaskedTransformerDecoder  # noqa: F401
from .position_encoding import PositionEmbeddingSine  # noqa: F401
from .registry import TRANSFORMER_DECODER_REGISTRY, build_transformer_decoder  # noqa: F401
