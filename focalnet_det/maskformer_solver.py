"""The optimizer of the Mask2Former recipes (the official train_net.py's ``build_optimizer``).

One learning rate and weight decay per parameter: ``SOLVER.BASE_LR`` x ``SOLVER.BACKBONE_MULTIPLIER`` for the
backbone; weight decay ``SOLVER.WEIGHT_DECAY``, except ``WEIGHT_DECAY_NORM`` for the parameters of norm layers
(BatchNorm, SyncBatchNorm, GroupNorm, InstanceNorm, LayerNorm, LocalResponseNorm) and ``WEIGHT_DECAY_EMBED``
for ``nn.Embedding`` (the decoder's queries and level embedding); biases and layerscale gammas decay (as in
the official recipe). ``SOLVER.OPTIMIZER`` "ADAMW" or "SGD". With ``SOLVER.CLIP_GRADIENTS`` of type
"full_model", the gradient norm of all parameters together is clipped to ``CLIP_VALUE`` before each step;
other clip types go through Detectron2's per-parameter clipping.
"""
import itertools

import torch
from torch import nn

from detectron2.solver.build import maybe_add_gradient_clipping, reduce_param_groups

from .solver import adamw_kwargs

__all__ = ["build_maskformer_optimizer", "maskformer_param_groups"]

NORM_MODULE_TYPES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm,
)
# parameters of other backbones (Swin) that never decay in the official recipe
NO_DECAY_PARAM_NAMES = ("relative_position_bias_table", "absolute_pos_embed")


def maskformer_param_groups(cfg, model):
    """Parameter groups with their lr and weight decay (parameters with equal settings grouped together)."""
    s = cfg.SOLVER
    params, seen = [], set()
    for module_name, module in model.named_modules():
        for param_name, value in module.named_parameters(recurse=False):
            if not value.requires_grad or value in seen:
                continue
            seen.add(value)
            hp = {"lr": s.BASE_LR, "weight_decay": s.WEIGHT_DECAY}
            if "backbone" in module_name:
                hp["lr"] = s.BASE_LR * s.BACKBONE_MULTIPLIER
            if any(n in param_name for n in NO_DECAY_PARAM_NAMES):
                hp["weight_decay"] = 0.0
            if isinstance(module, NORM_MODULE_TYPES):
                hp["weight_decay"] = s.WEIGHT_DECAY_NORM
            if isinstance(module, nn.Embedding):
                hp["weight_decay"] = s.WEIGHT_DECAY_EMBED
            params.append({"params": [value], **hp})
    return reduce_param_groups(params)


def _full_model_clipping(optimizer_cls, max_norm, norm_type):
    class FullModelGradientClippingOptimizer(optimizer_cls):
        def step(self, closure=None):
            all_params = itertools.chain(*[g["params"] for g in self.param_groups])
            torch.nn.utils.clip_grad_norm_(all_params, max_norm, norm_type=norm_type)
            return super().step(closure=closure)

    FullModelGradientClippingOptimizer.__name__ = f"FullModelGradientClipping{optimizer_cls.__name__}"
    return FullModelGradientClippingOptimizer


def build_maskformer_optimizer(cfg, model):
    s = cfg.SOLVER
    params = maskformer_param_groups(cfg, model)
    name = s.OPTIMIZER.upper()
    if name == "ADAMW":
        optimizer_cls, kwargs = torch.optim.AdamW, adamw_kwargs(cfg)
    elif name == "SGD":
        optimizer_cls, kwargs = torch.optim.SGD, {"momentum": s.MOMENTUM}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER: unknown optimizer {s.OPTIMIZER!r} (use ADAMW or SGD)")
    clip = s.CLIP_GRADIENTS
    full_model = clip.ENABLED and clip.CLIP_TYPE == "full_model" and clip.CLIP_VALUE > 0.0
    if full_model:
        optimizer_cls = _full_model_clipping(optimizer_cls, clip.CLIP_VALUE, clip.NORM_TYPE)
    optimizer = optimizer_cls(params, lr=s.BASE_LR, **kwargs)
    if not full_model:
        optimizer = maybe_add_gradient_clipping(cfg, optimizer)
    return optimizer
