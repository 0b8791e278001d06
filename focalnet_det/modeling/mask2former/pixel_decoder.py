"""``MSDeformAttnPixelDecoder``: Mask2Former's pixel decoder.

A multi-scale deformable-attention encoder over the coarse backbone features (res3..res5 by default),
then an FPN-style path down to the finest feature (res2), and a 1x1 conv giving the mask features.

Returned by ``forward_features``: ``(mask_features, transformer_encoder_features, multi_scale_features)``
= (stride-4 per-pixel embeddings, the encoder output at the coarsest level, the first three outputs
from coarse to fine: strides 32, 16, 8), as the official one.

Module and parameter names are the official ones (``input_proj``, ``transformer.level_embed``,
``transformer.encoder.layers.{i}.{self_attn,norm1,linear1,linear2,norm2}``, ``mask_features``,
``adapter_{k}`` / ``layer_{k}``), so official checkpoints load strictly. Two quirks of the official
configuration are kept: the encoder feed-forward width is 1024 and the number of sampling points 4,
whatever ``MODEL.MASK_FORMER.DIM_FEEDFORWARD`` / ``DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS`` say.
"""
import math
from typing import Callable, Dict, List, Optional, Union

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ..layers import MSDeformAttnTransformerEncoderLayer, init_deformable_transformer
from .position_encoding import PositionEmbeddingSine

__all__ = [
    "MSDeformAttnPixelDecoder",
    "MSDeformAttnTransformerEncoderOnly",
    "MSDeformAttnTransformerEncoderLayer",
    "MSDeformAttnTransformerEncoder",
]

# fixed by the official pixel decoder (not read from the config)
ENCODER_DIM_FEEDFORWARD = 1024
ENCODER_N_POINTS = 4


class MSDeformAttnTransformerEncoder(nn.Module):
    def __init__(self, num_layers, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(MSDeformAttnTransformerEncoderLayer(**layer_kwargs) for _ in range(num_layers))
        self.num_layers = num_layers

    @staticmethod
    def get_reference_points(spatial_shapes, batch_size, device):
        """Pixel centres of every level, normalised to [0, 1]: (N, S, L, 2) as (x, y), the same for each level."""
        points = []
        for h, w in spatial_shapes.tolist():
            ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
            xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            points.append(torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), -1))
        points = torch.cat(points, 0)  # (S, 2)
        return points[None, :, None, :].expand(batch_size, -1, len(spatial_shapes), 2)

    def forward(self, src, spatial_shapes, level_start_index, pos=None, padding_mask=None):
        reference_points = self.get_reference_points(spatial_shapes, src.shape[0], src.device)
        output = src
        for layer in self.layers:
            output = layer(output, pos, reference_points, spatial_shapes, level_start_index, padding_mask)
        return output


class MSDeformAttnTransformerEncoderOnly(nn.Module):
    """The encoder over all levels at once; ``level_embed`` is added to each level's position encoding."""

    def __init__(self, d_model=256, nhead=8, num_encoder_layers=6, dim_feedforward=1024, dropout=0.1,
                 num_feature_levels=4, enc_n_points=4):
        super().__init__()
        self.d_model = d_model
        self.nhead = nhead
        self.encoder = MSDeformAttnTransformerEncoder(
            num_encoder_layers, d_model=d_model, d_ffn=dim_feedforward, dropout=dropout,
            n_levels=num_feature_levels, n_heads=nhead, n_points=enc_n_points,
        )
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self._reset_parameters()

    def _reset_parameters(self):
        init_deformable_transformer(self)
        nn.init.normal_(self.level_embed)

    def forward(self, srcs, pos_embeds):
        """srcs, pos_embeds: lists of (N, C, H_l, W_l) -> (memory (N, S, C), spatial_shapes, level_start_index)."""
        spatial_shapes = torch.as_tensor([src.shape[-2:] for src in srcs], dtype=torch.long, device=srcs[0].device)
        src_flatten = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], 1)
        pos_flatten = torch.cat(
            [pos.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1) for lvl, pos in enumerate(pos_embeds)],
            1,
        )
        sizes = spatial_shapes.prod(1)
        level_start_index = torch.cat((sizes.new_zeros(1), sizes.cumsum(0)[:-1]))
        # no padding mask: every position is valid (the padded image border included, as the official code)
        memory = self.encoder(src_flatten, spatial_shapes, level_start_index, pos=pos_flatten)
        return memory, spatial_shapes, level_start_index


@SEM_SEG_HEADS_REGISTRY.register()
class MSDeformAttnPixelDecoder(nn.Module):
    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        transformer_dropout: float,
        transformer_nheads: int,
        transformer_dim_feedforward: int,
        transformer_enc_layers: int,
        conv_dim: int,
        mask_dim: int,
        norm: Optional[Union[str, Callable]] = None,
        transformer_in_features: List[str],
        common_stride: int,
    ):
        """
        Args:
            input_shape: channels and strides of the backbone features used (all of the FPN path)
            transformer_*: the deformable encoder (dropout, heads, feed-forward width, layers)
            conv_dim: width of the decoder (encoder d_model, FPN convs)
            mask_dim: channels of the mask features
            norm: normalisation of the FPN convs ("GN": GroupNorm with 32 groups)
            transformer_in_features: the features the encoder attends over (res3..res5)
            common_stride: stride of the mask features (4)
        """
        super().__init__()
        missing = [f for f in transformer_in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES {missing} are not among the "
                f"head's input features {sorted(input_shape)} (MODEL.SEM_SEG_HEAD.IN_FEATURES)"
            )
        ordered = sorted(input_shape.items(), key=lambda kv: kv[1].stride)  # fine to coarse
        self.in_features = [k for k, _ in ordered]
        self.feature_strides = [v.stride for _, v in ordered]
        self.feature_channels = [v.channels for _, v in ordered]

        encoder_inputs = [(k, v) for k, v in ordered if k in transformer_in_features]
        self.transformer_in_features = [k for k, _ in encoder_inputs]
        self.transformer_feature_strides = [v.stride for _, v in encoder_inputs]
        self.transformer_num_feature_levels = len(encoder_inputs)
        # one projection per encoder level, coarse to fine (res5 first)
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(v.channels, conv_dim, kernel_size=1), nn.GroupNorm(32, conv_dim))
            for _, v in encoder_inputs[::-1]
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)

        self.transformer = MSDeformAttnTransformerEncoderOnly(
            d_model=conv_dim,
            nhead=transformer_nheads,
            num_encoder_layers=transformer_enc_layers,
            dim_feedforward=transformer_dim_feedforward,
            dropout=transformer_dropout,
            num_feature_levels=self.transformer_num_feature_levels,
            enc_n_points=ENCODER_N_POINTS,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)

        self.mask_dim = mask_dim
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1, stride=1, padding=0)
        weight_init.c2_xavier_fill(self.mask_features)

        self.maskformer_num_feature_levels = 3  # the transformer decoder always takes 3 scales
        self.common_stride = common_stride

        # FPN levels finer than the encoder's finest, down to common_stride (res2 for 8 -> 4)
        self.num_fpn_levels = int(round(math.log2(min(self.transformer_feature_strides)) - math.log2(common_stride)))
        use_bias = norm == ""
        lateral_convs, output_convs = [], []
        for idx, in_channels in enumerate(self.feature_channels[: self.num_fpn_levels]):
            lateral = Conv2d(in_channels, conv_dim, kernel_size=1, bias=use_bias, norm=get_norm(norm, conv_dim))
            output = Conv2d(conv_dim, conv_dim, kernel_size=3, stride=1, padding=1, bias=use_bias,
                            norm=get_norm(norm, conv_dim), activation=F.relu)
            weight_init.c2_xavier_fill(lateral)
            weight_init.c2_xavier_fill(output)
            self.add_module(f"adapter_{idx + 1}", lateral)
            self.add_module(f"layer_{idx + 1}", output)
            lateral_convs.append(lateral)
            output_convs.append(output)
        # coarse to fine, the order of the top-down pass (plain lists: registered above under their names)
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
            "transformer_dropout": cfg.MODEL.MASK_FORMER.DROPOUT,
            "transformer_nheads": cfg.MODEL.MASK_FORMER.NHEADS,
            "transformer_dim_feedforward": ENCODER_DIM_FEEDFORWARD,  # not MASK_FORMER.DIM_FEEDFORWARD
            "transformer_enc_layers": head.TRANSFORMER_ENC_LAYERS,
            "transformer_in_features": head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES,
            "common_stride": head.COMMON_STRIDE,
        }

    def forward_features(self, features):
        """features: dict name -> (N, C, H, W) -> (mask_features, transformer_encoder_features, multi_scale_features)."""
        device_type = next(iter(features.values())).device.type
        # deformable attention in fp32, also under mixed precision
        with torch.autocast(device_type=device_type, enabled=False):
            return self._forward_features(features)

    def _forward_features(self, features):
        srcs, pos = [], []
        for idx, name in enumerate(self.transformer_in_features[::-1]):  # coarse to fine
            x = features[name].float()
            srcs.append(self.input_proj[idx](x))
            pos.append(self.pe_layer(x))
        memory, spatial_shapes, _ = self.transformer(srcs, pos)
        n = memory.shape[0]
        sizes = spatial_shapes.prod(1).tolist()
        out = [
            level.transpose(1, 2).reshape(n, -1, int(h), int(w))
            for level, (h, w) in zip(memory.split(sizes, dim=1), spatial_shapes.tolist())
        ]
        for idx, name in enumerate(self.in_features[: self.num_fpn_levels][::-1]):
            lateral = self.lateral_convs[idx](features[name].float())
            y = lateral + F.interpolate(out[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            out.append(self.output_convs[idx](y))
        multi_scale_features = out[: self.maskformer_num_feature_levels]
        return self.mask_features(out[-1]), out[0], multi_scale_features

    def forward(self, features, targets=None):
        raise NotImplementedError("MSDeformAttnPixelDecoder is used through forward_features() by MaskFormerHead")
