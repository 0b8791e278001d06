"""``MultiScaleMaskedTransformerDecoder``: Mask2Former's transformer decoder.

Learnable queries (content ``query_feat`` + positional ``query_embed``) go through ``DEC_LAYERS - 1``
layers of masked cross-attention, self-attention and a feed-forward network, visiting the three pixel
decoder scales round-robin (1/32, 1/16, 1/8, 1/32, ...). Each query's cross-attention is restricted to
where its current mask prediction is >= 0.5 (sigmoid), resized to the scale attended; a query whose mask
is empty everywhere attends everywhere (otherwise its softmax would be all -inf: NaN). Predictions
(class logits, mask logits at the mask features' stride) are made before the first layer and after each,
so the last is the output and the others are auxiliary outputs for deep supervision; in inference the
others are made only at the attended scales, which is all the attention masks need.

Module and parameter names are the official ones.
"""
import logging

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import Conv2d
from detectron2.utils.registry import Registry

from .position_encoding import PositionEmbeddingSine

__all__ = [
    "TRANSFORMER_DECODER_REGISTRY",
    "build_transformer_decoder",
    "MultiScaleMaskedTransformerDecoder",
    "SelfAttentionLayer",
    "CrossAttentionLayer",
    "FFNLayer",
    "MLP",
]

TRANSFORMER_DECODER_REGISTRY = Registry("TRANSFORMER_MODULE")
TRANSFORMER_DECODER_REGISTRY.__doc__ = """
Transformer decoders of MaskFormer-style heads (``MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME``), called as
``cls(cfg, in_channels, mask_classification)``.
"""


def build_transformer_decoder(cfg, in_channels, mask_classification=True):
    """The decoder named by ``MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME``."""
    name = cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME
    return TRANSFORMER_DECODER_REGISTRY.get(name)(cfg, in_channels, mask_classification)


def _xavier_matrices(module):
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class SelfAttentionLayer(nn.Module):
    """Self-attention among the queries (positions added to queries and keys, not to values)."""

    def __init__(self, d_model, nhead, dropout=0.0, normalize_before=False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_matrices(self)

    def forward(self, tgt, tgt_mask=None, tgt_key_padding_mask=None, query_pos=None):
        """tgt, query_pos: (Q, N, C)."""
        x = self.norm(tgt) if self.normalize_before else tgt
        qk = x if query_pos is None else x + query_pos
        attended = self.self_attn(qk, qk, value=x, attn_mask=tgt_mask, key_padding_mask=tgt_key_padding_mask,
                                  need_weights=False)[0]
        tgt = tgt + self.dropout(attended)
        return tgt if self.normalize_before else self.norm(tgt)


class CrossAttentionLayer(nn.Module):
    """Queries attend to the pixel features (positions added to queries and keys)."""

    def __init__(self, d_model, nhead, dropout=0.0, normalize_before=False):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_matrices(self)

    def forward(self, tgt, memory, memory_mask=None, memory_key_padding_mask=None, pos=None, query_pos=None):
        """tgt: (Q, N, C); memory, pos: (HW, N, C); memory_mask: (N * heads, Q, HW) bool, True = not allowed."""
        x = self.norm(tgt) if self.normalize_before else tgt
        attended = self.multihead_attn(
            query=x if query_pos is None else x + query_pos,
            key=memory if pos is None else memory + pos,
            value=memory,
            attn_mask=memory_mask,
            key_padding_mask=memory_key_padding_mask,
            need_weights=False,
        )[0]
        tgt = tgt + self.dropout(attended)
        return tgt if self.normalize_before else self.norm(tgt)


class FFNLayer(nn.Module):
    def __init__(self, d_model, dim_feedforward=2048, dropout=0.0, normalize_before=False):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.normalize_before = normalize_before
        _xavier_matrices(self)

    def forward(self, tgt):
        x = self.norm(tgt) if self.normalize_before else tgt
        tgt = tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x)))))
        return tgt if self.normalize_before else self.norm(tgt)


class MLP(nn.Module):
    """``num_layers`` linears with ReLU between them."""

    def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
        super().__init__()
        self.num_layers = num_layers
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < self.num_layers - 1:
                x = F.relu(x)
        return x


@TRANSFORMER_DECODER_REGISTRY.register()
class MultiScaleMaskedTransformerDecoder(nn.Module):
    _version = 2

    @configurable
    def __init__(
        self,
        in_channels,
        mask_classification=True,
        *,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dim_feedforward: int,
        dec_layers: int,
        pre_norm: bool,
        mask_dim: int,
        enforce_input_project: bool,
    ):
        """
        Args:
            in_channels: channels of the multi-scale features (the pixel decoder's conv_dim)
            mask_classification: must be True (mask classification is the only mode)
            num_classes: classes, without the "no object" class the classifier adds
            hidden_dim, nheads, dim_feedforward: transformer width, heads, feed-forward width
            num_queries: learnable queries
            dec_layers: decoder layers (the config's DEC_LAYERS - 1)
            pre_norm: pre-LayerNorm layers instead of post
            mask_dim: channels of the mask features
            enforce_input_project: a 1x1 input projection even when in_channels == hidden_dim
        """
        super().__init__()
        if not mask_classification:
            raise ValueError("MultiScaleMaskedTransformerDecoder only supports mask classification")
        self.mask_classification = mask_classification
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.num_heads = nheads
        self.num_layers = dec_layers
        self.transformer_self_attention_layers = nn.ModuleList()
        self.transformer_cross_attention_layers = nn.ModuleList()
        self.transformer_ffn_layers = nn.ModuleList()
        for _ in range(dec_layers):
            # dropout 0 whatever MODEL.MASK_FORMER.DROPOUT says, as the official decoder
            self.transformer_self_attention_layers.append(SelfAttentionLayer(hidden_dim, nheads, 0.0, pre_norm))
            self.transformer_cross_attention_layers.append(CrossAttentionLayer(hidden_dim, nheads, 0.0, pre_norm))
            self.transformer_ffn_layers.append(FFNLayer(hidden_dim, dim_feedforward, 0.0, pre_norm))
        self.decoder_norm = nn.LayerNorm(hidden_dim)

        self.num_queries = num_queries
        self.query_feat = nn.Embedding(num_queries, hidden_dim)  # content
        self.query_embed = nn.Embedding(num_queries, hidden_dim)  # position
        self.num_feature_levels = 3
        self.level_embed = nn.Embedding(self.num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(self.num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                proj = Conv2d(in_channels, hidden_dim, kernel_size=1)
                weight_init.c2_xavier_fill(proj)
                self.input_proj.append(proj)
            else:
                self.input_proj.append(nn.Sequential())
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    @classmethod
    def from_config(cls, cfg, in_channels, mask_classification):
        mf = cfg.MODEL.MASK_FORMER
        if mf.DEC_LAYERS < 1:
            raise ValueError(f"MODEL.MASK_FORMER.DEC_LAYERS must be >= 1, got {mf.DEC_LAYERS}")
        return {
            "in_channels": in_channels,
            "mask_classification": mask_classification,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "hidden_dim": mf.HIDDEN_DIM,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "nheads": mf.NHEADS,
            "dim_feedforward": mf.DIM_FEEDFORWARD,
            # the predictions on the bare learnable queries take the first loss: DEC_LAYERS losses in all
            "dec_layers": mf.DEC_LAYERS - 1,
            "pre_norm": mf.PRE_NORM,
            "enforce_input_project": mf.ENFORCE_INPUT_PROJ,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
        }

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # version-1 checkpoints call the content queries "static_query"
        version = local_metadata.get("version", None)
        if version is None or version < 2:
            renamed = False
            for k in [k for k in state_dict if k.startswith(prefix) and "static_query" in k]:
                state_dict[k.replace("static_query", "query_feat")] = state_dict.pop(k)
                renamed = True
            if renamed:
                logging.getLogger(__name__).warning(
                    f"{self.__class__.__name__}: renamed static_query -> query_feat (old checkpoint format)"
                )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, x, mask_features, mask=None):
        """
        Args:
            x: three (N, C, H_l, W_l) features, coarse to fine
            mask_features: (N, mask_dim, H, W)
            mask: unused (no padding mask, as the official decoder)
        Returns:
            {"pred_logits": (N, Q, K+1), "pred_masks": (N, Q, H, W),
             "aux_outputs": [dec_layers such dicts] in training, [] in inference}
        """
        if len(x) != self.num_feature_levels:
            raise ValueError(f"expected {self.num_feature_levels} feature levels, got {len(x)}")
        src, pos, sizes = [], [], []
        for i in range(self.num_feature_levels):
            sizes.append(x[i].shape[-2:])
            pos.append(self.pe_layer(x[i]).flatten(2).permute(2, 0, 1))  # (HW, N, C)
            level = self.input_proj[i](x[i]).flatten(2) + self.level_embed.weight[i][None, :, None]
            src.append(level.permute(2, 0, 1))
        n = src[0].shape[1]
        query_embed = self.query_embed.weight.unsqueeze(1).repeat(1, n, 1)  # (Q, N, C)
        output = self.query_feat.weight.unsqueeze(1).repeat(1, n, 1)

        # Training supervises every layer's full-resolution masks. Inference outputs only the last layer's: the
        # others only make the next layer's attention mask, here from the mask features resized once per scale
        # (bilinear resizing is linear, so this is the official resize of full-resolution mask logits up to
        # rounding) instead of a full-resolution product and resize per layer.
        resized = None if self.training else [
            F.interpolate(mask_features, size=s, mode="bilinear", align_corners=False) for s in sizes
        ]

        def predict(output, level, last):
            features = mask_features if resized is None or last else resized[level]
            return self.forward_prediction_heads(output, features, sizes[level])

        predictions_class, predictions_mask = [], []
        outputs_class, outputs_mask, attn_mask = predict(output, 0, self.num_layers == 0)
        predictions_class.append(outputs_class)
        predictions_mask.append(outputs_mask)
        for i in range(self.num_layers):
            level_index = i % self.num_feature_levels
            # a query that may attend nowhere attends everywhere instead (no all -inf softmax row); out of place,
            # not by boolean indexing, so that it exports to ONNX
            attn_mask = attn_mask & ~attn_mask.all(-1, keepdim=True)
            output = self.transformer_cross_attention_layers[i](
                output, src[level_index], memory_mask=attn_mask, memory_key_padding_mask=None,
                pos=pos[level_index], query_pos=query_embed,
            )
            output = self.transformer_self_attention_layers[i](output, query_pos=query_embed)
            output = self.transformer_ffn_layers[i](output)
            outputs_class, outputs_mask, attn_mask = predict(
                output, (i + 1) % self.num_feature_levels, i == self.num_layers - 1
            )
            predictions_class.append(outputs_class)
            predictions_mask.append(outputs_mask)
        return {
            "pred_logits": predictions_class[-1],
            "pred_masks": predictions_mask[-1],
            # in inference the earlier layers' masks are at the attended scales: not outputs
            "aux_outputs": self._set_aux_loss(predictions_class, predictions_mask) if self.training else [],
        }

    def forward_prediction_heads(self, output, mask_features, attn_mask_target_size):
        decoder_output = self.decoder_norm(output).transpose(0, 1)  # (N, Q, C)
        outputs_class = self.class_embed(decoder_output)
        mask_embed = self.mask_embed(decoder_output)
        outputs_mask = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
        # True = may not attend: where the predicted mask, resized to the next scale, is < 0.5
        attn_mask = outputs_mask
        if outputs_mask.shape[-2:] != attn_mask_target_size:
            attn_mask = F.interpolate(outputs_mask, size=attn_mask_target_size, mode="bilinear", align_corners=False)
        attn_mask = attn_mask.sigmoid().flatten(2) < 0.5  # (N, Q, HW)
        attn_mask = attn_mask.unsqueeze(1).repeat(1, self.num_heads, 1, 1).flatten(0, 1).detach()
        return outputs_class, outputs_mask, attn_mask

    @torch.jit.unused
    def _set_aux_loss(self, outputs_class, outputs_seg_masks):
        return [{"pred_logits": a, "pred_masks": b} for a, b in zip(outputs_class[:-1], outputs_seg_masks[:-1])]
