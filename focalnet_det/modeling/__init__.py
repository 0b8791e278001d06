from .backbone import *  # noqa: F401,F403
from .upernet import FCNHead, UPerNetHead  # noqa: F401  (registers the UPerNet semantic head)
from .test_time_augmentation import SemanticSegmentorWithTTA  # noqa: F401
