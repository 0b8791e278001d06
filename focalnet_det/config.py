"""Every config key the project adds to Detectron2's defaults, in one call."""
from detectron2.config import CfgNode as CN


def add_focalnet_config(cfg):
    """Add FocalNet backbone, optimizer and augmentation keys to ``cfg`` (in place)."""
    # Backbone: names follow the official FocalNet arguments. Lists are per stage.
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
