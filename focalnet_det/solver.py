"""Optimizer of the FocalNet recipes: AdamW, no weight decay on norms, biases and layerscale gammas."""
import torch

from detectron2.solver import get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping

__all__ = ["adamw_kwargs", "build_optimizer"]

# layerscale parameters (their module-level names) get no weight decay, like norms and biases
NO_DECAY_PARAMS = ("gamma_1", "gamma_2")


def adamw_kwargs(cfg):
    """AdamW's arguments from ``cfg.SOLVER``. The fused kernel is ~4x faster on CPUs; not with AMP, where
    GradScaler would hand it still-scaled gradients that Detectron2's clipping (inside ``step``) must not see."""
    return {"betas": tuple(cfg.SOLVER.BETAS), "fused": not cfg.SOLVER.AMP.ENABLED}


def build_optimizer(cfg, model):
    """``SOLVER.OPTIMIZER`` "ADAMW" (FocalNet recipes) or "SGD"; gradient clipping per ``SOLVER.CLIP_GRADIENTS``."""
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        overrides={name: {"weight_decay": 0.0} for name in NO_DECAY_PARAMS},
    )
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "ADAMW":
        optimizer_cls, kwargs = torch.optim.AdamW, adamw_kwargs(cfg)
    elif name == "SGD":
        optimizer_cls = torch.optim.SGD
        kwargs = {"momentum": cfg.SOLVER.MOMENTUM, "nesterov": cfg.SOLVER.NESTEROV}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER: unknown optimizer {cfg.SOLVER.OPTIMIZER!r} (use ADAMW or SGD)")
    return maybe_add_gradient_clipping(cfg, optimizer_cls)(params, lr=cfg.SOLVER.BASE_LR, **kwargs)
