"""Every config key the project adds to Detectron2's defaults, in one call; the config loading every tool shares."""
import logging
import os

import torch
import yaml

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from .errors import UserError


def load_config(config_file, opts=()):
    """Detectron2's defaults, this project's keys, ``config_file`` and ``KEY VALUE`` overrides (not frozen); a
    mistake in them is a one-line UserError naming the file. Without a GPU a CUDA device becomes the CPU (and
    mixed precision is switched off)."""
    if not config_file:
        raise UserError("no config given: pass --config-file FILE")
    if not os.path.isfile(config_file):
        raise UserError(f"config file not found: {config_file}")
    cfg = get_cfg()
    add_focalnet_config(cfg)
    try:
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, AssertionError, TypeError, OSError, yaml.YAMLError) as e:
        msg = " ".join(str(e.args[0] if isinstance(e, KeyError) and e.args else e).split())
        raise UserError(f"{config_file}: {msg}") from None
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger(__name__).info("no GPU: running on the CPU, without mixed precision")
        cfg.MODEL.DEVICE = "cpu"
        cfg.SOLVER.AMP.ENABLED = False
    return cfg


def check_weights_file(cfg):
    """UserError when ``MODEL.WEIGHTS`` names a local file (or Hugging Face model folder) that does not exist (URLs
    are checked when fetched)."""
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not (os.path.isfile(weights) or os.path.isdir(weights)):
        raise UserError(f"MODEL.WEIGHTS file not found: {weights}")


def add_focalnet_config(cfg):
    """Add every key the project uses to ``cfg`` (in place): the backbone's, then one call per head family."""
    add_focalnet_backbone_config(cfg)
    add_detection_config(cfg)  # Mask R-CNN / Cascade: optimizer choice, the DETR-style crop branch
    add_maskformer2_config(cfg)  # Mask2Former: the official keys and defaults
    add_upernet_config(cfg)  # UPerNet and the semantic-segmentation recipe (ADE20K)
    add_dino_config(cfg)  # DINO: MODEL.DINO.*
    add_model_selection_config(cfg)  # TEST.BEST_CHECKPOINT_METRIC: model_best.pth by a metric you name
    add_tile_config(cfg)  # TEST.TILE: tiled inference of large images (focalnet_det/inference)


def add_focalnet_backbone_config(cfg):
    """``MODEL.FOCALNET``: names follow the official FocalNet arguments; lists are per stage."""
    cfg.MODEL.FOCALNET = CN()
    cfg.MODEL.FOCALNET.EMBED_DIM = 96
    cfg.MODEL.FOCALNET.DEPTHS = [2, 2, 6, 2]
    cfg.MODEL.FOCALNET.MLP_RATIO = 4.0
    cfg.MODEL.FOCALNET.FOCAL_LEVELS = [2, 2, 2, 2]
    # T/S/B dense-prediction configs use 9 (classification: 3); L/XL/H keep their classification windows.
    cfg.MODEL.FOCALNET.FOCAL_WINDOWS = [9, 9, 9, 9]
    cfg.MODEL.FOCALNET.USE_CONV_EMBED = False
    cfg.MODEL.FOCALNET.USE_POSTLN = False
    cfg.MODEL.FOCALNET.USE_POSTLN_IN_MODULATION = False
    cfg.MODEL.FOCALNET.USE_LAYERSCALE = False
    cfg.MODEL.FOCALNET.LAYERSCALE_VALUE = 1e-4
    cfg.MODEL.FOCALNET.NORMALIZE_MODULATOR = False
    cfg.MODEL.FOCALNET.DROP_PATH_RATE = 0.2
    cfg.MODEL.FOCALNET.PATCH_SIZE = 4
    cfg.MODEL.FOCALNET.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # -1: nothing frozen; 0 (or 1): the stem; k >= 2: the stem and stages 1..k-1 (official semantics).
    cfg.MODEL.FOCALNET.FROZEN_STAGES = -1
    cfg.MODEL.FOCALNET.USE_CHECKPOINT = False


def add_detection_config(cfg):
    """The FocalNet detection recipe's keys: the optimizer (shared by every family) and the crop branch."""
    # Optimizer: "ADAMW" (the FocalNet recipes) or "SGD" (Detectron2's default).
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BETAS = (0.9, 0.999)

    # The DETR-style crop branch of the official Mask R-CNN recipe: with probability PROB,
    # resize the short side to one of RESIZE_SHORT, crop a random H, W in CROP_SIZE, then do the
    # usual multi-scale resize; otherwise only the multi-scale resize.
    cfg.INPUT.CROP_AUG = CN()
    cfg.INPUT.CROP_AUG.ENABLED = False
    cfg.INPUT.CROP_AUG.PROB = 0.5
    cfg.INPUT.CROP_AUG.RESIZE_SHORT = [400, 500, 600]
    cfg.INPUT.CROP_AUG.CROP_SIZE = [384, 600]


def _add_missing(cfg, defaults):
    """Copy into ``cfg`` the keys of ``defaults`` it lacks (recursively); existing values win."""
    for key, value in defaults.items():
        if key not in cfg:
            cfg[key] = value.clone() if isinstance(value, CN) else value
        elif isinstance(value, CN) and isinstance(cfg[key], CN):
            _add_missing(cfg[key], value)


def add_maskformer2_config(cfg):
    """The keys and defaults of the official Mask2Former (``mask2former/config.py``), so that its yamls
    load with only the backbone swapped. Keys already present keep their values (idempotent), which also
    keeps whatever another part of the project set first for the shared ones (``SOLVER.OPTIMIZER``, the
    DeepLab keys). Mask2Former's Swin keys (``MODEL.SWIN``) are not added: the backbone here is FocalNet."""
    m = CN()
    m.INPUT = CN()
    m.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"  # which training mapper (tools/train_net.py)
    m.INPUT.COLOR_AUG_SSD = False
    m.INPUT.CROP = CN()
    m.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    m.INPUT.SIZE_DIVISIBILITY = -1  # semantic mapper: pad image and label to this square (-1: no padding)
    # large-scale jitter ("new baseline") mappers
    m.INPUT.IMAGE_SIZE = 1024
    m.INPUT.MIN_SCALE = 0.1
    m.INPUT.MAX_SCALE = 2.0

    m.SOLVER = CN()
    m.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    m.SOLVER.OPTIMIZER = "ADAMW"
    m.SOLVER.BACKBONE_MULTIPLIER = 0.1
    # poly schedule ("WarmupPolyLR"), keys of Detectron2's DeepLab project
    m.SOLVER.POLY_LR_POWER = 0.9
    m.SOLVER.POLY_LR_CONSTANT_ENDING = 0.0

    m.MODEL = CN()
    f = m.MODEL.MASK_FORMER = CN()
    f.DEEP_SUPERVISION = True
    f.NO_OBJECT_WEIGHT = 0.1
    f.CLASS_WEIGHT = 1.0
    f.DICE_WEIGHT = 1.0
    f.MASK_WEIGHT = 20.0
    f.NHEADS = 8
    f.DROPOUT = 0.1
    f.DIM_FEEDFORWARD = 2048
    f.ENC_LAYERS = 0
    f.DEC_LAYERS = 6  # the decoder gets DEC_LAYERS - 1 layers (the learnable queries take the first loss)
    f.PRE_NORM = False
    f.HIDDEN_DIM = 256
    f.NUM_OBJECT_QUERIES = 100
    f.TRANSFORMER_IN_FEATURE = "res5"
    f.ENFORCE_INPUT_PROJ = False
    f.TEST = CN()
    f.TEST.SEMANTIC_ON = True
    f.TEST.INSTANCE_ON = False
    f.TEST.PANOPTIC_ON = False
    f.TEST.OBJECT_MASK_THRESHOLD = 0.0
    f.TEST.OVERLAP_THRESHOLD = 0.0
    f.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE = False
    f.SIZE_DIVISIBILITY = 32  # < 0: the backbone's
    f.TRANSFORMER_DECODER_NAME = "MultiScaleMaskedTransformerDecoder"
    # point-sampled mask losses (matcher and criterion)
    f.TRAIN_NUM_POINTS = 112 * 112
    f.OVERSAMPLE_RATIO = 3.0
    f.IMPORTANCE_SAMPLE_RATIO = 0.75

    h = m.MODEL.SEM_SEG_HEAD = CN()
    h.MASK_DIM = 256
    h.TRANSFORMER_ENC_LAYERS = 0
    h.PIXEL_DECODER_NAME = "BasePixelDecoder"
    h.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["res3", "res4", "res5"]
    # present in the official config but never read: the encoder always uses 4 points and MASK_FORMER.NHEADS
    h.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 4
    h.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 8
    # keys of Detectron2's DeepLab project, which the official setup also adds (its yamls name some of them)
    h.LOSS_TYPE = "hard_pixel_mining"
    h.PROJECT_FEATURES = ["res2"]
    h.PROJECT_CHANNELS = [48]
    h.ASPP_CHANNELS = 256
    h.ASPP_DILATIONS = [6, 12, 18]
    h.ASPP_DROPOUT = 0.1
    h.USE_DEPTHWISE_SEPARABLE_CONV = False
    m.MODEL.RESNETS = CN()
    m.MODEL.RESNETS.RES4_DILATION = 1
    m.MODEL.RESNETS.RES5_MULTI_GRID = [1, 2, 4]
    m.MODEL.RESNETS.STEM_TYPE = "deeplab"
    _add_missing(cfg, m)


def add_upernet_config(cfg):
    """UPerNet (``focalnet_det/modeling/upernet/``) and semantic-segmentation recipe keys. The head also reads
    Detectron2's ``MODEL.SEM_SEG_HEAD.{IN_FEATURES, NUM_CLASSES, IGNORE_VALUE, CONVS_DIM, NORM, LOSS_WEIGHT}``.
    Keys shared with Mask2Former / DeepLab get the same defaults and never overwrite (idempotent)."""
    u = CN()
    u.MODEL = CN()
    u.MODEL.UPERNET = CN()
    u.MODEL.UPERNET.POOL_SCALES = [1, 2, 3, 6]
    u.MODEL.UPERNET.DROPOUT = 0.1
    # True: cross-entropy averaged over all pixels, ignored ones counting 0 (mmseg, the recipe);
    # False: over the labelled pixels only (Detectron2's heads)
    u.MODEL.UPERNET.LOSS_AVERAGE_ALL_PIXELS = True
    # FCN auxiliary head, training only; "" disables it
    u.MODEL.UPERNET.AUX_IN_FEATURE = "res4"
    u.MODEL.UPERNET.AUX_CHANNELS = 256
    u.MODEL.UPERNET.AUX_NUM_CONVS = 1
    u.MODEL.UPERNET.AUX_LOSS_WEIGHT = 0.4

    u.INPUT = CN()
    # (lo, hi): the semantic training mapper resizes as mmseg's Resize(img_scale=(MAX_SIZE_TRAIN,
    # MIN_SIZE_TRAIN[0]), ratio_range=(lo, hi)): r ~ U(lo, hi) scales both the short-side target and the
    # long-side limit. Empty: Detectron2's ResizeShortestEdge(MIN_SIZE_TRAIN, MAX_SIZE_TRAIN, sampling).
    u.INPUT.RESIZE_RATIO_RANGE = []
    u.INPUT.COLOR_AUG_SSD = False  # photometric distortion (mmseg's PhotoMetricDistortion)
    u.INPUT.CROP = CN()
    u.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0  # mmseg's cat_max_ratio

    u.SOLVER = CN()
    # SOLVER.LR_SCHEDULER_NAME "WarmupPolyLR" (Detectron2's DeepLab project)
    u.SOLVER.POLY_LR_POWER = 0.9
    u.SOLVER.POLY_LR_CONSTANT_ENDING = 0.0

    u.TEST = CN()
    u.TEST.AUG = CN()
    # semantic multi-scale test (TEST.AUG.ENABLED, with TEST.AUG.FLIP): ratios of (MIN_SIZE_TEST,
    # MAX_SIZE_TEST), as mmseg's img_ratios; the softmax outputs of all views are averaged
    u.TEST.AUG.RATIOS = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    _add_missing(cfg, u)


def add_dino_config(cfg):
    """``MODEL.DINO``: DINO (``focalnet_det/modeling/dino/``); defaults are the official DINO-4scale config.
    The backbone's ``OUT_FEATURES`` are the levels taken from it (FocalNet: res3-res5 for 4 scales, res2-res5
    for 5); ``NUM_FEATURE_LEVELS`` counts them plus the stride-2 convs added on top. Idempotent."""
    d = CN()
    d.MODEL = CN()
    m = d.MODEL.DINO = CN()
    # 91 for the released COCO checkpoints, whose logits are indexed by raw COCO category id (with
    # LOGITS_BY_DATASET_ID); otherwise the number of (contiguous) classes
    m.NUM_CLASSES = 91
    # True: logit k scores the dataset's category id k (mapping from the metadata of DATASETS.TRAIN[0], else
    # TEST[0]); predictions still come out as Detectron2's contiguous ids
    m.LOGITS_BY_DATASET_ID = False
    m.HIDDEN_DIM = 256
    m.NHEADS = 8
    m.ENC_LAYERS = 6
    m.DEC_LAYERS = 6
    m.DIM_FEEDFORWARD = 2048
    m.DROPOUT = 0.0
    m.NUM_FEATURE_LEVELS = 4
    m.ENC_N_POINTS = 4
    m.DEC_N_POINTS = 4
    m.NUM_QUERIES = 900
    m.POS_TEMPERATURE = 20.0  # sine position encoding of the feature maps (detrex: 10000, with a -0.5 offset)
    # contrastive denoising (training only): DN_NUMBER queries' worth of groups, label noise, box noise.
    # DN_BOX_NOISE_SCALE: 0.4 in the released (FocalNet-)DINO configs; the official DINO scripts pass 1.0.
    m.DN_NUMBER = 100
    m.DN_LABEL_NOISE_RATIO = 0.5
    m.DN_BOX_NOISE_SCALE = 0.4
    # focal loss and the Hungarian matcher's costs
    m.FOCAL_ALPHA = 0.25
    m.FOCAL_GAMMA = 2.0
    m.COST_CLASS = 2.0
    m.COST_BBOX = 5.0
    m.COST_GIOU = 2.0
    # loss weights, the same for the final, auxiliary, encoder and denoising outputs
    m.CLASS_WEIGHT = 1.0
    m.BBOX_WEIGHT = 5.0
    m.GIOU_WEIGHT = 2.0
    # inference: the NUM_SELECT best (query, class) pairs; class-agnostic NMS when NMS_IOU_THRESHOLD > 0
    m.NUM_SELECT = 300
    m.NMS_IOU_THRESHOLD = -1.0
    _add_missing(cfg, d)


def add_tile_config(cfg):
    """``TEST.TILE``: tiled inference (``focalnet_det/inference/tiling.py``), used by the predictor of tools/demo.py,
    tools/predict.py and tools/web_demo.py. An image larger than SIZE px is predicted in SIZE x SIZE tiles (each
    resized as an image is at test time), overlapping by OVERLAP (a fraction of SIZE), and the results merged.
    SIZE 0: off (the default). Idempotent."""
    t = CN()
    t.TEST = CN()
    t.TEST.TILE = CN()
    t.TEST.TILE.SIZE = 0
    t.TEST.TILE.OVERLAP = 0.25
    _add_missing(cfg, t)


def add_model_selection_config(cfg):
    """``TEST.BEST_CHECKPOINT_METRIC``: the evaluation metric (as in metrics.json, e.g. ``bbox/AP``, ``segm/AP50``,
    ``sem_seg/mIoU``, ``panoptic_seg/PQ``; higher is better) by which ``OUTPUT_DIR/model_best.pth`` is kept at
    every evaluation (``TEST.EVAL_PERIOD`` and the end); empty: off. Idempotent."""
    d = CN()
    d.TEST = CN()
    d.TEST.BEST_CHECKPOINT_METRIC = ""
    _add_missing(cfg, d)
