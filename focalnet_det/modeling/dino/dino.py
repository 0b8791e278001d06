"""``DINO``: the meta-architecture (``MODEL.META_ARCHITECTURE: "DINO"``), keys under ``MODEL.DINO``.

Images are normalised and given to the backbone; its ``OUT_FEATURES`` (FocalNet: res3-res5 for 4 scales,
res2-res5 for 5) are projected to ``HIDDEN_DIM`` (1x1 conv + GroupNorm 32) and one more level is added by a
3x3 stride-2 conv of the last *raw* backbone map (+ GroupNorm), as many times as ``NUM_FEATURE_LEVELS`` asks.
Then the deformable transformer (``transformer.py``), the shared class / box heads on every decoder layer,
and at inference the top-k post-processing (``postprocess.py``); in training the contrastive denoising
queries (``denoising.py``) and the losses (``criterion.py``).

Module names are those of the official DINO (``transformer``, ``label_enc``, ``input_proj``, ``bbox_embed``,
``class_embed``), except that the backbone sits at ``backbone.`` (official: ``backbone.0.``) and the decoder's
class and box heads, shared by all layers, are registered once (official: 12 aliases each);
``focalnet_det.checkpoint.dino`` maps an official file onto it.

Padding: images of different sizes in a batch go through the backbone by size group, unpadded, and their
features are zero-padded afterwards; the GroupNorms see only the valid part, the position encoding,
proposals, reference points and attention masks are relative to it. An image thus gets the same detections
in a padded batch as alone, and with one image (the official evaluation) nothing changes.
"""
import copy
import math

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone

from ...errors import UserError
from .criterion import SetCriterion
from .denoising import prepare_denoising
from .matcher import HungarianMatcher
from .postprocess import dino_postprocess
from .transformer import DeformableTransformer
from .utils import MLP, PositionEmbeddingSineHW, box_xyxy_to_cxcywh, inverse_sigmoid, masked_group_norm

__all__ = ["DINO", "dataset_logit_ids"]


def dataset_logit_ids(cfg):
    """The raw dataset category id of each contiguous class (logit index = raw id), from the metadata of the
    first training (else test) dataset, or None unless ``MODEL.DINO.LOGITS_BY_DATASET_ID``."""
    d = cfg.MODEL.DINO
    if not d.LOGITS_BY_DATASET_ID:
        return None
    names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    if not names:
        raise UserError("MODEL.DINO.LOGITS_BY_DATASET_ID needs a dataset in DATASETS.TRAIN or DATASETS.TEST")
    id_map = MetadataCatalog.get(names[0]).get("thing_dataset_id_to_contiguous_id", None)
    if not id_map:
        raise UserError(f"MODEL.DINO.LOGITS_BY_DATASET_ID: dataset {names[0]!r} has no "
                        f"thing_dataset_id_to_contiguous_id in its metadata")
    ids = [raw for raw, _ in sorted(id_map.items(), key=lambda kv: kv[1])]
    if max(ids) >= d.NUM_CLASSES:
        raise UserError(f"MODEL.DINO.NUM_CLASSES {d.NUM_CLASSES} is too small for the category ids of "
                        f"{names[0]!r} (largest {max(ids)}) with MODEL.DINO.LOGITS_BY_DATASET_ID")
    return ids


@META_ARCH_REGISTRY.register()
class DINO(nn.Module):
    @configurable
    def __init__(
        self,
        *,
        backbone,
        num_classes,
        hidden_dim=256,
        nheads=8,
        enc_layers=6,
        dec_layers=6,
        dim_feedforward=2048,
        dropout=0.0,
        num_feature_levels=4,
        enc_n_points=4,
        dec_n_points=4,
        num_queries=900,
        dn_number=100,
        dn_label_noise_ratio=0.5,
        dn_box_noise_scale=0.4,
        pos_temperature=20.0,
        criterion=None,
        num_select=300,
        nms_iou_threshold=-1.0,
        dataset_ids=None,
        pixel_mean=(123.675, 116.28, 103.53),
        pixel_std=(58.395, 57.12, 57.375),
    ):
        super().__init__()
        self.backbone = backbone
        shapes = backbone.output_shape()
        self.in_features = sorted(shapes, key=lambda f: shapes[f].stride)
        channels = [shapes[f].channels for f in self.in_features]
        if num_feature_levels < len(channels):
            raise UserError(f"MODEL.DINO.NUM_FEATURE_LEVELS {num_feature_levels} is smaller than the number of "
                            f"backbone outputs {self.in_features} (MODEL.FOCALNET.OUT_FEATURES)")
        self.num_classes = num_classes
        self.num_feature_levels = num_feature_levels
        self.num_queries = num_queries
        self.dn_number = dn_number
        self.dn_label_noise_ratio = dn_label_noise_ratio
        self.dn_box_noise_scale = dn_box_noise_scale
        self.num_select = num_select
        self.nms_iou_threshold = nms_iou_threshold
        self.criterion = criterion

        self.transformer = DeformableTransformer(
            hidden_dim, nheads, enc_layers, dec_layers, dim_feedforward, dropout, num_feature_levels,
            enc_n_points, dec_n_points, num_queries,
        )
        self.label_enc = nn.Embedding(num_classes + 1, hidden_dim)
        proj = [nn.Sequential(nn.Conv2d(c, hidden_dim, 1), nn.GroupNorm(32, hidden_dim)) for c in channels]
        in_c = channels[-1]
        for _ in range(num_feature_levels - len(channels)):
            proj.append(nn.Sequential(nn.Conv2d(in_c, hidden_dim, 3, stride=2, padding=1), nn.GroupNorm(32, hidden_dim)))
            in_c = hidden_dim
        self.input_proj = nn.ModuleList(proj)
        for p in self.input_proj:
            nn.init.xavier_uniform_(p[0].weight, gain=1)
            nn.init.zeros_(p[0].bias)
        self.position_embedding = PositionEmbeddingSineHW(hidden_dim // 2, pos_temperature, pos_temperature)

        # heads: one class Linear and one box MLP shared by the decoder layers; separate copies for the encoder
        self.class_embed = nn.Linear(hidden_dim, num_classes)
        nn.init.constant_(self.class_embed.bias, -math.log((1 - 0.01) / 0.01))
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        nn.init.zeros_(self.bbox_embed.layers[-1].weight)
        nn.init.zeros_(self.bbox_embed.layers[-1].bias)
        self.transformer.enc_out_bbox_embed = copy.deepcopy(self.bbox_embed)
        self.transformer.enc_out_class_embed = copy.deepcopy(self.class_embed)

        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        # contiguous class <-> logit index, when the logits are indexed by raw dataset ids (COCO: 91)
        self.dataset_ids = dataset_ids
        if dataset_ids is not None:
            logit_to_class = torch.full((num_classes,), -1, dtype=torch.long)
            logit_to_class[torch.as_tensor(dataset_ids)] = torch.arange(len(dataset_ids))
            self.register_buffer("class_to_logit", torch.as_tensor(dataset_ids, dtype=torch.long), False)
            self.register_buffer("logit_to_class", logit_to_class, False)
        else:
            self.class_to_logit = self.logit_to_class = None

    @classmethod
    def from_config(cls, cfg):
        d = cfg.MODEL.DINO
        matcher = HungarianMatcher(d.COST_CLASS, d.COST_BBOX, d.COST_GIOU, d.FOCAL_ALPHA, d.FOCAL_GAMMA)
        criterion = SetCriterion(d.NUM_CLASSES, matcher, d.CLASS_WEIGHT, d.BBOX_WEIGHT, d.GIOU_WEIGHT,
                                 d.FOCAL_ALPHA, d.FOCAL_GAMMA)
        if d.HIDDEN_DIM % 32 != 0:
            raise UserError(f"MODEL.DINO.HIDDEN_DIM must be a multiple of 32 (GroupNorm 32), got {d.HIDDEN_DIM}")
        return {
            "backbone": build_backbone(cfg),
            "num_classes": d.NUM_CLASSES,
            "hidden_dim": d.HIDDEN_DIM,
            "nheads": d.NHEADS,
            "enc_layers": d.ENC_LAYERS,
            "dec_layers": d.DEC_LAYERS,
            "dim_feedforward": d.DIM_FEEDFORWARD,
            "dropout": d.DROPOUT,
            "num_feature_levels": d.NUM_FEATURE_LEVELS,
            "enc_n_points": d.ENC_N_POINTS,
            "dec_n_points": d.DEC_N_POINTS,
            "num_queries": d.NUM_QUERIES,
            "dn_number": d.DN_NUMBER,
            "dn_label_noise_ratio": d.DN_LABEL_NOISE_RATIO,
            "dn_box_noise_scale": d.DN_BOX_NOISE_SCALE,
            "pos_temperature": d.POS_TEMPERATURE,
            "criterion": criterion,
            "num_select": d.NUM_SELECT,
            "nms_iou_threshold": d.NMS_IOU_THRESHOLD,
            "dataset_ids": dataset_logit_ids(cfg),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    # ---------------------------------------------------------------- features
    def backbone_features(self, images):
        """Backbone outputs of the unpadded images, run by groups of equal size, zero-padded into one batch.
        Returns (list per level of (N, C, H, W), list per level of per-image valid (h, w))."""
        sizes = [tuple(im.shape[-2:]) for im in images]
        groups = {}
        for i, s in enumerate(sizes):
            groups.setdefault(s, []).append(i)
        if len(groups) == 1:
            out = self.backbone(torch.stack(images))
            feats = [out[f] for f in self.in_features]
            return feats, [[tuple(f.shape[-2:])] * len(images) for f in feats]
        per_group = {s: self.backbone(torch.stack([images[i] for i in idx])) for s, idx in groups.items()}
        feats, valid = [], []
        for f in self.in_features:
            maps = {s: per_group[s][f] for s in groups}
            h = max(m.shape[-2] for m in maps.values())
            w = max(m.shape[-1] for m in maps.values())
            any_map = next(iter(maps.values()))
            batch = any_map.new_zeros(len(images), any_map.shape[1], h, w)
            sizes_l = [None] * len(images)
            for s, idx in groups.items():
                m = maps[s]
                batch[idx, :, : m.shape[-2], : m.shape[-1]] = m
                for i in idx:
                    sizes_l[i] = tuple(m.shape[-2:])
            feats.append(batch)
            valid.append(sizes_l)
        return feats, valid

    @staticmethod
    def _mask(x, valid):
        mask = torch.ones(x.shape[0], x.shape[-2], x.shape[-1], dtype=torch.bool, device=x.device)
        for i, (h, w) in enumerate(valid):
            mask[i, :h, :w] = False
        return mask

    def multiscale_inputs(self, images):
        """The transformer's inputs: per level the projected map, its padding mask and position encoding."""
        feats, valid = self.backbone_features(images)
        srcs, masks = [], []
        for lvl, proj in enumerate(self.input_proj):
            if lvl < len(feats):
                src, sizes = proj[0](feats[lvl]), valid[lvl]
            else:  # extra level: from the last raw backbone map, then from the previous extra level
                prev = feats[-1] if lvl == len(feats) else srcs[-1]
                src, sizes = proj[0](prev), [((h + 1) // 2, (w + 1) // 2) for h, w in valid[-1]]
                valid.append(sizes)
            srcs.append(masked_group_norm(proj[1], src, sizes))
            masks.append(self._mask(src, sizes))
        pos = [self.position_embedding(m).to(s.dtype) for s, m in zip(srcs, masks)]
        return srcs, masks, pos

    # ---------------------------------------------------------------- forward
    def prepare_targets(self, batched_inputs, images):
        targets = []
        for x, im in zip(batched_inputs, images):
            inst = x["instances"].to(self.device)
            h, w = im.shape[-2:]
            boxes = inst.gt_boxes.tensor / torch.as_tensor([w, h, w, h], dtype=torch.float32, device=self.device)
            labels = inst.gt_classes.long()
            if self.class_to_logit is not None:
                labels = self.class_to_logit[labels]
            targets.append({"labels": labels, "boxes": box_xyxy_to_cxcywh(boxes)})
        return targets

    def forward(self, batched_inputs):
        images = [(x["image"].to(self.device).float() - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        srcs, masks, pos = self.multiscale_inputs(images)

        dn_label = dn_box = None
        dn_meta = {"pad_size": 0, "num_groups": 0}
        targets = None
        if self.training:
            targets = self.prepare_targets(batched_inputs, images)
            dn_label, dn_box, dn_meta = prepare_denoising(
                targets, self.label_enc, self.num_classes, self.dn_number, self.dn_label_noise_ratio,
                self.dn_box_noise_scale,
            )
        hs, references, enc_selected, enc_boxes = self.transformer(
            srcs, masks, pos, self.bbox_embed, dn_label, dn_box, dn_meta["num_groups"]
        )
        # every parameter takes part in the loss, with or without denoising queries (DDP)
        hs[0] = hs[0] + self.label_enc.weight[0, 0] * 0.0
        logits = [self.class_embed(h) for h in hs]
        boxes = [(self.bbox_embed(h) + inverse_sigmoid(r)).sigmoid() for h, r in zip(hs, references[:-1])]
        pad = dn_meta["pad_size"]
        outputs = {"pred_logits": logits[-1][:, pad:], "pred_boxes": boxes[-1][:, pad:]}
        if not self.training:
            sizes = [(x.get("height", im.shape[-2]), x.get("width", im.shape[-1]))
                     for x, im in zip(batched_inputs, images)]
            results = dino_postprocess(outputs["pred_logits"], outputs["pred_boxes"], sizes, self.num_select,
                                       self.logit_to_class, self.nms_iou_threshold)
            return [{"instances": r} for r in results]
        outputs["aux_outputs"] = [{"pred_logits": l[:, pad:], "pred_boxes": b[:, pad:]}
                                  for l, b in zip(logits[:-1], boxes[:-1])]
        outputs["interm_outputs"] = {"pred_logits": self.transformer.enc_out_class_embed(enc_selected),
                                     "pred_boxes": enc_boxes}
        if pad:
            outputs["dn_outputs"] = [{"pred_logits": l[:, :pad], "pred_boxes": b[:, :pad]}
                                     for l, b in zip(logits, boxes)]
        return self.criterion(outputs, targets, dn_meta)

    def forward_raw(self, images):
        """The official model's outputs for normalised images (list of (3, H, W)), inference mode:
        ``pred_logits`` (N, Q, K) and ``pred_boxes`` (N, Q, 4), for comparisons and export."""
        srcs, masks, pos = self.multiscale_inputs(images)
        hs, references, _, _ = self.transformer(srcs, masks, pos, self.bbox_embed)
        return {"pred_logits": self.class_embed(hs[-1]),
                "pred_boxes": (self.bbox_embed(hs[-1]) + inverse_sigmoid(references[-2])).sigmoid()}
