"""Released mmdet (v2) Mask R-CNN and Cascade Mask R-CNN checkpoints (microsoft/FocalNet ``detection/``) ->
this project's Detectron2 models, whole.

A released file is ``{"meta", "state_dict", "optimizer"}``; its ``state_dict`` holds ``backbone.*`` (the official
FocalNet keys), ``neck.*`` (FPN), ``rpn_head.*`` and ``roi_head.*``. The conversion is a renaming
(``reference/mmdet_conversion_spec.md`` §3): background is the last logit in both, the per-class deltas, anchors
and RPN channels are laid out alike, so no row or channel moves. The Cascade's per-stage heads
(``roi_head.bbox_head.{s}``, ``roi_head.mask_head.{s}``) go to ``roi_heads.box_head.{s}``,
``roi_heads.box_predictor.{s}`` and ``roi_heads.mask_head.{s}`` of ``MMDetCascadeROIHeads``; mmcv's ``bn`` after a
bias-free conv becomes Detectron2's ``conv{k}.norm``.

Other mmdet detectors (ATSS, Sparse R-CNN: no anchor RPN + RoI head) are not converted whole: only their backbone
is used, as for any ``mm`` checkpoint.
"""
import logging
import re

from ..errors import UserError
from .class_heads import log_reinitialised
from .reading import describe_keys

__all__ = [
    "is_mmdet_detector",
    "is_mmdet_rcnn",
    "mmdet_rcnn_to_detectron2",
    "log_mmdet_meta",
    "fit_mmdet_rcnn_state_dict",
]

logger = logging.getLogger(__name__)

_STAGE = r"(?:(?P<s>\d+)\.)?"  # the Cascade's stage index; absent in Mask R-CNN
_P = r"(?P<p>weight|bias)"
# (mmdet key pattern, Detectron2 key template); {i1} = i + 1, {i2} = i + 2, {s} = "stage." or ""
_RULES = [
    (r"backbone\.(?P<rest>.+)", "backbone.bottom_up.{rest}"),
    (rf"neck\.lateral_convs\.(?P<i>\d)\.conv\.{_P}", "backbone.fpn_lateral{i2}.{p}"),
    (rf"neck\.fpn_convs\.(?P<i>\d)\.conv\.{_P}", "backbone.fpn_output{i2}.{p}"),
    (rf"rpn_head\.rpn_conv\.{_P}", "proposal_generator.rpn_head.conv.{p}"),
    (rf"rpn_head\.rpn_cls\.{_P}", "proposal_generator.rpn_head.objectness_logits.{p}"),
    (rf"rpn_head\.rpn_reg\.{_P}", "proposal_generator.rpn_head.anchor_deltas.{p}"),
    (rf"roi_head\.bbox_head\.{_STAGE}shared_convs\.(?P<i>\d+)\.conv\.weight", "roi_heads.box_head.{s}conv{i1}.weight"),
    (
        rf"roi_head\.bbox_head\.{_STAGE}shared_convs\.(?P<i>\d+)\.bn\."
        r"(?P<p>weight|bias|running_mean|running_var|num_batches_tracked)",
        "roi_heads.box_head.{s}conv{i1}.norm.{p}",
    ),
    (rf"roi_head\.bbox_head\.{_STAGE}shared_fcs\.(?P<i>\d+)\.{_P}", "roi_heads.box_head.{s}fc{i1}.{p}"),
    (rf"roi_head\.bbox_head\.{_STAGE}fc_cls\.{_P}", "roi_heads.box_predictor.{s}cls_score.{p}"),
    (rf"roi_head\.bbox_head\.{_STAGE}fc_reg\.{_P}", "roi_heads.box_predictor.{s}bbox_pred.{p}"),
    (rf"roi_head\.mask_head\.{_STAGE}convs\.(?P<i>\d+)\.conv\.{_P}", "roi_heads.mask_head.{s}mask_fcn{i1}.{p}"),
    (rf"roi_head\.mask_head\.{_STAGE}upsample\.{_P}", "roi_heads.mask_head.{s}deconv.{p}"),
    (rf"roi_head\.mask_head\.{_STAGE}conv_logits\.{_P}", "roi_heads.mask_head.{s}predictor.{p}"),
]
_RULES = [(re.compile(pattern + "$"), template) for pattern, template in _RULES]
# parameters whose size is the class count: a checkpoint of another dataset re-initialises them (fine-tuning)
_CLASS_DEPENDENT = re.compile(
    r"^roi_heads\.(box_predictor\.(\d+\.)?(cls_score|bbox_pred)|mask_head\.(\d+\.)?predictor)\."
)


def is_mmdet_detector(state_dict):
    """Whether an (unwrapped) state dict is an mmdet detector with a FocalNet backbone and an FPN neck."""
    return "backbone.patch_embed.proj.weight" in state_dict and any(k.startswith("neck.") for k in state_dict)


def is_mmdet_rcnn(state_dict):
    """Whether it is an mmdet (Cascade) Mask/Faster R-CNN: FocalNet + FPN, an anchor RPN (``rpn_head.rpn_conv``) and
    an RoI head. ATSS (``bbox_head.*``) and Sparse R-CNN (``rpn_head.init_proposal_*``) are not."""
    return (
        is_mmdet_detector(state_dict)
        and "rpn_head.rpn_conv.weight" in state_dict
        and any(k.startswith("roi_head.") for k in state_dict)
    )


def _rename(key):
    for pattern, template in _RULES:
        m = pattern.match(key)
        if m:
            g = m.groupdict()
            i = int(g.pop("i", None) or 0)
            s = g.pop("s", None)
            return template.format(i1=i + 1, i2=i + 2, s=f"{s}." if s else "", **g)
    return None


def mmdet_rcnn_to_detectron2(state_dict, source="the mmdet checkpoint"):
    """Rename a whole mmdet Mask R-CNN / Cascade Mask R-CNN state dict to this project's keys (module docstring).
    A key that fits no rule is a UserError naming it (and ``source``)."""
    out = {}
    for key, value in state_dict.items():
        key = key[len("module.") :] if key.startswith("module.") else key
        new = _rename(key)
        if new is None:
            raise UserError(f"{source}: key {key} has no place in a Detectron2 Mask R-CNN / Cascade Mask R-CNN "
                            f"(not an mmdet FocalNet Mask R-CNN or Cascade Mask R-CNN?)")
        out[new] = value
    return out


def log_mmdet_meta(checkpoint, source="the mmdet checkpoint"):
    """Log what the file's ``meta`` says about its classes (mmdet stores the dataset's ``CLASSES``)."""
    meta = checkpoint.get("meta") if isinstance(checkpoint, dict) else None
    if not isinstance(meta, dict) and isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        meta = checkpoint["model"].get("meta")  # as Detectron2's _load_file wraps it
    classes = meta.get("CLASSES") if isinstance(meta, dict) else None
    if not classes:
        logger.info(f"{source}: no meta.CLASSES; class order assumed to be the dataset's")
        return
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    coco = [c["name"] for c in COCO_CATEGORIES if c["isthing"]]
    if list(classes) == coco:
        logger.info(f"{source}: meta.CLASSES are the 80 COCO classes in COCO order ({meta.get('mmdet_version', '?')})")
    else:
        logger.warning(f"{source}: meta.CLASSES has {len(classes)} classes, not COCO's 80 in order "
                       f"({', '.join(map(str, list(classes)[:3]))}, ...): set MODEL.ROI_HEADS.NUM_CLASSES and the "
                       f"dataset's classes to match")


def fit_mmdet_rcnn_state_dict(model, state_dict, filename="checkpoint"):
    """Check a converted state dict against ``model`` strictly: every key of the model present, none extra, shapes
    equal; a mismatch is a one-line UserError naming the key. Only the class-dependent parameters (class logits,
    box deltas, mask logits) may differ in size when the class count differs; they then keep their
    initialisation, with a log line (fine-tuning on another dataset)."""
    model_sd = model.state_dict()
    # a FrozenBN box head keeps no batch count
    state_dict = {k: v for k, v in state_dict.items() if k in model_sd or not k.endswith(".num_batches_tracked")}
    cascade_ckpt = any(k.startswith("roi_heads.box_head.0.") for k in state_dict)
    cascade_model = any(k.startswith("roi_heads.box_head.0.") for k in model_sd)
    if cascade_ckpt != cascade_model:
        raise UserError(f"{filename} is a {'Cascade ' if cascade_ckpt else ''}Mask R-CNN checkpoint, the model "
                        f"{'is' if cascade_model else 'is not'} a Cascade (MODEL.ROI_HEADS.NAME "
                        f"{'MMDetCascadeROIHeads' if cascade_ckpt else 'StandardROIHeads'} for this checkpoint)")
    unexpected = [k for k in state_dict if k not in model_sd]
    if unexpected:
        raise UserError(f"{filename}: key {unexpected[0]} of the converted mmdet checkpoint is not in the model "
                        f"(check MODEL.FOCALNET / MODEL.MASK_ON / ROI heads against the checkpoint); "
                        f"unexpected: {describe_keys(unexpected, 3)}")
    missing = [k for k in model_sd if k not in state_dict]
    if missing:
        raise UserError(f"{filename}: the mmdet checkpoint lacks the model's key {missing[0]} (check MODEL.FOCALNET / "
                        f"MODEL.MASK_ON / ROI heads against the checkpoint); missing: {describe_keys(missing, 3)}")
    cls_key = next((k for k in model_sd if re.match(r"^roi_heads\.box_predictor\.(\d+\.)?cls_score\.weight$", k)), None)
    other_classes = cls_key is not None and state_dict[cls_key].shape[0] != model_sd[cls_key].shape[0]
    resized = []
    for k, v in state_dict.items():
        if v.shape == model_sd[k].shape:
            continue
        if other_classes and _CLASS_DEPENDENT.match(k):
            resized.append(k)
            continue
        hint = " (MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG)" if ".bbox_pred." in k else ""
        raise UserError(f"{filename}: {k} has shape {tuple(v.shape)} in the mmdet checkpoint, "
                        f"{tuple(model_sd[k].shape)} in the model (check MODEL.FOCALNET against the checkpoint's "
                        f"variant){hint}")
    log_reinitialised(filename, resized, state_dict, model_sd)
    return {k: v for k, v in state_dict.items() if k not in resized}
