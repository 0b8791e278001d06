"""Mask2Former parts: deformable attention, matcher, inference, official checkpoint layout, model size."""
import itertools
import math
import os
import types

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model, build_sem_seg_head

import focalnet_det  # noqa: F401  (registers everything)
from focalnet_det import add_focalnet_config
from focalnet_det.modeling.mask2former import HungarianMatcher
from focalnet_det.modeling.mask2former import MaskFormer
from focalnet_det.modeling.layers import MSDeformAttn, ms_deform_attn_core_pytorch
from focalnet_det.modeling.mask2former import PositionEmbeddingSine

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
L_FL4_PANOPTIC = os.path.join(ROOT, "configs/COCO-PanopticSegmentation/maskformer2_focalnet_large_fl4_100ep.yaml")
TINY = os.path.join(ROOT, "configs/Tiny/maskformer2_focalnet_tiny_shapes.yaml")
# the tiny config's slim FocalNet (width 48) as the head sees it
TINY_BACKBONE_SHAPES = {f"res{i + 2}": ShapeSpec(channels=c, stride=4 * 2**i) for i, c in enumerate([48, 96, 192, 384])}


def config(path, *opts):
    cfg = get_cfg()
    add_focalnet_config(cfg)
    cfg.merge_from_file(path)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *opts])
    return cfg


# ------------------------------------------------------------------------------------------------
# multi-scale deformable attention against a direct loop


def bilinear_zero_padded(img, x, y):
    """img (H, W) at continuous pixel coordinates (x, y) (pixel centres at integers), 0 outside: the
    four neighbours weighted by the areas of the opposite rectangles."""
    h, w = img.shape
    x0, y0 = math.floor(x), math.floor(y)
    out = 0.0
    for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
        if 0 <= xi < w and 0 <= yi < h:
            out += (1 - abs(x - xi)) * (1 - abs(y - yi)) * float(img[yi, xi])
    return out


def reference_ms_deform_attn(value, shapes, locations, weights):
    """Loop over batch, queries, heads, levels and points. value (N, S, M, D); locations in [0, 1] of each map."""
    n, _, m, d = value.shape
    _, lq, _, num_levels, p, _ = locations.shape
    starts = np.cumsum([0] + [h * w for h, w in shapes])
    out = torch.zeros(n, lq, m, d, dtype=torch.float64)
    for b, q, head, lvl, pt, c in itertools.product(range(n), range(lq), range(m), range(num_levels), range(p), range(d)):
        h, w = shapes[lvl]
        img = value[b, starts[lvl]: starts[lvl + 1], head, c].reshape(h, w)
        # normalised [0, 1] -> pixel coordinates whose centres are at integers (align_corners=False)
        x = float(locations[b, q, head, lvl, pt, 0]) * w - 0.5
        y = float(locations[b, q, head, lvl, pt, 1]) * h - 0.5
        out[b, q, head, c] += float(weights[b, q, head, lvl, pt]) * bilinear_zero_padded(img, x, y)
    return out.view(n, lq, m * d)


def test_ms_deform_attn_matches_direct_loop():
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (2, 5), (4, 2)]
    n, m, d, lq, p = 2, 2, 3, 4, 3
    value = torch.randn(n, sum(h * w for h, w in shapes), m, d, generator=g, dtype=torch.float64)
    locations = torch.rand(n, lq, m, len(shapes), p, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2  # some outside
    weights = torch.rand(n, lq, m, len(shapes), p, generator=g, dtype=torch.float64)
    weights = weights / weights.flatten(-2).sum(-1)[..., None, None]
    got = ms_deform_attn_core_pytorch(value, torch.tensor(shapes), locations, weights)
    want = reference_ms_deform_attn(value, shapes, locations, weights)
    assert torch.allclose(got, want, atol=1e-10), (got - want).abs().max()


def test_ms_deform_attn_module_samples_around_reference_points():
    """The module: offsets in pixels of each level around the reference point, softmax over levels x points."""
    torch.manual_seed(0)
    shapes = [(4, 5), (2, 3)]
    attn = MSDeformAttn(d_model=8, n_levels=2, n_heads=2, n_points=2).double()
    for lin in (attn.sampling_offsets, attn.attention_weights):  # not the (degenerate) initial zeros
        torch.nn.init.normal_(lin.weight, std=0.5)
    n, lq = 2, 3
    query = torch.randn(n, lq, 8, dtype=torch.float64)
    src = torch.randn(n, 26, 8, dtype=torch.float64)
    ref = torch.rand(n, lq, 2, 2, dtype=torch.float64)
    spatial = torch.tensor(shapes)
    out = attn(query, ref, src, spatial, torch.tensor([0, 20]))

    value = attn.value_proj(src).view(n, 26, 2, 4)
    offsets = attn.sampling_offsets(query).view(n, lq, 2, 2, 2, 2)
    wts = attn.attention_weights(query).view(n, lq, 2, 4).softmax(-1).view(n, lq, 2, 2, 2)
    loc = torch.empty_like(offsets)
    for lvl, (h, w) in enumerate(shapes):
        loc[:, :, :, lvl, :, 0] = ref[:, :, None, lvl, None, 0] + offsets[:, :, :, lvl, :, 0] / w
        loc[:, :, :, lvl, :, 1] = ref[:, :, None, lvl, None, 1] + offsets[:, :, :, lvl, :, 1] / h
    want = attn.output_proj(reference_ms_deform_attn(value.detach(), shapes, loc.detach(), wts.detach()))
    assert torch.allclose(out, want, atol=1e-10)


def test_ms_deform_attn_trains_by_autograd():
    value = torch.randn(1, 12, 2, 2, dtype=torch.float64, requires_grad=True)
    loc = (torch.rand(1, 3, 2, 2, 2, 2, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    w = torch.rand(1, 3, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda v, l, a: ms_deform_attn_core_pytorch(v, torch.tensor([(2, 4), (2, 2)]), l, a), (value, loc, w)
    )


def test_sine_position_encoding():
    pe = PositionEmbeddingSine(4, normalize=True)(torch.zeros(1, 1, 2, 3))
    assert pe.shape == (1, 8, 2, 3)
    # channel layout: y (sin f0, cos f0, sin f1, cos f1), then x; coordinate = k / n * 2 pi for k = 1..n
    y, x = 1, 2  # the pixel at row 1, column 2 (the last of each): both coordinates 2 pi (up to eps)
    ty, tx = 2 / (2 + 1e-6) * 2 * math.pi, 3 / (3 + 1e-6) * 2 * math.pi
    freqs = [1.0, 10000 ** (2 / 4)]
    want = [math.sin(ty), math.cos(ty), math.sin(ty / freqs[1]), math.cos(ty / freqs[1]),
            math.sin(tx), math.cos(tx), math.sin(tx / freqs[1]), math.cos(tx / freqs[1])]
    assert torch.allclose(pe[0, :, y, x], torch.tensor(want), atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Hungarian matcher


def test_matcher_assignment_equals_scipy_on_independent_cost():
    g = torch.Generator().manual_seed(1)
    b, q, k, h, w, p = 2, 7, 4, 12, 10, 50
    outputs = {"pred_logits": torch.randn(b, q, k + 1, generator=g), "pred_masks": torch.randn(b, q, h // 2, w // 2, generator=g)}
    targets = [
        {"labels": torch.tensor([0, 3, 3]), "masks": (torch.rand(3, h, w, generator=g) > 0.5).float()},
        {"labels": torch.tensor([1, 2, 0, 1, 2]), "masks": (torch.rand(5, h, w, generator=g) > 0.6).float()},
    ]
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=p)
    torch.manual_seed(123)
    indices = matcher(outputs, targets)

    torch.manual_seed(123)  # the matcher draws torch.rand(num_points, 2) per image with targets
    for bi, t in enumerate(targets):
        coords = torch.rand(p, 2).double()
        pred = outputs["pred_masks"][bi].double()
        # sample by the explicit bilinear interpolation (coordinates in [0, 1] of each map)
        def sample(maps):
            hh, ww = maps.shape[-2:]
            return torch.tensor([[bilinear_zero_padded(mp, float(c[0]) * ww - 0.5, float(c[1]) * hh - 0.5)
                                  for c in coords] for mp in maps], dtype=torch.float64)
        logits, tgt = sample(pred), sample(t["masks"].double())
        probs = torch.sigmoid(logits)
        cost = torch.zeros(q, len(t["labels"]), dtype=torch.float64)
        cls_prob = outputs["pred_logits"][bi].double().softmax(-1)
        for i, j in itertools.product(range(q), range(len(t["labels"]))):
            bce = -(tgt[j] * torch.log(probs[i]) + (1 - tgt[j]) * torch.log(1 - probs[i])).mean()
            dice = 1 - (2 * (probs[i] * tgt[j]).sum() + 1) / (probs[i].sum() + tgt[j].sum() + 1)
            cost[i, j] = 5.0 * bce + 5.0 * dice - 2.0 * cls_prob[i, t["labels"][j]]
        rows, cols = linear_sum_assignment(cost.numpy())
        assert indices[bi][0].tolist() == rows.tolist() and indices[bi][1].tolist() == cols.tolist()
        got = matcher.cost_matrix(outputs["pred_logits"][bi], outputs["pred_masks"][bi], t["labels"], t["masks"],
                                  coords.float())
        assert torch.allclose(got.double(), cost, atol=1e-4)


def test_matcher_without_targets():
    matcher = HungarianMatcher(1, 1, 1, num_points=10)
    out = {"pred_logits": torch.randn(1, 3, 2), "pred_masks": torch.randn(1, 3, 4, 4)}
    (rows, cols), = matcher(out, [{"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 8, 8)}])
    assert rows.numel() == cols.numel() == 0


# ------------------------------------------------------------------------------------------------
# inference on hand-made logits


def fake_maskformer(num_classes, thing_ids, object_mask_threshold=0.8, overlap_threshold=0.8, topk=100, panoptic_on=True):
    fake = types.SimpleNamespace(
        sem_seg_head=types.SimpleNamespace(num_classes=num_classes),
        metadata=types.SimpleNamespace(thing_dataset_id_to_contiguous_id={i + 1: c for i, c in enumerate(thing_ids)}),
        object_mask_threshold=object_mask_threshold, overlap_threshold=overlap_threshold,
        test_topk_per_image=topk, panoptic_on=panoptic_on, device=torch.device("cpu"),
    )
    fake._is_thing = lambda c: MaskFormer._is_thing(fake, c)
    return fake


def logits_for(classes, num_classes, confident=8.0):
    """One row per query: a high logit for its class (num_classes = no object), or a near-uniform row (None)."""
    rows = torch.zeros(len(classes), num_classes + 1)
    for i, c in enumerate(classes):
        if c is not None:
            rows[i, c] = confident
    return rows


def test_panoptic_inference_on_hand_made_logits():
    # classes 0, 1 things, 2 stuff; a 4 x 6 image
    model = fake_maskformer(num_classes=3, thing_ids=[0, 1])
    big = 10.0
    masks = torch.full((6, 4, 6), -big)
    masks[0, :, :3] = big          # q0: thing 0, left half
    masks[1, :2, 3:] = big         # q1: stuff 2, top right
    masks[2, 2:, 3:] = big         # q2: stuff 2, bottom right -> the same segment as q1
    masks[3] = big                 # q3: no object -> dropped
    masks[4, :, 3:] = big          # q4: thing 1 but not confident -> dropped
    masks[5, :, 2:4] = big         # q5: thing 1, loses column 2 to q0 and column 3 to the stuff: nothing left
    cls = logits_for([0, 2, 2, 3, None, 1], 3)
    cls[5, 1] = 7.0  # confident, but below q0..q2 so it loses the pixels it shares
    seg, info = MaskFormer.panoptic_inference(model, cls, masks)
    want = torch.tensor([[1, 1, 1, 2, 2, 2]] * 4, dtype=torch.int32)
    assert seg.dtype == torch.int32 and torch.equal(seg, want)
    assert info == [{"id": 1, "isthing": True, "category_id": 0}, {"id": 2, "isthing": False, "category_id": 2}]

    # overlap threshold: q5 keeps column 2 of its two columns if q0 stops there ... 1/2 < 0.8 -> dropped;
    # with threshold 0.4 it is a segment of its own
    masks[0, :, 2] = -big
    seg, info = MaskFormer.panoptic_inference(fake_maskformer(3, [0, 1], overlap_threshold=0.4), cls, masks)
    assert torch.equal(seg, torch.tensor([[1, 1, 3, 2, 2, 2]] * 4, dtype=torch.int32))
    assert info[2] == {"id": 3, "isthing": True, "category_id": 1}
    seg, info = MaskFormer.panoptic_inference(model, cls, masks)
    assert torch.equal(seg, torch.tensor([[1, 1, 0, 2, 2, 2]] * 4, dtype=torch.int32)) and len(info) == 2

    # nothing confident: an empty result
    seg, info = MaskFormer.panoptic_inference(model, logits_for([None, 3], 3), masks[:2])
    assert info == [] and not seg.any()


def test_semantic_and_instance_inference_on_hand_made_logits():
    model = fake_maskformer(num_classes=3, thing_ids=[0, 1], topk=3)
    masks = torch.full((2, 2, 2), -10.0)
    masks[0, 0] = 10.0  # q0: top row
    masks[1, 1] = 10.0  # q1: bottom row
    cls = logits_for([0, 2], 3, confident=20.0)
    sem = MaskFormer.semantic_inference(model, cls, masks)
    assert sem.shape == (3, 2, 2)
    assert sem.argmax(0).tolist() == [[0, 0], [2, 2]]
    assert torch.allclose(sem.sum(0), torch.ones(2, 2), atol=1e-3)

    inst = MaskFormer.instance_inference(model, cls, masks)
    # top 3 of the (query, class) scores, then only things (classes 0, 1): q0/class 0 first
    assert len(inst) >= 1 and set(inst.pred_classes.tolist()) <= {0, 1}
    best = int(inst.scores.argmax())
    assert inst.pred_classes[best] == 0 and inst.pred_masks[best].tolist() == [[1, 1], [0, 0]]
    assert inst.scores[best] == pytest.approx(1.0, abs=1e-3)
    assert inst.pred_boxes.tensor.shape == (len(inst), 4)


# ------------------------------------------------------------------------------------------------
# official checkpoint layout


def official_head_keys(num_classes, num_queries, in_channels, enc_layers=6, dec_layers=9, conv_dim=256, hidden=256,
                       ffn=2048, heads=8, levels=3, points=4):
    """The parameter names and shapes of an official Mask2Former checkpoint's head (sem_seg_head.*), written
    down from the official module structure (MSDeformAttnPixelDecoder + MultiScaleMaskedTransformerDecoder,
    the released configs: GN, 6 encoder layers, 9 decoder layers, mask_dim 256). in_channels: res2..res5."""
    keys = {}
    pd = "sem_seg_head.pixel_decoder."
    for i, c in enumerate(reversed(in_channels[1:])):  # res5, res4, res3
        keys[f"{pd}input_proj.{i}.0.weight"] = (conv_dim, c, 1, 1)
        keys[f"{pd}input_proj.{i}.0.bias"] = (conv_dim,)
        keys[f"{pd}input_proj.{i}.1.weight"] = (conv_dim,)
        keys[f"{pd}input_proj.{i}.1.bias"] = (conv_dim,)
    keys[f"{pd}transformer.level_embed"] = (levels, conv_dim)
    for i in range(enc_layers):
        e = f"{pd}transformer.encoder.layers.{i}."
        keys.update({
            e + "self_attn.sampling_offsets.weight": (heads * levels * points * 2, conv_dim),
            e + "self_attn.sampling_offsets.bias": (heads * levels * points * 2,),
            e + "self_attn.attention_weights.weight": (heads * levels * points, conv_dim),
            e + "self_attn.attention_weights.bias": (heads * levels * points,),
            e + "self_attn.value_proj.weight": (conv_dim, conv_dim),
            e + "self_attn.value_proj.bias": (conv_dim,),
            e + "self_attn.output_proj.weight": (conv_dim, conv_dim),
            e + "self_attn.output_proj.bias": (conv_dim,),
            e + "norm1.weight": (conv_dim,), e + "norm1.bias": (conv_dim,),
            e + "linear1.weight": (1024, conv_dim), e + "linear1.bias": (1024,),
            e + "linear2.weight": (conv_dim, 1024), e + "linear2.bias": (conv_dim,),
            e + "norm2.weight": (conv_dim,), e + "norm2.bias": (conv_dim,),
        })
    keys[f"{pd}mask_features.weight"] = (256, conv_dim, 1, 1)
    keys[f"{pd}mask_features.bias"] = (256,)
    keys[f"{pd}adapter_1.weight"] = (conv_dim, in_channels[0], 1, 1)  # no bias: GN follows
    keys[f"{pd}adapter_1.norm.weight"] = (conv_dim,)
    keys[f"{pd}adapter_1.norm.bias"] = (conv_dim,)
    keys[f"{pd}layer_1.weight"] = (conv_dim, conv_dim, 3, 3)
    keys[f"{pd}layer_1.norm.weight"] = (conv_dim,)
    keys[f"{pd}layer_1.norm.bias"] = (conv_dim,)
    pr = "sem_seg_head.predictor."
    for i in range(dec_layers):
        for kind, attn in (("self_attention", "self_attn"), ("cross_attention", "multihead_attn")):
            layer = f"{pr}transformer_{kind}_layers.{i}."
            keys.update({
                layer + f"{attn}.in_proj_weight": (3 * hidden, hidden),
                layer + f"{attn}.in_proj_bias": (3 * hidden,),
                layer + f"{attn}.out_proj.weight": (hidden, hidden),
                layer + f"{attn}.out_proj.bias": (hidden,),
                layer + "norm.weight": (hidden,), layer + "norm.bias": (hidden,),
            })
        f = f"{pr}transformer_ffn_layers.{i}."
        keys.update({
            f + "linear1.weight": (ffn, hidden), f + "linear1.bias": (ffn,),
            f + "linear2.weight": (hidden, ffn), f + "linear2.bias": (hidden,),
            f + "norm.weight": (hidden,), f + "norm.bias": (hidden,),
        })
    keys.update({
        pr + "decoder_norm.weight": (hidden,), pr + "decoder_norm.bias": (hidden,),
        pr + "query_feat.weight": (num_queries, hidden), pr + "query_embed.weight": (num_queries, hidden),
        pr + "level_embed.weight": (3, hidden),
        pr + "class_embed.weight": (num_classes + 1, hidden), pr + "class_embed.bias": (num_classes + 1,),
    })
    for i in range(3):
        keys[pr + f"mask_embed.layers.{i}.weight"] = (256, hidden)
        keys[pr + f"mask_embed.layers.{i}.bias"] = (256,)
    return keys


SWIN_L_CHANNELS = [192, 384, 768, 1536]  # = FocalNet-L's


def test_official_head_layout_loads_strictly():
    cfg = config(L_FL4_PANOPTIC)
    shapes = {f"res{i + 2}": ShapeSpec(channels=c, stride=4 * 2**i) for i, c in enumerate(SWIN_L_CHANNELS)}
    head = build_sem_seg_head(cfg, shapes)
    official = official_head_keys(num_classes=133, num_queries=200, in_channels=SWIN_L_CHANNELS)
    ours = {"sem_seg_head." + k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert ours == official
    g = torch.Generator().manual_seed(0)
    state = {k[len("sem_seg_head."):]: torch.randn(s, generator=g) for k, s in official.items()}
    head.load_state_dict(state, strict=True)
    assert torch.equal(head.predictor.query_feat.weight, state["predictor.query_feat.weight"])
    # the official Swin-L head with 200 queries and 133 classes: 20.3 M parameters
    assert sum(math.prod(s) for s in official.values()) == sum(p.numel() for p in head.parameters()) == 20_334_406


def test_old_checkpoint_names_are_renamed():
    """Version-1 checkpoints: the pixel decoder directly under the head, 'static_query' for query_feat."""
    cfg = config(TINY, "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1")
    head = build_sem_seg_head(cfg, TINY_BACKBONE_SHAPES)
    state = {k: v.clone() for k, v in head.state_dict().items()}
    old = {}
    for k, v in state.items():
        k = k.replace("pixel_decoder.", "").replace("query_feat", "static_query")
        old[k] = v.clone() + 1
    head.load_state_dict(old, strict=True)  # a plain dict: no version metadata, so the old layout is assumed
    assert torch.equal(head.predictor.query_feat.weight, state["predictor.query_feat.weight"] + 1)


def test_full_model_state_dict_and_criterion_buffer():
    cfg = config(TINY, "MODEL.FOCALNET.DEPTHS", "[1,1,1,1]", "MODEL.FOCALNET.EMBED_DIM", "32",
                 "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1")
    model = build_model(cfg)
    keys = set(model.state_dict())
    assert {k.split(".")[0] for k in keys} == {"backbone", "sem_seg_head", "criterion"}
    # official checkpoints carry the no-object weight as a buffer of the criterion
    assert "criterion.empty_weight" in keys and "pixel_mean" not in keys
    assert model.criterion.empty_weight.tolist() == pytest.approx([1.0] * 5 + [0.1])
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, strict=True)


def test_large_fl4_panoptic_builds_and_runs_on_cpu():
    """The FocalNet-L FL4 COCO panoptic model from its config: sizes, and inference on the CPU."""
    cfg = config(L_FL4_PANOPTIC)
    model = build_model(cfg).eval()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model.backbone) == 205_746_936  # L-FL4 with output norms (design table: 205.75 M)
    assert count(model.sem_seg_head) == 20_334_406
    assert count(model) == 226_081_342
    assert model.sem_seg_head.predictor.num_layers == 9 and model.sem_seg_head.predictor.num_queries == 200
    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)
    with torch.no_grad():
        (out,) = model([{"image": image, "height": 48, "width": 72}])
    assert out["sem_seg"].shape == (133, 48, 72)
    seg, info = out["panoptic_seg"]
    assert seg.shape == (48, 72) and isinstance(info, list)
    assert out["instances"].image_size == (48, 72) and len(out["instances"]) <= 100


@pytest.mark.parametrize("dec_layers", [10, 1])
def test_inference_attention_masks_from_resized_mask_features_equal_the_official_resize(dec_layers):
    """In inference the intermediate attention masks come from mask features resized once per scale; training
    (the official computation: each layer's full-resolution mask logits resized) gives the same outputs."""
    cfg = config(TINY, "MODEL.MASK_FORMER.DEC_LAYERS", str(dec_layers))
    decoder = build_sem_seg_head(cfg, TINY_BACKBONE_SHAPES).predictor
    g = torch.Generator().manual_seed(0)
    # a 200x152 image: 7x5, 13x10, 25x19 attended scales, 50x38 mask features (non-integer resize factors)
    x = [torch.randn(2, 128, h, w, generator=g) for h, w in [(7, 5), (13, 10), (25, 19)]]
    mask_features = torch.randn(2, 128, 50, 38, generator=g)
    with torch.no_grad():
        official = decoder.train()(x, mask_features)
        ours = decoder.eval()(x, mask_features)
    assert len(official["aux_outputs"]) == dec_layers - 1 and ours["aux_outputs"] == []
    for k in ("pred_logits", "pred_masks"):
        assert ours[k].shape == official[k].shape
        torch.testing.assert_close(ours[k], official[k], rtol=1e-5, atol=1e-5 * official[k].abs().max().item())


# ------------------------------------------------------------------------------------------------
# configs


MASKFORMER_CONFIGS = sorted(
    os.path.relpath(os.path.join(d, f), ROOT)
    for d in [os.path.join(ROOT, "configs", x) for x in os.listdir(os.path.join(ROOT, "configs"))]
    for f in os.listdir(d)
    if f.startswith("maskformer2_")
)


def test_every_maskformer_config_is_a_thin_child_and_builds_its_head():
    expected = {  # folder: (classes, test dataset, mapper, semantic, instance, panoptic)
        "COCO-PanopticSegmentation": (133, "coco_2017_val_panoptic_with_sem_seg", "coco_panoptic_lsj", True, True, True),
        "COCO-InstanceSegmentation": (80, "coco_2017_val", "coco_instance_lsj", False, True, False),
        "ADE20K-SemanticSegmentation": (150, "ade20k_sem_seg_val", "mask_former_semantic", True, False, False),
        "ADE20K-PanopticSegmentation": (150, "ade20k_panoptic_val", "mask_former_panoptic", True, True, True),
        "Tiny": (5, "tiny_shapes_panoptic_val", "coco_panoptic_lsj", True, True, True),
    }
    folders = set()
    for path in MASKFORMER_CONFIGS:
        folder = path.split(os.sep)[1]
        folders.add(folder)
        with open(os.path.join(ROOT, path)) as f:
            text = f.read()
        assert "_BASE_:" in text and "Base-Mask2Former-FocalNet.yaml" in text, path
        cfg = config(os.path.join(ROOT, path))
        classes, test_set, mapper, sem, ins, pan = expected[folder]
        mf = cfg.MODEL.MASK_FORMER
        assert cfg.MODEL.META_ARCHITECTURE == "MaskFormer" and cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == classes, path
        assert cfg.DATASETS.TEST == (test_set,) and cfg.INPUT.DATASET_MAPPER_NAME == mapper, path
        assert (mf.TEST.SEMANTIC_ON, mf.TEST.INSTANCE_ON, mf.TEST.PANOPTIC_ON) == (sem, ins, pan), path
        large = "large" in path
        assert mf.NUM_OBJECT_QUERIES == (200 if large and "SemanticSegmentation" not in path else 100 if folder != "Tiny" else 32)
        if folder != "Tiny":
            assert mf.DEC_LAYERS == 10 and cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS == 6, path
            assert (mf.CLASS_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT, mf.TRAIN_NUM_POINTS) == (2.0, 5.0, 5.0, 12544)
            assert cfg.SOLVER.BACKBONE_MULTIPLIER == 0.1 and cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "full_model"
        if large:
            fl = 4 if "fl4" in path else 3
            assert cfg.MODEL.FOCALNET.FOCAL_LEVELS == [fl] * 4 and cfg.MODEL.FOCALNET.NORMALIZE_MODULATOR == (fl == 4)
        d = cfg.MODEL.FOCALNET.EMBED_DIM
        shapes = {f"res{i + 2}": ShapeSpec(channels=d * 2**i, stride=4 * 2**i) for i in range(4)}
        head = build_sem_seg_head(cfg, shapes)
        assert head.predictor.class_embed.out_features == classes + 1
    assert folders == set(expected)


# The official Mask2Former COCO panoptic R50 yamls (configs/coco/panoptic-segmentation/), as released.
OFFICIAL_BASE_COCO_PANOPTIC = """
MODEL:
  BACKBONE:
    FREEZE_AT: 0
    NAME: "build_resnet_backbone"
  WEIGHTS: "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
  PIXEL_MEAN: [123.675, 116.280, 103.530]
  PIXEL_STD: [58.395, 57.120, 57.375]
  RESNETS:
    DEPTH: 50
    STEM_TYPE: "basic"  # not used
    STEM_OUT_CHANNELS: 64
    STRIDE_IN_1X1: False
    OUT_FEATURES: ["res2", "res3", "res4", "res5"]
    # NORM: "SyncBN"
    RES5_MULTI_GRID: [1, 1, 1]  # not used
DATASETS:
  TRAIN: ("coco_2017_train_panoptic",)
  TEST: ("coco_2017_val_panoptic_with_sem_seg",)  # to evaluate instance and semantic performance as well
SOLVER:
  IMS_PER_BATCH: 16
  BASE_LR: 0.0001
  STEPS: (327778, 355092)
  MAX_ITER: 368750
  WARMUP_FACTOR: 1.0
  WARMUP_ITERS: 10
  WEIGHT_DECAY: 0.05
  OPTIMIZER: "ADAMW"
  BACKBONE_MULTIPLIER: 0.1
  CLIP_GRADIENTS:
    ENABLED: True
    CLIP_TYPE: "full_model"
    CLIP_VALUE: 0.01
    NORM_TYPE: 2.0
  AMP:
    ENABLED: True
INPUT:
  IMAGE_SIZE: 1024
  MIN_SCALE: 0.1
  MAX_SCALE: 2.0
  FORMAT: "RGB"
  DATASET_MAPPER_NAME: "coco_panoptic_lsj"
TEST:
  EVAL_PERIOD: 5000
DATALOADER:
  FILTER_EMPTY_ANNOTATIONS: True
  NUM_WORKERS: 4
VERSION: 2
"""
OFFICIAL_R50_50EP = """
_BASE_: Base-COCO-PanopticSegmentation.yaml
MODEL:
  META_ARCHITECTURE: "MaskFormer"
  SEM_SEG_HEAD:
    NAME: "MaskFormerHead"
    IN_FEATURES: ["res2", "res3", "res4", "res5"]
    IGNORE_VALUE: 255
    NUM_CLASSES: 133
    LOSS_WEIGHT: 1.0
    CONVS_DIM: 256
    MASK_DIM: 256
    NORM: "GN"
    # pixel decoder
    PIXEL_DECODER_NAME: "MSDeformAttnPixelDecoder"
    IN_FEATURES: ["res2", "res3", "res4", "res5"]
    DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES: ["res3", "res4", "res5"]
    COMMON_STRIDE: 4
    TRANSFORMER_ENC_LAYERS: 6
  MASK_FORMER:
    TRANSFORMER_DECODER_NAME: "MultiScaleMaskedTransformerDecoder"
    TRANSFORMER_IN_FEATURE: "multi_scale_pixel_decoder"
    DEEP_SUPERVISION: True
    NO_OBJECT_WEIGHT: 0.1
    CLASS_WEIGHT: 2.0
    MASK_WEIGHT: 5.0
    DICE_WEIGHT: 5.0
    HIDDEN_DIM: 256
    NUM_OBJECT_QUERIES: 100
    NHEADS: 8
    DROPOUT: 0.0
    DIM_FEEDFORWARD: 2048
    ENC_LAYERS: 0
    PRE_NORM: False
    ENFORCE_INPUT_PROJ: False
    SIZE_DIVISIBILITY: 32
    DEC_LAYERS: 10  # 9 decoder layers, add one for the loss on learnable query
    TRAIN_NUM_POINTS: 12544
    OVERSAMPLE_RATIO: 3.0
    IMPORTANCE_SAMPLE_RATIO: 0.75
    TEST:
      SEMANTIC_ON: True
      INSTANCE_ON: True
      PANOPTIC_ON: True
      OVERLAP_THRESHOLD: 0.8
      OBJECT_MASK_THRESHOLD: 0.8
"""


def test_official_yaml_with_only_the_backbone_swapped_runs(tmp_path):
    (tmp_path / "Base-COCO-PanopticSegmentation.yaml").write_text(OFFICIAL_BASE_COCO_PANOPTIC)
    (tmp_path / "maskformer2_R50_bs16_50ep.yaml").write_text(OFFICIAL_R50_50EP)
    swapped = tmp_path / "maskformer2_focalnet.yaml"
    swapped.write_text(
        "_BASE_: maskformer2_R50_bs16_50ep.yaml\n"
        "MODEL:\n  WEIGHTS: ''\n  BACKBONE:\n    NAME: build_focalnet_backbone\n"
        "  FOCALNET:\n    EMBED_DIM: 32\n    DEPTHS: [1, 1, 1, 1]\n"  # a small FocalNet: the test's only change of scale
    )
    cfg = config(str(swapped))
    model = build_model(cfg)
    assert model.sem_seg_head.predictor.num_layers == 9 and len(model.sem_seg_head.pixel_decoder.transformer.encoder.layers) == 6
    assert model.criterion.num_points == 12544 and model.criterion.eos_coef == 0.1
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    from detectron2.structures import Instances
    inst = Instances((64, 64))
    inst.gt_classes = torch.tensor([0, 90])
    inst.gt_masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    inst.gt_masks[0, :20, :30] = True
    inst.gt_masks[1, 30:, :] = True
    model.train()
    losses = model([{"image": image, "instances": inst}])
    assert len(losses) == 30 and all(torch.isfinite(v) for v in losses.values())  # 10 x (ce, mask, dice)
    model.eval()
    with torch.no_grad():
        (out,) = model([{"image": image}])
    assert set(out) == {"sem_seg", "panoptic_seg", "instances"} and out["sem_seg"].shape == (133, 64, 64)
