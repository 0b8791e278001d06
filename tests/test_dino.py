"""DINO (focalnet_det/modeling/dino): the shared deformable attention, matcher, denoising, post-processing,
official checkpoints loading strictly, training, padding and bf16 behaviour. Tiny widths: a few seconds each."""
import argparse
import importlib.util
import itertools
import json
import logging
import os

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from focalnet_det import add_focalnet_config
from focalnet_det.checkpoint import FocalNetCheckpointer
from focalnet_det.errors import UserError
from focalnet_det.modeling.dino import (
    HungarianMatcher,
    dino_postprocess,
    dn_attention_mask,
    prepare_denoising,
)
from focalnet_det.modeling.dino.utils import box_cxcywh_to_xyxy, inverse_sigmoid
from focalnet_det.modeling.layers import MSDeformAttn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_cfg(**dino):
    cfg = get_cfg()
    add_focalnet_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "DINO"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = "build_focalnet_backbone"
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
    cfg.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]
    f = cfg.MODEL.FOCALNET
    f.EMBED_DIM, f.DEPTHS, f.FOCAL_LEVELS, f.FOCAL_WINDOWS = 16, [1, 1, 1, 1], [2] * 4, [3] * 4
    f.OUT_FEATURES, f.DROP_PATH_RATE = ["res3", "res4", "res5"], 0.0
    d = cfg.MODEL.DINO
    d.HIDDEN_DIM, d.NHEADS, d.ENC_LAYERS, d.DEC_LAYERS, d.DIM_FEEDFORWARD = 32, 4, 1, 2, 64
    d.NUM_QUERIES, d.NUM_CLASSES, d.DN_NUMBER, d.NUM_SELECT = 30, 5, 20, 50
    for k, v in dino.items():
        d[k] = v
    return cfg


def randomize(model, seed=0, scale=0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def sample(h, w, n, num_classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = {"image": torch.rand(3, h, w, generator=g) * 255, "height": h, "width": w}
    inst = Instances((h, w))
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
    wh = (torch.rand(n, 2, generator=g) * 0.3 + 0.1) * torch.tensor([w, h])
    inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], 1))
    inst.gt_classes = torch.randint(0, num_classes, (n,), generator=g)
    x["instances"] = inst
    return x


def official_layout(model):
    """The model's state dict under the official DINO names: ``backbone.0.*`` and the shared heads under
    ``{,transformer.decoder.}{class,bbox}_embed.{i}.*`` (one alias per decoder layer, twice)."""
    layers = len(model.transformer.decoder.layers)
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("backbone."):
            out["backbone.0." + k[len("backbone."):]] = v.clone()
        elif k.startswith(("class_embed.", "bbox_embed.")):
            head, rest = k.split(".", 1)
            for prefix, i in itertools.product(("", "transformer.decoder."), range(layers)):
                out[f"{prefix}{head}.{i}.{rest}"] = v  # aliases: one tensor, as torch.save writes shared modules
        else:
            out[k] = v.clone()
    return out


# ------------------------------------------------------------------ structure
def test_one_deformable_attention_serves_mask2former_and_dino():
    from focalnet_det.modeling.mask2former import pixel_decoder

    from focalnet_det.modeling.layers import MSDeformAttnTransformerEncoderLayer

    model = build_model(tiny_cfg())
    dino_attn = [m for m in model.modules() if type(m).__name__.endswith("DeformAttn")]
    assert dino_attn and all(type(m) is MSDeformAttn for m in dino_attn)
    # the encoder layer too: DINO's encoder and Mask2Former's pixel decoder stack the same one
    encoder_layers = [m for m in model.modules() if "EncoderLayer" in type(m).__name__]
    assert encoder_layers and all(type(m) is MSDeformAttnTransformerEncoderLayer for m in encoder_layers)
    assert pixel_decoder.MSDeformAttnTransformerEncoderLayer is MSDeformAttnTransformerEncoderLayer


def test_official_l_fl4_5scale_parameter_count_and_key_count():
    """FocalNet-L FL4 DINO-5scale: 228.1 M parameters (dino_spec.md §8) and the official file's 869 keys."""
    cfg = get_cfg()
    add_focalnet_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs/COCO-Detection/dino_focalnet_large_fl4_5scale_12ep.yaml"))
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        model = build_model(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert round(n / 1e6, 1) == 228.1, n
    official = official_layout(model)
    assert len(official) == 869
    assert sum(k.startswith("backbone.0.") for k in official) == 504
    assert official["backbone.0.layers.0.blocks.0.modulation.f.weight"].shape == (389, 192)
    assert official["transformer.level_embed"].shape == (5, 256)
    assert official["label_enc.weight"].shape == (92, 256)
    assert official["input_proj.4.0.weight"].shape == (256, 1536, 3, 3)


# ------------------------------------------------------------------ matcher
def naive_cost(logits, boxes, labels, tboxes, alpha=0.25, gamma=2.0):
    """The matching cost written out pair by pair (float64)."""
    q, n = logits.shape[0], len(labels)
    c = np.zeros((q, n))
    for i in range(q):
        for j in range(n):
            p = 1 / (1 + np.exp(-float(logits[i, labels[j]])))
            pos = alpha * (1 - p) ** gamma * -np.log(p + 1e-8)
            neg = (1 - alpha) * p**gamma * -np.log(1 - p + 1e-8)
            l1 = float((boxes[i] - tboxes[j]).abs().sum())
            a, b = box_cxcywh_to_xyxy(boxes[i]).tolist(), box_cxcywh_to_xyxy(tboxes[j]).tolist()
            iw, ih = max(0, min(a[2], b[2]) - max(a[0], b[0])), max(0, min(a[3], b[3]) - max(a[1], b[1]))
            inter = iw * ih
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
            giou = inter / union - (hull - union) / hull
            c[i, j] = 2 * (pos - neg) + 5 * l1 - 2 * giou
    return c


def test_matcher_finds_the_optimal_assignment():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 12, 7, generator=g) * 2
    boxes = torch.cat([torch.rand(2, 12, 2, generator=g) * 0.6 + 0.2, torch.rand(2, 12, 2, generator=g) * 0.3 + 0.05], -1)
    targets = [
        {"labels": torch.tensor([1, 4, 4, 0, 6]), "boxes": torch.rand(5, 4, generator=g) * 0.3 + 0.2},
        {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)},
    ]
    indices = HungarianMatcher()(logits, boxes, targets)
    c = naive_cost(logits[0], boxes[0], targets[0]["labels"], targets[0]["boxes"])
    rows, cols = linear_sum_assignment(c)
    q, t = indices[0]
    assert sorted(t.tolist()) == list(range(5)) and len(set(q.tolist())) == 5
    assert c[q.numpy(), t.numpy()].sum() == pytest.approx(c[rows, cols].sum(), rel=1e-5)
    assert len(indices[1][0]) == 0 and len(indices[1][1]) == 0


# ------------------------------------------------------------------ denoising
def test_denoising_queries_and_attention_mask():
    torch.manual_seed(0)
    label_enc = torch.nn.Embedding(6, 8)
    targets = [
        {"labels": torch.tensor([1, 2, 3]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.3, 0.3, 0.1, 0.1], [0.7, 0.6, 0.3, 0.2]])},
        {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)},
        {"labels": torch.tensor([4]), "boxes": torch.tensor([[0.4, 0.5, 0.2, 0.2]])},
    ]
    lab, box, meta = prepare_denoising(targets, label_enc, 5, dn_number=10, label_noise_ratio=0.0, box_noise_scale=0.0)
    groups, max_gt = 10 // 3, 3
    assert meta == {"pad_size": 2 * max_gt * groups, "num_groups": groups, "max_gt": max_gt}
    for i, t in enumerate(targets):
        for block in range(2 * groups):
            for slot in range(max_gt):
                q = block * max_gt + slot
                if slot < len(t["labels"]):  # exact copies without noise
                    assert torch.equal(lab[i, q], label_enc.weight[t["labels"][slot]])
                    assert torch.allclose(box[i, q], inverse_sigmoid(t["boxes"][slot]))
                else:  # unused slot: zero content, box sigmoid(0) = 0.5
                    assert not lab[i, q].any() and not box[i, q].any()

    # box noise: positives move each corner by less than half a side, negatives by at least that
    _, box, _ = prepare_denoising(targets, label_enc, 5, dn_number=10, label_noise_ratio=0.0, box_noise_scale=1.0)
    gt = box_cxcywh_to_xyxy(targets[0]["boxes"])
    half = targets[0]["boxes"][:, 2:].repeat(1, 2) / 2
    cxcywh = box[0].sigmoid().view(2 * groups, max_gt, 4)
    noisy = box_cxcywh_to_xyxy(cxcywh)
    move = (noisy - gt).abs() / half
    # corners that crossed (w or h <= 0: clamped by inverse_sigmoid) or hit the image border are not measurable
    exact = (cxcywh[..., 2:] > 2e-3).all(-1, keepdim=True) & (noisy > 1e-3) & (noisy < 1 - 1e-3)
    assert (move[0::2] < 1 + 1e-3).all()
    assert (move[1::2] > 1 - 1e-3)[exact[1::2]].all() and exact[1::2].float().mean() > 0.25

    # the mask, entry by entry
    pad, nq = meta["pad_size"], 4
    mask = dn_attention_mask(pad, groups, nq)
    size = 2 * max_gt
    for r in range(pad + nq):
        for c in range(pad + nq):
            if r >= pad:  # matching query: sees matching queries only
                expected = c < pad
            else:  # denoising query: its own group and the matching queries
                expected = c < pad and r // size != c // size
            assert bool(mask[r, c]) == expected

    # no ground truth in the batch: no denoising queries
    empty = [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}]
    lab, box, meta = prepare_denoising(empty, label_enc, 5)
    assert lab is None and meta["pad_size"] == 0


def test_matching_queries_never_see_denoising_queries():
    """Decoder outputs of the matching queries are the same with and without denoising queries."""
    torch.manual_seed(0)
    model = randomize(build_model(tiny_cfg())).eval()
    images = [(sample(64, 96, 2)["image"] - model.pixel_mean) / model.pixel_std]
    srcs, masks, pos = model.multiscale_inputs(images)
    targets = [{"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.3, 0.3, 0.1, 0.1]])}]
    lab, box, meta = prepare_denoising(targets, model.label_enc, 5, 20, 0.5, 0.4)
    with torch.no_grad():
        hs_dn, ref_dn, _, _ = model.transformer(srcs, masks, pos, model.bbox_embed, lab, box, meta["num_groups"])
        hs, ref, _, _ = model.transformer(srcs, masks, pos, model.bbox_embed)
    pad = meta["pad_size"]
    for a, b in zip(hs_dn, hs):
        torch.testing.assert_close(a[:, pad:], b, atol=1e-5, rtol=1e-5)
    # and the denoising groups do not see each other: dropping all but the first group changes nothing for it
    size = 2 * meta["max_gt"]
    with torch.no_grad():
        hs_one, _, _, _ = model.transformer(srcs, masks, pos, model.bbox_embed, lab[:, :size], box[:, :size], 1)
    torch.testing.assert_close(hs_one[-1][:, :size], hs_dn[-1][:, :size], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ post-processing
def test_postprocess_takes_the_top_k_over_all_logits_before_the_id_mapping():
    q, k = 4, 6  # logits are raw dataset ids 0..5; ids 0 and 3 are no class
    ids = [1, 2, 4, 5]
    logit_to_class = torch.full((k,), -1, dtype=torch.long)
    logit_to_class[torch.tensor(ids)] = torch.arange(4)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, q, k, generator=g)
    logits[0, 2, 3] = 9.0  # the best pair has an unused id: it takes a top-k place, then is dropped
    logits[0, 1, 0] = 8.0
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.25, 0.5, 0.5, 0.5], [0.6, 0.4, 0.2, 0.4], [0.5, 0.5, 1.2, 0.2]]])
    (res,) = dino_postprocess(logits, boxes, [(100, 200)], num_select=5, logit_to_class=logit_to_class)
    # brute force: all (query, logit) pairs sorted by score, the first 5, then the mapping
    pairs = sorted(((float(logits[0, i, j].sigmoid()), i, j) for i in range(q) for j in range(k)), reverse=True)[:5]
    kept = [(s, i, j) for s, i, j in pairs if j in ids]
    assert len(res) == len(kept) < 5  # dropped after the top-k, not replaced
    assert res.scores.tolist() == pytest.approx([s for s, _, _ in kept])
    assert res.pred_classes.tolist() == [ids.index(j) for _, _, j in kept]
    for (s, i, j), b in zip(kept, res.pred_boxes.tensor):
        cx, cy, w, h = boxes[0, i].tolist()
        assert b.tolist() == pytest.approx([(cx - w / 2) * 200, (cy - h / 2) * 100, (cx + w / 2) * 200, (cy + h / 2) * 100])
    # boxes are not clipped (query 3 reaches outside the image), as the official post-processor
    (res_all,) = dino_postprocess(logits, boxes, [(100, 200)], num_select=24)
    assert float(res_all.pred_boxes.tensor[:, 0].min()) < 0


def test_ground_truth_as_predictions_scores_box_ap_100(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.evaluation import COCOEvaluator

    name = "tiny_shapes_val"
    dicts = DatasetCatalog.get(name)[:12]
    meta = MetadataCatalog.get(name)
    id_map = meta.thing_dataset_id_to_contiguous_id
    logit_to_class = torch.full((4,), -1, dtype=torch.long)  # logits by raw id 1..3
    for raw, c in id_map.items():
        logit_to_class[raw] = c
    inv = {c: raw for raw, c in id_map.items()}
    evaluator = COCOEvaluator(name, output_dir=str(tmp_path), use_fast_impl=False)
    evaluator._coco_api.dataset["images"] = [im for im in evaluator._coco_api.dataset["images"]
                                              if im["id"] in {d["image_id"] for d in dicts}]
    evaluator._coco_api.createIndex()
    evaluator.reset()
    for d in dicts:
        h, w = d["height"], d["width"]
        n = len(d["annotations"])
        logits = torch.full((1, 10, 4), -10.0)
        boxes = torch.full((1, 10, 4), 0.5)
        for i, a in enumerate(d["annotations"]):
            x, y, bw, bh = a["bbox"]  # XYWH_ABS
            boxes[0, i] = torch.tensor([(x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h])
            logits[0, i, inv[a["category_id"]]] = 10.0
        (inst,) = dino_postprocess(logits, boxes, [(h, w)], num_select=20, logit_to_class=logit_to_class)
        assert (inst.scores > 0.99).sum() == n
        evaluator.process([{"image_id": d["image_id"], "height": h, "width": w}], [{"instances": inst}])
    res = evaluator.evaluate()
    assert res["bbox"]["AP"] == pytest.approx(100.0, abs=1e-6)


# ------------------------------------------------------------------ official checkpoints
def test_official_checkpoint_loads_strictly_and_gives_the_same_outputs(tmp_path, caplog):
    torch.manual_seed(0)
    source = randomize(build_model(tiny_cfg()), seed=1).eval()
    official = official_layout(source)
    path = str(tmp_path / "checkpoint0011.pth")
    torch.save({"model": official, "args": argparse.Namespace(dn_box_noise_scale=0.4), "epoch": 11}, path)

    model = build_model(tiny_cfg()).eval()
    incompatible = FocalNetCheckpointer(model).load(path)  # returns the checkpoint's remaining entries
    assert incompatible is not None
    for k, v in source.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    x = [sample(64, 96, 0)]
    with torch.no_grad():
        a, b = source(x)[0]["instances"], model(x)[0]["instances"]
    assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)

    # tools/convert_checkpoint.py writes the same model, which loads as a Detectron2 checkpoint
    import convert_checkpoint

    out = str(tmp_path / "dino_d2.pth")
    assert convert_checkpoint.main([path, out]) == 0
    converted = torch.load(out, weights_only=True)["model"]
    assert set(converted) == set(source.state_dict())
    model2 = build_model(tiny_cfg()).eval()
    FocalNetCheckpointer(model2).load(out)
    assert all(torch.equal(model2.state_dict()[k], v) for k, v in source.state_dict().items())

    # another class count: the class heads and label embedding start fresh, with a log line
    other = build_model(tiny_cfg(NUM_CLASSES=3))
    fresh = other.class_embed.weight.clone()
    with caplog.at_level(logging.INFO):
        FocalNetCheckpointer(other).load(path)
    for key in ("class_embed.weight", "transformer.enc_out_class_embed.weight", "label_enc.weight"):
        assert f"{key} re-initialised for the class count (MODEL.DINO.NUM_CLASSES)" in caplog.text
    assert torch.equal(other.class_embed.weight, fresh)
    assert torch.equal(other.transformer.level_embed, source.transformer.level_embed)


@pytest.mark.parametrize("change, culprit", [
    ("drop_alias", "transformer.decoder.class_embed.1.weight"),
    ("unshared", "bbox_embed.1.layers.0.weight"),
    ("extra", "transformer.extra_thing"),
    ("missing", "transformer.tgt_embed.weight"),
    ("5scale", "transformer.level_embed"),
])
def test_checkpoint_that_does_not_fit_is_named_in_one_line(tmp_path, change, culprit):
    source = build_model(tiny_cfg())
    sd = official_layout(source)
    if change == "drop_alias":
        del sd[culprit]
    elif change == "unshared":
        sd[culprit] = sd[culprit] + 1
    elif change == "extra":
        sd[culprit] = torch.zeros(1)
    elif change == "missing":
        del sd[culprit]
    elif change == "5scale":
        sd = official_layout(build_model(tiny_cfg(NUM_FEATURE_LEVELS=5)))
    path = str(tmp_path / "bad.pth")
    torch.save({"model": sd}, path)
    with pytest.raises(UserError) as e:
        FocalNetCheckpointer(build_model(tiny_cfg())).load(path)
    assert culprit in str(e.value) and "\n" not in str(e.value)


def test_imagenet_focalnet_checkpoint_initialises_the_backbone(tmp_path):
    model = build_model(tiny_cfg())
    backbone = {k[len("backbone."):]: torch.randn_like(v) for k, v in model.state_dict().items()
                if k.startswith("backbone.") and not k.startswith("backbone.norm")}
    backbone["head.weight"] = torch.zeros(10, 128)
    path = str(tmp_path / "focalnet_in1k.pth")
    torch.save({"model": backbone}, path)
    FocalNetCheckpointer(model).load(path)
    for k, v in backbone.items():
        if not k.startswith("head."):
            assert torch.equal(model.state_dict()["backbone." + k], v)


# ------------------------------------------------------------------ behaviour
def test_padded_image_gets_the_same_detections_as_alone():
    torch.manual_seed(0)
    model = randomize(build_model(tiny_cfg(NUM_SELECT=20)), seed=2, scale=0.1).eval()
    a, b = sample(72, 100, 0, seed=1), sample(100, 130, 0, seed=2)
    with torch.no_grad():
        alone = model([a])[0]["instances"]
        batched = model([a, b])[0]["instances"]
        b_alone = model([b])[0]["instances"]
        b_batched = model([b, a])[0]["instances"]
    for x, y in ((alone, batched), (b_alone, b_batched)):
        torch.testing.assert_close(x.scores, y.scores, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(x.pred_boxes.tensor, y.pred_boxes.tensor, atol=1e-3, rtol=1e-4)
        assert torch.equal(x.pred_classes, y.pred_classes)


def test_a_few_iterations_lower_the_loss():
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    model.train()
    batch = [sample(64, 64, 3, seed=3), sample(64, 64, 0, seed=4)]  # one image without ground truth
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        loss_dict = model(batch)
        assert all(torch.isfinite(v) for v in loss_dict.values())
        loss = sum(loss_dict.values())
        losses.append(float(loss))
        opt.zero_grad()
        loss.backward()
        opt.step()
    # 3 losses x (final, 1 auxiliary, encoder, 2 denoising) = 15 terms
    assert len(loss_dict) == 15 and "loss_giou_interm" in loss_dict and "loss_ce_dn_0" in loss_dict
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


def test_cpu_bf16_autocast_inference_within_3_percent_of_fp32():
    """bf16 may reorder the top-k query selection, so every position is selected and the content queries are
    made equal: the decoder is then permutation-equivariant and the two output sets are compared after
    matching them (Hungarian) -- boxes within 3 % of the image, scores within 0.03."""
    torch.manual_seed(0)
    model = randomize(build_model(tiny_cfg(NUM_QUERIES=300)), seed=3, scale=0.05).eval()
    with torch.no_grad():
        model.transformer.tgt_embed.weight.zero_()
    images = [(sample(96, 128, 0, seed=5)["image"] - model.pixel_mean) / model.pixel_std]
    with torch.no_grad():
        ref = model.forward_raw(images)
        with torch.autocast("cpu", torch.bfloat16):
            low = model.forward_raw(images)
    assert ref["pred_boxes"].shape[1] == 12 * 16 + 6 * 8 + 3 * 4 + 2 * 2  # all positions
    b32, b16 = ref["pred_boxes"][0], low["pred_boxes"][0].float()
    p32, p16 = ref["pred_logits"][0].sigmoid(), low["pred_logits"][0].float().sigmoid()
    cost = torch.cdist(b32, b16, p=1) + torch.cdist(p32, p16, p=1)
    rows, cols = linear_sum_assignment(cost.numpy())
    assert (b32[rows] - b16[cols]).abs().max() < 0.03
    assert (p32[rows] - p16[cols]).abs().max() < 0.03


def test_optimizer_backbone_lr_is_a_tenth():
    from focalnet_det.solver import build_optimizer

    cfg = get_cfg()
    add_focalnet_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs/COCO-Detection/Base-DINO-FocalNet.yaml"))
    tiny = tiny_cfg()
    cfg.MODEL.FOCALNET = tiny.MODEL.FOCALNET
    for k in ("HIDDEN_DIM", "NHEADS", "ENC_LAYERS", "DEC_LAYERS", "DIM_FEEDFORWARD", "NUM_QUERIES"):
        cfg.MODEL.DINO[k] = tiny.MODEL.DINO[k]
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    opt = build_optimizer(cfg, model)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert lr_of[id(p)] == pytest.approx(1e-5 if name.startswith("backbone.") else 1e-4), name
        assert wd_of[id(p)] == pytest.approx(1e-4), name
    assert "FullModelGradientClipping" in type(opt).__name__


def test_prepare_objects365_names_what_is_missing(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("prepare_objects365", os.path.join(ROOT, "datasets", "prepare_objects365.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--root", str(tmp_path)]) == 1
    assert "zhiyuan_objv2_train.json" in capsys.readouterr().err
    (tmp_path / "objects365" / "annotations").mkdir(parents=True)
    (tmp_path / "objects365" / "train").mkdir()
    cats = [{"id": i, "name": f"c{i}"} for i in range(1, 366)]
    for split, files in (("train", ["a.jpg"]), ("val", ["b.jpg"])):
        data = {"images": [{"id": 1, "file_name": f, "height": 4, "width": 4} for f in files],
                "annotations": [], "categories": cats}
        (tmp_path / "objects365" / "annotations" / f"zhiyuan_objv2_{split}.json").write_text(json.dumps(data))
    (tmp_path / "objects365" / "train" / "a.jpg").write_bytes(b"x")
    assert tool.main(["--root", str(tmp_path)]) == 1
    assert "objects365/val" in capsys.readouterr().err
    (tmp_path / "objects365" / "val").mkdir()
    (tmp_path / "objects365" / "val" / "b.jpg").write_bytes(b"x")
    assert tool.main(["--root", str(tmp_path)]) == 0
