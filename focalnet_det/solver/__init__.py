"""Optimizers of the recipes: one builder, the parameter-group rule of each head family beside it.
Public: ``build_optimizer``, ``default_param_groups``, ``maskformer_param_groups``, ``PARAM_GROUP_RULES``."""
from .build import PARAM_GROUP_RULES, adamw_kwargs, build_optimizer, default_param_groups
from .mask2former import maskformer_param_groups

__all__ = ["build_optimizer", "default_param_groups", "maskformer_param_groups", "PARAM_GROUP_RULES", "adamw_kwargs"]
