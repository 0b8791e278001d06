"""The parameter groups of the Mask2Former recipes (the official train_net.py's ``build_optimizer``).

One learning rate and weight decay per parameter: ``SOLVER.BASE_LR`` x ``SOLVER.BACKBONE_MULTIPLIER`` for the
backbone; weight decay ``SOLVER.WEIGHT_DECAY``, except ``WEIGHT_DECAY_NORM`` for the parameters of norm layers
(BatchNorm, SyncBatchNorm, GroupNorm, InstanceNorm, LayerNorm, LocalResponseNorm) and ``WEIGHT_DECAY_EMBED``
for ``nn.Embedding`` (the decoder's queries and level embedding); biases and layerscale gammas decay (as in
the official recipe). The optimizer itself and full-model gradient clipping: :func:`.build.build_optimizer`.
"""
from torch import nn

from detectron2.solver.build import reduce_param_groups

__all__ = ["maskformer_param_groups"]

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
