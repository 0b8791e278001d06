"""Small pieces DINO's modules share: the box MLP, ``inverse_sigmoid``, box conversions, the two sine
embeddings (of feature maps and of reference boxes), and GroupNorm over the valid part of a padded map."""
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MLP",
    "inverse_sigmoid",
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "PositionEmbeddingSineHW",
    "sine_embed_boxes",
    "masked_group_norm",
]


class MLP(nn.Module):
    """``num_layers`` Linears with ReLU between them (official names: ``layers.{i}``)."""

    def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def inverse_sigmoid(x, eps=1e-3):
    """``log(x / (1 - x))`` with both clamped at ``eps`` (DINO's eps is 1e-3; Deformable DETR's 1e-5)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def box_cxcywh_to_xyxy(b):
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)


def box_xyxy_to_cxcywh(b):
    x0, y0, x1, y1 = b.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1)


def _sine(v, dim_t):
    """(..., ) -> (..., len(dim_t)): channels sin(v/d0), cos(v/d1), sin(v/d2), ..."""
    v = v[..., None] / dim_t
    return torch.stack([v[..., 0::2].sin(), v[..., 1::2].cos()], -1).flatten(-2)


def _dim_t(num_feats, temperature, device):
    i = torch.arange(num_feats, dtype=torch.float32, device=device)
    return temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / num_feats)


class PositionEmbeddingSineHW(nn.Module):
    """Sine position encoding of a padded feature map (DINO's, temperature 20 for both axes).

    Coordinates are the counts of valid pixels up to each position, normalised by the valid extent
    (``/ (last + 1e-6) * 2pi``, no -0.5 offset), so a padded map encodes its valid part as the map alone.
    Output: (N, 2 * num_pos_feats, H, W), y channels then x channels."""

    def __init__(self, num_pos_feats=128, temperature_h=20, temperature_w=20, scale=2 * math.pi):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature_h = temperature_h
        self.temperature_w = temperature_w
        self.scale = scale

    def forward(self, mask):
        """mask: (N, H, W) bool, True at padding."""
        not_mask = (~mask).to(torch.float32)
        y = not_mask.cumsum(1)
        x = not_mask.cumsum(2)
        eps = 1e-6
        y = y / (y[:, -1:, :] + eps) * self.scale
        x = x / (x[:, :, -1:] + eps) * self.scale
        pos_y = _sine(y, _dim_t(self.num_pos_feats, self.temperature_h, mask.device))
        pos_x = _sine(x, _dim_t(self.num_pos_feats, self.temperature_w, mask.device))
        return torch.cat([pos_y, pos_x], -1).permute(0, 3, 1, 2)


def sine_embed_boxes(boxes, d_model):
    """Sine embedding of reference boxes (..., 4) as (cx, cy, w, h) in [0, 1] -> (..., 2 * d_model):
    d_model / 2 channels per coordinate, temperature 10000, scale 2pi, order (y, x, w, h) (d_model 256: 512)."""
    dim_t = _dim_t(d_model // 2, 10000, boxes.device)
    parts = [_sine(boxes[..., i].float() * (2 * math.pi), dim_t) for i in (1, 0, 2, 3)]
    return torch.cat(parts, -1)


def masked_group_norm(norm, x, valid_sizes=None):
    """``norm`` (an ``nn.GroupNorm``) of the valid top-left ``valid_sizes[i] = (h, w)`` part of each image of
    ``x`` (N, C, H, W), zeros elsewhere: an image padded in a batch is normalised as it is alone. With no
    padding this is ``norm(x)``."""
    if valid_sizes is None or all(h == x.shape[-2] and w == x.shape[-1] for h, w in valid_sizes):
        return norm(x)
    out = x.new_zeros(x.shape)
    for i, (h, w) in enumerate(valid_sizes):
        out[i, :, :h, :w] = norm(x[i : i + 1, :, :h, :w])[0]
    return out
