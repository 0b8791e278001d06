"""The models, one folder per family: ``backbone`` (FocalNet), ``layers`` (ops shared by head families),
``mask2former``, ``upernet``, ``dino``, ``roi_heads`` (the released mmdet Cascade's). Importing it registers every
backbone, meta-architecture and head."""
from .backbone import *  # noqa: F401,F403
from . import dino  # noqa: F401  (registers DINO; its names stay under .dino, apart from Mask2Former's matcher/criterion)
from .layers import *  # noqa: F401,F403
from .mask2former import *  # noqa: F401,F403
from .roi_heads import *  # noqa: F401,F403
from .upernet import *  # noqa: F401,F403
