"""DINO's deformable transformer: encoder, two-stage "mixed query selection", decoder with box refinement.

Module and parameter names are the official ones (``transformer.encoder.layers.{i}.self_attn`` ...,
``transformer.decoder.layers.{i}.{cross_attn,self_attn,norm1..3}``, ``transformer.tgt_embed`` ...), so an
official checkpoint's ``transformer.*`` keys load as they are. Tensors are batch-first.

- Encoder layer (post-norm): ``src = norm1(src + MSDA(src + pos))``; ``src = norm2(src + FFN(src))``.
- Query selection: every valid encoder position proposes a box (centre of its cell, size 0.05 * 2^level,
  relative to the valid part of the image), refined by ``enc_out_bbox_embed``; the ``num_queries`` best by
  their highest class logit become the decoder's reference boxes (detached); the content queries are the
  learned ``tgt_embed``. Padded positions are never selected (an image padded in a batch selects as alone).
- Decoder layer (post-norm, official names): self-attention -> ``norm2``, deformable cross-attention with
  box references -> ``norm1``, FFN -> ``norm3``. The query position is recomputed each layer from the sine
  embedding of the reference box (``ref_point_head``), relative to the valid part of the image (the official
  code scales it by level 0's valid ratio first: identical without padding, not invariant to it).
- Look forward twice: each layer refines the reference from its un-normed output with the shared
  ``bbox_embed``; the next layer gets it detached, while the box reported for layer l is
  ``sigmoid(bbox_embed(norm(out_l)) + inverse_sigmoid(ref_l))`` with ``ref_l`` undetached (the meta-arch does that).
"""
import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import MSDeformAttn, MSDeformAttnTransformerEncoderLayer, init_deformable_transformer
from .denoising import dn_attention_mask
from .utils import MLP, inverse_sigmoid, sine_embed_boxes

__all__ = ["DeformableTransformer", "DeformableDecoderLayer", "encoder_proposals"]


class DeformableDecoderLayer(nn.Module):
    def __init__(self, d_model=256, d_ffn=2048, dropout=0.0, n_levels=4, n_heads=8, n_points=4):
        super().__init__()
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tgt, query_pos, reference_points, memory, spatial_shapes, level_start_index,
                memory_padding_mask, self_attn_mask=None):
        q = k = tgt + query_pos
        sa = self.self_attn(q, k, tgt, attn_mask=self_attn_mask, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(sa))
        ca = self.cross_attn(tgt + query_pos, reference_points, memory, spatial_shapes, level_start_index,
                             memory_padding_mask)
        tgt = self.norm1(tgt + self.dropout1(ca))
        ffn = self.linear2(self.dropout3(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(ffn))


class DeformableEncoder(nn.Module):
    def __init__(self, layer, num_layers):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    @staticmethod
    def reference_points(spatial_shapes, valid_ratios):
        """(N, S, L, 2): each position's cell centre, relative to the valid part of its level, seen on every level."""
        refs = []
        for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
            ref_y, ref_x = torch.meshgrid(
                torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=valid_ratios.device),
                torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=valid_ratios.device),
                indexing="ij",
            )
            ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
            ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
            refs.append(torch.stack([ref_x, ref_y], -1))
        return torch.cat(refs, 1)[:, :, None] * valid_ratios[:, None]

    def forward(self, src, pos, spatial_shapes, level_start_index, valid_ratios, padding_mask):
        reference_points = self.reference_points(spatial_shapes, valid_ratios)
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes, level_start_index, padding_mask)
        return src


class DeformableDecoder(nn.Module):
    """The decoder layers, ``norm`` (applied to each layer's output) and ``ref_point_head``. The shared
    box head is passed to ``forward`` (it is registered once, on the meta-architecture)."""

    def __init__(self, layer, num_layers, d_model):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)
        self.d_model = d_model

    def forward(self, tgt, ref_unsigmoid, memory, spatial_shapes, level_start_index, valid_ratios,
                memory_padding_mask, self_attn_mask, bbox_embed):
        """Returns (hs, references): ``hs[l]`` = norm(output of layer l) (num_layers entries), ``references``:
        the initial reference and each layer's refined one, sigmoid, undetached (num_layers + 1 entries)."""
        reference = ref_unsigmoid.sigmoid()
        references, hs = [reference], []
        output = tgt
        ratios = torch.cat([valid_ratios, valid_ratios], -1)[:, None]  # (N, 1, L, 4)
        for layer in self.layers:
            ref_input = reference[:, :, None] * ratios  # (N, Q, L, 4)
            # the official code embeds ref_input[:, :, 0] (the box scaled by level 0's valid ratio): the same without
            # padding, but then a padded image's queries would move; the box relative to the valid image does not
            query_pos = self.ref_point_head(sine_embed_boxes(reference, self.d_model).to(output.dtype))
            output = layer(output, query_pos, ref_input, memory, spatial_shapes, level_start_index,
                           memory_padding_mask, self_attn_mask)
            new_reference = (bbox_embed(output) + inverse_sigmoid(reference)).sigmoid()
            reference = new_reference.detach()
            references.append(new_reference)
            hs.append(self.norm(output))
        return hs, references


def encoder_proposals(memory, padding_mask, spatial_shapes):
    """Two-stage proposals: one box per encoder position, (cell centre, 0.05 * 2^level), relative to the valid
    part of the image, as unsigmoided (cx, cy, w, h). Padded positions and boxes with a value outside
    (0.01, 0.99) get +inf and zero memory. Returns (memory with those zeroed, proposals (N, S, 4))."""
    n = memory.shape[0]
    proposals, start = [], 0
    for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
        mask = padding_mask[:, start : start + h * w].view(n, h, w)
        valid_h = (~mask[:, :, 0]).sum(1)
        valid_w = (~mask[:, 0, :]).sum(1)
        grid_y, grid_x = torch.meshgrid(
            torch.linspace(0, h - 1, h, dtype=torch.float32, device=memory.device),
            torch.linspace(0, w - 1, w, dtype=torch.float32, device=memory.device),
            indexing="ij",
        )
        grid = torch.stack([grid_x, grid_y], -1)  # (h, w, 2)
        scale = torch.stack([valid_w, valid_h], -1).view(n, 1, 1, 2).to(torch.float32)
        grid = (grid[None] + 0.5) / scale
        wh = torch.full_like(grid, 0.05 * (2.0**lvl))
        proposals.append(torch.cat([grid, wh], -1).view(n, -1, 4))
        start += h * w
    proposals = torch.cat(proposals, 1)
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
    proposals = torch.log(proposals / (1 - proposals))
    proposals = proposals.masked_fill(padding_mask[..., None], float("inf")).masked_fill(~valid, float("inf"))
    memory = memory.masked_fill(padding_mask[..., None], 0.0).masked_fill(~valid, 0.0)
    return memory, proposals


class DeformableTransformer(nn.Module):
    """Encoder + query selection + decoder (official ``transformer.*`` names). The class and box heads of the
    encoder output (``enc_out_class_embed``, ``enc_out_bbox_embed``) are set by the meta-architecture, as
    separate copies of the decoder's heads."""

    def __init__(self, d_model=256, nhead=8, num_encoder_layers=6, num_decoder_layers=6, dim_feedforward=2048,
                 dropout=0.0, num_feature_levels=4, enc_n_points=4, dec_n_points=4, num_queries=900):
        super().__init__()
        self.d_model = d_model
        self.num_queries = num_queries
        self.num_feature_levels = num_feature_levels
        enc = MSDeformAttnTransformerEncoderLayer(
            d_model, dim_feedforward, dropout, num_feature_levels, nhead, enc_n_points
        )
        self.encoder = DeformableEncoder(enc, num_encoder_layers)
        dec = DeformableDecoderLayer(d_model, dim_feedforward, dropout, num_feature_levels, nhead, dec_n_points)
        self.decoder = DeformableDecoder(dec, num_decoder_layers, d_model)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self.tgt_embed = nn.Embedding(num_queries, d_model)
        self.enc_output = nn.Linear(d_model, d_model)
        self.enc_output_norm = nn.LayerNorm(d_model)
        self._reset_parameters()

    def _reset_parameters(self):
        init_deformable_transformer(self)
        nn.init.normal_(self.level_embed)
        nn.init.normal_(self.tgt_embed.weight)

    @staticmethod
    def valid_ratios(masks):
        """(N, L, 2): the valid fraction (x, y) of each level, from its first row and column."""
        ratios = []
        for m in masks:
            h, w = m.shape[-2:]
            valid_h = (~m[:, :, 0]).sum(1).to(torch.float32)
            valid_w = (~m[:, 0, :]).sum(1).to(torch.float32)
            ratios.append(torch.stack([valid_w / w, valid_h / h], -1))
        return torch.stack(ratios, 1)

    def forward(self, srcs, masks, pos_embeds, bbox_embed, dn_label=None, dn_box=None, dn_groups=1):
        """
        Args:
            srcs, masks, pos_embeds: per level (N, C, H, W), (N, H, W) bool (True: padding), (N, C, H, W).
            bbox_embed: the decoder's (shared) box head.
            dn_label, dn_box: (N, P, C) denoising content queries and (N, P, 4) unsigmoided boxes, or None;
            dn_groups: how many denoising groups the P queries form (see ``denoising.dn_attention_mask``).
        Returns:
            hs (list of (N, P+Q, C)), references (list of (N, P+Q, 4)), and the selected encoder outputs
            (N, Q, C) / their boxes (N, Q, 4, sigmoid), undetached, for the encoder loss.
        """
        src_flat, mask_flat, pos_flat, shapes = [], [], [], []
        for lvl, (src, mask, pos) in enumerate(zip(srcs, masks, pos_embeds)):
            shapes.append(src.shape[-2:])
            src_flat.append(src.flatten(2).transpose(1, 2))
            mask_flat.append(mask.flatten(1))
            pos_flat.append(pos.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1))
        src_flat, mask_flat, pos_flat = torch.cat(src_flat, 1), torch.cat(mask_flat, 1), torch.cat(pos_flat, 1)
        spatial_shapes = torch.as_tensor([tuple(s) for s in shapes], dtype=torch.long, device=src_flat.device)
        level_start_index = torch.cat([spatial_shapes.new_zeros(1), (spatial_shapes[:, 0] * spatial_shapes[:, 1]).cumsum(0)[:-1]])
        valid_ratios = self.valid_ratios(masks)

        memory = self.encoder(src_flat, pos_flat, spatial_shapes, level_start_index, valid_ratios, mask_flat)

        # query selection
        out_memory, proposals = encoder_proposals(memory, mask_flat, spatial_shapes)
        out_memory = self.enc_output_norm(self.enc_output(out_memory))
        enc_logits = self.enc_out_class_embed(out_memory)
        enc_coords = self.enc_out_bbox_embed(out_memory) + proposals  # unsigmoided
        scores = enc_logits.max(-1)[0].masked_fill(mask_flat, float("-inf"))
        k = min(self.num_queries, scores.shape[1])
        topk = scores.topk(k, dim=1)[1]
        ref_undetached = torch.gather(enc_coords, 1, topk[..., None].expand(-1, -1, 4))
        enc_selected = torch.gather(out_memory, 1, topk[..., None].expand(-1, -1, self.d_model))
        ref = ref_undetached.detach()
        tgt = self.tgt_embed.weight[:k][None].expand(memory.shape[0], -1, -1)
        attn_mask = None
        if dn_label is not None and dn_label.shape[1] > 0:
            ref = torch.cat([dn_box, ref], 1)
            tgt = torch.cat([dn_label, tgt], 1)
            attn_mask = dn_attention_mask(dn_label.shape[1], dn_groups, k, tgt.device)
        hs, references = self.decoder(tgt, ref, memory, spatial_shapes, level_start_index, valid_ratios,
                                      mask_flat, attn_mask, bbox_embed)
        return hs, references, enc_selected, ref_undetached.sigmoid()
