"""Focal kernel and focal level adaptation (design contract 3, the official detection loader's rule).

- A depthwise focal kernel smaller than the model's is zero-padded about its centre (exactly
  function-preserving for the 'same'-padded convolution); a larger one is clipped to its centre.
- When the model has more focal levels than the checkpoint, ``modulation.f`` (which projects to
  q, ctx and L+1 gates) keeps the q and ctx rows and the global-gate row (last), copies the existing
  level gates into the first gate positions and starts the new level gates at zero (weight and bias).
  The new levels' focal kernels are absent from the checkpoint and keep the model's initialisation.
  Fewer levels than the checkpoint cannot be adapted.

All functions work on official-layout keys without prefix.
"""
import logging
import re
from collections import defaultdict

import torch

from ..errors import UserError

__all__ = ["adapt_focal_kernels", "config_target_shapes", "new_focal_level_keys"]

logger = logging.getLogger(__name__)

_KERNEL = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.modulation\.focal_layers\.(\d+)\.0\.weight$")
_F = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.modulation\.f\.(weight|bias)$")


def _resize_kernel(kernel, size, key):
    """Centre zero-pad or centre-clip the last two dims of ``kernel`` (C, 1, k, k) to ``size`` (h, w)."""
    out = kernel
    for dim, target in ((2, size[0]), (3, size[1])):
        diff = target - out.shape[dim]
        if diff % 2:
            raise UserError(f"{key}: cannot centre a {tuple(kernel.shape[2:])} focal kernel in {tuple(size)}")
        if diff > 0:
            pad = [0, 0, 0, 0]
            pad[(3 - dim) * 2 : (3 - dim) * 2 + 2] = [diff // 2, diff // 2]
            out = torch.nn.functional.pad(out, pad)
        elif diff < 0:
            out = out.narrow(dim, -diff // 2, target)
    return out.contiguous()


def _expand_levels(tensor, rows, dim):
    """Rows of ``modulation.f`` (weight or bias) for more focal levels: q, ctx and global gate kept,
    level gates copied to the first positions, new level gates zero."""
    old_levels = tensor.shape[0] - 2 * dim - 1
    out = tensor.new_zeros((rows,) + tuple(tensor.shape[1:]))
    out[: 2 * dim + old_levels] = tensor[: 2 * dim + old_levels]  # q, ctx, existing level gates
    out[-1] = tensor[-1]  # global gate
    return out


def adapt_focal_kernels(state_dict, target_shapes):
    """Adapt focal kernels and focal levels of ``state_dict`` to ``target_shapes`` (key -> shape).

    Only focal kernels and ``modulation.f`` are touched, and only where a target shape is given and
    differs; other mismatches are left for the caller to report. Returns a new dict; logs one summary
    line per kind of adaptation. Raises UserError for fewer levels than the checkpoint's.
    """
    out = dict(state_dict)
    done = defaultdict(list)
    for key, value in state_dict.items():
        target = target_shapes.get(key)
        if target is None or tuple(target) == tuple(value.shape):
            continue
        target = tuple(target)
        if _KERNEL.match(key) and value.dim() == 4 and len(target) == 4 and value.shape[:2] == target[:2]:
            kind = "padded" if target[2] > value.shape[2] else "clipped"
            out[key] = _resize_kernel(value, target[2:], key)
            done[f"focal kernels {kind}"].append(f"{key} {tuple(value.shape[2:])}->{target[2:]}")
        elif _F.match(key) and value.shape[1:] == target[1:]:
            # C (in_features) from the weight, for the bias too; only where checkpoint and model agree on it
            weight_key = key[: -len("bias")] + "weight" if key.endswith("bias") else key
            weight, target_weight = state_dict.get(weight_key), target_shapes.get(weight_key)
            if weight is None or target_weight is None or weight.dim() != 2 or weight.shape[1] != target_weight[1]:
                continue  # another variant, not another level count: leave the mismatch to the caller
            dim = weight.shape[1]
            old_levels, new_levels = value.shape[0] - 2 * dim - 1, target[0] - 2 * dim - 1
            if new_levels < old_levels:
                raise UserError(
                    f"{key}: the checkpoint has {old_levels} focal levels, the model {new_levels}; "
                    "loading into fewer focal levels is not supported (set MODEL.FOCALNET.FOCAL_LEVELS "
                    f"to at least {old_levels})"
                )
            out[key] = _expand_levels(value, target[0], dim)
            done["focal levels expanded (new level gates zero)"].append(f"{key} {old_levels}->{new_levels}")
    for kind, items in done.items():
        logger.info(f"FocalNet checkpoint: {kind}: {len(items)} tensors, e.g. {items[0]}")
    return out


def config_target_shapes(state_dict, focal_windows=None, focal_levels=None):
    """Target shapes for ``adapt_focal_kernels`` from per-stage focal windows / levels, without a model.

    Each argument is None (keep the checkpoint's), one value for all stages, or one value per stage.
    Kernel size of level ``l`` is ``window + 2 l``; ``modulation.f`` has ``2C + levels + 1`` rows.
    """
    stages = 1 + max((int(k.split(".")[1]) for k in state_dict if k.startswith("layers.")), default=-1)

    def per_stage(values, name):
        if values is None:
            return None
        values = list(values)
        if len(values) == 1:
            values = values * stages
        if len(values) != stages:
            raise UserError(f"{name}: the checkpoint has {stages} stages, got {len(values)} values")
        return values

    windows = per_stage(focal_windows, "--focal-windows")
    levels = per_stage(focal_levels, "--focal-levels")
    shapes = {}
    for key, value in state_dict.items():
        m = _KERNEL.match(key)
        if m and windows is not None:
            k = windows[int(m.group(1))] + 2 * int(m.group(3))
            shapes[key] = tuple(value.shape[:2]) + (k, k)
        m = _F.match(key)
        if m and levels is not None:
            dim = state_dict[key[: -len(m.group(3))] + "weight"].shape[1]
            shapes[key] = (2 * dim + levels[int(m.group(1))] + 1,) + tuple(value.shape[1:])
    return shapes


def new_focal_level_keys(state_dict, model_keys):
    """Model keys of focal kernels for levels the checkpoint does not have (above its highest level
    in that block): after level expansion these keep the model's initialisation."""
    present = defaultdict(lambda: -1)
    for key in state_dict:
        m = _KERNEL.match(key)
        if m:
            block = (m.group(1), m.group(2))
            present[block] = max(present[block], int(m.group(3)))
    new = []
    for key in model_keys:
        m = _KERNEL.match(key)
        if m and key not in state_dict and present[(m.group(1), m.group(2))] >= 0:
            if int(m.group(3)) > present[(m.group(1), m.group(2))]:
                new.append(key)
    return new
