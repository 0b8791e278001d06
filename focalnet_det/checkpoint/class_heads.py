"""Fine-tuning to another class count: which parameters depend on it, and loading a whole model around them.

A released model (a Detectron2 snapshot, an mmseg UPerNet, an official Mask2Former-layout file, a Detectron2
DINO) loaded into a config with another class count keeps every weight but those whose size is the class count:

- Mask R-CNN: ``roi_heads.box_predictor.{cls_score,bbox_pred}``, ``roi_heads.mask_head.predictor``;
- Cascade: the same for each stage ``roi_heads.box_predictor.{0,1,2}``, ``roi_heads.mask_head.{0,1,2}``;
- UPerNet: ``sem_seg_head.conv_seg`` and ``sem_seg_head.auxiliary_head.conv_seg``;
- Mask2Former: ``sem_seg_head.predictor.class_embed`` (and the criterion's ``empty_weight`` buffer);
- DINO: ``class_embed``, ``transformer.enc_out_class_embed``, ``label_enc`` (the denoising label book).

Those are re-initialised (the model keeps its own initialisation), each logged by name with both shapes; every
other head parameter must be in the file with the model's shape, and the file may hold nothing else: a missing,
extra or mis-shaped key is a one-line UserError naming it. (The official DINO and mmdet R-CNN files, converted
whole, apply the same rule in ``dino.py`` / ``mmdet.py``.)
"""
import logging
import re

from ..errors import UserError
from .reading import describe_keys

__all__ = ["CLASS_DEPENDENT", "is_class_dependent", "fit_class_heads", "log_reinitialised"]

logger = logging.getLogger(__name__)

CLASS_DEPENDENT = re.compile(
    r"^(roi_heads\.box_predictor\.(\d+\.)?(cls_score|bbox_pred)\.(weight|bias)"
    r"|roi_heads\.mask_head\.(\d+\.)?predictor\.(weight|bias)"
    r"|sem_seg_head\.(auxiliary_head\.)?conv_seg\.(weight|bias)"
    r"|sem_seg_head\.predictor\.class_embed\.(weight|bias)"
    r"|criterion\.empty_weight"
    r"|(transformer\.enc_out_)?class_embed\.(weight|bias)"
    r"|label_enc\.weight)$"
)
# where each family reads its class count (for the log line)
_NUM_CLASSES_KEY = (
    ("roi_heads.", "MODEL.ROI_HEADS.NUM_CLASSES"),
    ("sem_seg_head.", "MODEL.SEM_SEG_HEAD.NUM_CLASSES"),
    ("criterion.", "MODEL.SEM_SEG_HEAD.NUM_CLASSES"),
    ("", "MODEL.DINO.NUM_CLASSES"),
)


def is_class_dependent(key):
    """Whether a state-dict key of one of the project's models has the class count in its shape."""
    return CLASS_DEPENDENT.match(key) is not None


def log_reinitialised(filename, keys, state_dict, model_sd):
    """One log line per class-dependent parameter that keeps the model's initialisation: name, the config key
    of the class count, both shapes (every family's loader, the official DINO and mmdet conversions too)."""
    for k in keys:
        key = next(cfg_key for prefix, cfg_key in _NUM_CLASSES_KEY if k.startswith(prefix))
        logger.info(f"{filename}: {k} re-initialised for the class count ({key}): {tuple(state_dict[k].shape)} in "
                    f"the checkpoint, {tuple(model_sd[k].shape)} in the model")


def fit_class_heads(model, checkpoint, filename="checkpoint", backbone_prefix=None):
    """Fit ``checkpoint["model"]`` (Detectron2 keys, in place) to ``model`` when it is a whole model of the
    same family (it holds class-dependent keys of the model): class-dependent tensors of another size are
    dropped (they keep the model's initialisation), each logged; the rest must match the model exactly,
    except under ``backbone_prefix`` (the FocalNet, checked by the checkpointer) and BatchNorm batch counts.
    A file of backbone weights only, or one loaded with Detectron2's matching heuristics, is left alone."""
    state_dict = checkpoint["model"]
    model_sd = model.state_dict()
    if checkpoint.get("matching_heuristics", False) or not any(k in model_sd and is_class_dependent(k) for k in state_dict):
        return checkpoint
    resized = [k for k, v in state_dict.items()
               if is_class_dependent(k) and k in model_sd and tuple(v.shape) != tuple(model_sd[k].shape)]
    log_reinitialised(filename, resized, state_dict, model_sd)
    strict = [k for k in model_sd if not (backbone_prefix and k.startswith(backbone_prefix))
              and not k.endswith("num_batches_tracked")]
    missing = [k for k in strict if k not in state_dict]
    if missing:
        raise UserError(f"{filename}: the checkpoint lacks the model's key {missing[0]} (a whole model of another "
                        f"structure? compare the config with the checkpoint's); missing: {describe_keys(missing, 3)}")
    unexpected = [k for k in state_dict if k not in model_sd and not k.endswith("num_batches_tracked")]
    if unexpected:
        raise UserError(f"{filename}: key {unexpected[0]} of the checkpoint is not in the model (compare the config "
                        f"with the checkpoint's); unexpected: {describe_keys(unexpected, 3)}")
    mismatched = [k for k in strict if k not in resized and tuple(state_dict[k].shape) != tuple(model_sd[k].shape)]
    if mismatched:
        k = mismatched[0]
        raise UserError(f"{filename}: {k} has shape {tuple(state_dict[k].shape)} in the checkpoint, "
                        f"{tuple(model_sd[k].shape)} in the model (compare the config with the checkpoint's)")
    checkpoint["model"] = {k: v for k, v in state_dict.items() if k not in resized}
    return checkpoint
