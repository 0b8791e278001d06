"""Sine position encoding of a feature map (as in DETR / Mask2Former)."""
import math

import torch
from torch import nn

__all__ = ["PositionEmbeddingSine"]


class PositionEmbeddingSine(nn.Module):
    """2-D sine/cosine encoding: ``num_pos_feats`` channels for y, then as many for x.

    With ``normalize`` the cumulative coordinates 1..H (1..W) are divided by their last value and
    scaled to ``scale`` (2 pi); channel pair i uses the frequency ``temperature ** (2 i / num_pos_feats)``,
    sine on even channels, cosine on odd ones. Pixels where ``mask`` is True do not count.
    """

    def __init__(self, num_pos_feats=64, temperature=10000, normalize=False, scale=None):
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("scale needs normalize=True")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, x, mask=None):
        """x: (N, C, H, W) (only its shape and device are used) -> (N, 2 * num_pos_feats, H, W) float32."""
        n, _, h, w = x.shape
        if mask is None:
            valid = torch.ones((n, h, w), device=x.device, dtype=torch.float32)
        else:
            valid = (~mask).to(torch.float32)
        y = valid.cumsum(1)
        xs = valid.cumsum(2)
        if self.normalize:
            eps = 1e-6
            y = y / (y[:, -1:, :] + eps) * self.scale
            xs = xs / (xs[:, :, -1:] + eps) * self.scale
        i = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        freq = self.temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / self.num_pos_feats)

        def encode(coord):
            t = coord[..., None] / freq  # (N, H, W, F)
            return torch.stack((t[..., 0::2].sin(), t[..., 1::2].cos()), dim=4).flatten(3)

        return torch.cat((encode(y), encode(xs)), dim=3).permute(0, 3, 1, 2)

    def extra_repr(self):
        return f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, " \
               f"normalize={self.normalize}, scale={self.scale}"
