"""Released mmseg UPerNet checkpoints (microsoft/FocalNet ``segmentation/``) -> this project's UPerNet.

An mmseg ``EncoderDecoder`` checkpoint holds ``{"state_dict": {backbone.*, decode_head.*, auxiliary_head.*}}``.
The backbone keys are the official FocalNet keys (the project's too), and ``focalnet_det.modeling.upernet``
names its modules as mmseg's ``UPerHead`` / ``FCNHead`` do (``psp_modules``, ``bottleneck``, ``lateral_convs``,
``fpn_convs``, ``fpn_bottleneck``, ``conv_seg``, ``convs``; ``conv`` / ``bn`` inside each ConvModule), so the
conversion is a renaming of the three prefixes.
"""
import logging

from .reading import describe_keys

__all__ = ["MMSEG_UPERNET_RENAMES", "is_mmseg_upernet", "mmseg_upernet_to_detectron2"]

logger = logging.getLogger(__name__)

# mmseg prefix -> prefix in Detectron2's SemanticSegmentor with UPerNetHead
MMSEG_UPERNET_RENAMES = (
    ("backbone.", "backbone."),
    ("decode_head.", "sem_seg_head."),
    ("auxiliary_head.", "sem_seg_head.auxiliary_head."),
)


def is_mmseg_upernet(state_dict):
    """Whether an (unwrapped) state dict is an mmseg segmentor with a FocalNet backbone and a decode head."""
    return "backbone.patch_embed.proj.weight" in state_dict and any(k.startswith("decode_head.") for k in state_dict)


def mmseg_upernet_to_detectron2(state_dict):
    """Rename an mmseg UPerNet state dict to the keys of this project's model (all of it: backbone, decode
    head, auxiliary head). Keys outside those three parts are dropped, with a warning."""
    out, dropped = {}, []
    for key, value in state_dict.items():
        for old, new in MMSEG_UPERNET_RENAMES:
            if key.startswith(old):
                out[new + key[len(old) :]] = value
                break
        else:
            dropped.append(key)
    if dropped:
        logger.warning(f"mmseg checkpoint: dropped keys outside backbone/decode_head/auxiliary_head: "
                       f"{describe_keys(dropped)}")
    return out
