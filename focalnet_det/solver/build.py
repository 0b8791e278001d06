"""The optimizer of every recipe: parameter groups by the family's rule, AdamW or SGD, gradient clipping.

``SOLVER.OPTIMIZER`` "ADAMW" (the FocalNet and Mask2Former recipes) or "SGD" (Detectron2's default).
``SOLVER.CLIP_GRADIENTS`` of type "full_model" clips the norm of all gradients together before each step
(Mask2Former's rule); the other types go through Detectron2's per-parameter clipping.
"""
import itertools

import torch

from detectron2.solver import get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping

from .mask2former import maskformer_param_groups

__all__ = ["PARAM_GROUP_RULES", "adamw_kwargs", "build_optimizer", "default_param_groups"]

# layerscale parameters (their module-level names) get no weight decay, like norms and biases
NO_DECAY_PARAMS = ("gamma_1", "gamma_2")


def default_param_groups(cfg, model):
    """Detectron2's rule (``WEIGHT_DECAY_NORM``, ``WEIGHT_DECAY_BIAS``), no decay on layerscale gammas:
    the FocalNet Mask R-CNN and UPerNet recipes."""
    return get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        overrides={name: {"weight_decay": 0.0} for name in NO_DECAY_PARAMS},
    )


# meta-architecture -> its recipe's parameter groups; any other uses default_param_groups
# DINO: the same rule (backbone lr x BACKBONE_MULTIPLIER; with WEIGHT_DECAY_NORM = WEIGHT_DECAY_EMBED = WEIGHT_DECAY
# every parameter decays, as in the official DINO)
PARAM_GROUP_RULES = {"MaskFormer": maskformer_param_groups, "DINO": maskformer_param_groups}


def adamw_kwargs(cfg):
    """AdamW's arguments from ``cfg.SOLVER``. The fused kernel is ~4x faster on CPUs; not with AMP, where
    GradScaler would hand it still-scaled gradients that Detectron2's clipping (inside ``step``) must not see."""
    return {"betas": tuple(cfg.SOLVER.BETAS), "fused": not cfg.SOLVER.AMP.ENABLED}


def _full_model_clipping(optimizer_cls, max_norm, norm_type):
    class FullModelGradientClippingOptimizer(optimizer_cls):
        def step(self, closure=None):
            all_params = itertools.chain(*[g["params"] for g in self.param_groups])
            torch.nn.utils.clip_grad_norm_(all_params, max_norm, norm_type=norm_type)
            return super().step(closure=closure)

    FullModelGradientClippingOptimizer.__name__ = f"FullModelGradientClipping{optimizer_cls.__name__}"
    return FullModelGradientClippingOptimizer


def build_optimizer(cfg, model):
    """The optimizer for ``model``, its parameter groups by ``PARAM_GROUP_RULES[MODEL.META_ARCHITECTURE]``."""
    s = cfg.SOLVER
    params = PARAM_GROUP_RULES.get(cfg.MODEL.META_ARCHITECTURE, default_param_groups)(cfg, model)
    name = s.OPTIMIZER.upper()
    if name == "ADAMW":
        optimizer_cls, kwargs = torch.optim.AdamW, adamw_kwargs(cfg)
    elif name == "SGD":
        optimizer_cls, kwargs = torch.optim.SGD, {"momentum": s.MOMENTUM, "nesterov": s.NESTEROV}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER: unknown optimizer {s.OPTIMIZER!r} (use ADAMW or SGD)")
    clip = s.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model" and clip.CLIP_VALUE > 0.0:
        optimizer_cls = _full_model_clipping(optimizer_cls, clip.CLIP_VALUE, clip.NORM_TYPE)
    else:
        optimizer_cls = maybe_add_gradient_clipping(cfg, optimizer_cls)
    return optimizer_cls(params, lr=s.BASE_LR, **kwargs)
