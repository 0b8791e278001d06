"""UPerNet for semantic segmentation: the decode head, the FCN auxiliary head, multi-scale + flip testing.
Public: ``UPerNetHead`` (registered sem-seg head), ``FCNHead``, ``SemanticSegmentorWithTTA``."""
from .test_time_augmentation import SemanticSegmentorWithTTA
from .upernet_head import FCNHead, UPerNetHead

__all__ = ["UPerNetHead", "FCNHead", "SemanticSegmentorWithTTA"]
