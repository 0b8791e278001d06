"""Released mmdet (v2) Mask R-CNN and Cascade Mask R-CNN checkpoints load whole, strictly, and predict as mmdet's
model does (issue 12; reference/mmdet_conversion_spec.md §3, §4).

No released file can be downloaded here: each test writes an mmdet-layout file from a random tiny Detectron2 model of
the real config, under the mmdet names of the spec's tables (inverted below, independently of the converter).
"""
import importlib.util
import math
import os
import re

import pytest
import torch

from detectron2.data import MetadataCatalog
from detectron2.modeling import build_backbone, build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from focalnet_det.checkpoint import FocalNetCheckpointer
from focalnet_det.errors import UserError
from test_backbone import load_cfg  # same configs folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "convert_checkpoint.py")
_spec = importlib.util.spec_from_file_location("convert_checkpoint", TOOL)  # tools/ is not a package
convert_checkpoint = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(convert_checkpoint)

MASK_RCNN = "mask_rcnn_focalnet_tiny_srf_1x.yaml"
CASCADE = "cascade_mask_rcnn_focalnet_tiny_lrf_3x.yaml"


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny models on shared cores (conftest's fixture)."""


def tiny_cfg(name, *opts):
    """The real config with a tiny FocalNet and narrow heads (same module layout, a few ms per image)."""
    return load_cfg(
        name,
        "MODEL.FOCALNET.EMBED_DIM", 16, "MODEL.FOCALNET.DEPTHS", [1, 1, 2, 1], "MODEL.FOCALNET.DROP_PATH_RATE", 0.0,
        "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.ROI_BOX_HEAD.FC_DIM", 64, "MODEL.ROI_BOX_HEAD.CONV_DIM", 32,
        "MODEL.ROI_MASK_HEAD.CONV_DIM", 32, "MODEL.RPN.POST_NMS_TOPK_TEST", 200, *opts,
    )


def random_model(cfg, seed=0):
    """A model of ``cfg`` whose every parameter and BN statistic carries information, with confident classes 0-3
    (so that detections pass the 0.05 score threshold)."""
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 1.5, generator=g)
            elif name.endswith("num_batches_tracked"):
                t.fill_(1000)
            elif t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=g) * 0.05)
        for name, module in model.named_modules():
            if name.endswith("cls_score"):
                module.bias[:4] += 4.0
    return model


IMAGE = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(3)) * 255


def predict(model):
    """Raw detections (mask probabilities) and the postprocessed ones (pasted masks), as plain tensors."""
    inputs = [{"image": IMAGE, "height": 96, "width": 128}]
    with torch.no_grad():
        raw = model.inference(inputs, do_postprocess=False)[0]
        final = model(inputs)[0]["instances"]
    out = {}
    for tag, inst in (("raw", raw), ("final", final)):
        for field in ("pred_boxes", "scores", "pred_classes", "pred_masks"):
            value = inst.get(field)
            out[f"{tag}.{field}"] = value.tensor if isinstance(value, Boxes) else value
    return out


def assert_same_predictions(got, want):
    assert len(want["final.scores"]) > 0, "the random model must detect something"
    for k in want:
        assert torch.equal(got[k], want[k]), k


# ----------------------------------------------------------------------------------------------------------
# the mmdet layout, written from the spec's §3.2 / §3.3 tables (Detectron2 key -> mmdet key)

_RPN = {"conv": "rpn_conv", "objectness_logits": "rpn_cls", "anchor_deltas": "rpn_reg"}
_PREDICTOR = {"cls_score": "fc_cls", "bbox_pred": "fc_reg"}


def to_mmdet_key(key):
    m = re.fullmatch(r"backbone\.bottom_up\.(.+)", key)
    if m:
        return f"backbone.{m[1]}"
    m = re.fullmatch(r"backbone\.fpn_(lateral|output)(\d)\.(weight|bias)", key)
    if m:
        convs = "lateral_convs" if m[1] == "lateral" else "fpn_convs"
        return f"neck.{convs}.{int(m[2]) - 2}.conv.{m[3]}"
    m = re.fullmatch(r"proposal_generator\.rpn_head\.(\w+)\.(weight|bias)", key)
    if m:
        return f"rpn_head.{_RPN[m[1]]}.{m[2]}"
    m = re.fullmatch(r"roi_heads\.(box_head|box_predictor|mask_head)\.(?:(\d)\.)?(.+)", key)
    head, stage, rest = m[1], (f"{m[2]}." if m[2] else ""), m[3]
    if head == "box_head":
        m = re.fullmatch(r"conv(\d)\.(weight|norm\.(\w+))", rest)
        if m:
            part = "conv.weight" if m[2] == "weight" else f"bn.{m[3]}"
            return f"roi_head.bbox_head.{stage}shared_convs.{int(m[1]) - 1}.{part}"
        m = re.fullmatch(r"fc(\d)\.(weight|bias)", rest)
        return f"roi_head.bbox_head.{stage}shared_fcs.{int(m[1]) - 1}.{m[2]}"
    if head == "box_predictor":
        name, param = rest.split(".")
        return f"roi_head.bbox_head.{stage}{_PREDICTOR[name]}.{param}"
    m = re.fullmatch(r"mask_fcn(\d)\.(weight|bias)", rest)
    if m:
        return f"roi_head.mask_head.{stage}convs.{int(m[1]) - 1}.conv.{m[2]}"
    name, param = rest.split(".")
    return f"roi_head.mask_head.{stage}{ {'deconv': 'upsample', 'predictor': 'conv_logits'}[name]}.{param}"


def write_mmdet_file(model, path, edit=None):
    """Save ``model`` as mmdet's runner does: ``{"meta", "state_dict", "optimizer"}``; ``edit`` changes the dict."""
    state_dict = {to_mmdet_key(k): v.clone() for k, v in model.state_dict().items()}
    if edit:
        edit(state_dict)
    meta = {
        "epoch": 12, "iter": 87960, "mmdet_version": "2.11.0", "config": "model = dict(type='MaskRCNN', ...)",
        "CLASSES": tuple(MetadataCatalog.get("coco_2017_val").thing_classes),
    }
    optimizer = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}}, "param_groups": [{"lr": 1e-4}]}
    torch.save({"meta": meta, "state_dict": state_dict, "optimizer": optimizer}, path)
    return state_dict


def assert_loaded_exactly(model, source):
    got, want = model.state_dict(), source.state_dict()
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def round_trip(cfg, tmp_path, caplog):
    """Random model -> mmdet file -> (checkpointer | converter tool -> checkpointer) -> same weights, same output."""
    source = random_model(cfg)
    want = predict(source)
    path = str(tmp_path / "released.pth")
    mm = write_mmdet_file(source, path)

    with caplog.at_level("INFO"):
        model = build_model(cfg).eval()
        FocalNetCheckpointer(model).load(path)
    assert "80 COCO classes" in caplog.text
    assert_loaded_exactly(model, source)
    assert_same_predictions(predict(model), want)

    out = str(tmp_path / "converted.pth")
    assert convert_checkpoint.main([path, out]) == 0
    converted = torch.load(out, weights_only=True)["model"]
    assert set(converted) == set(source.state_dict())  # --prefix does not apply
    model = build_model(cfg).eval()
    FocalNetCheckpointer(model).load(out)
    assert_loaded_exactly(model, source)
    assert_same_predictions(predict(model), want)
    return mm, source


def test_mask_rcnn_round_trip(tmp_path, caplog):
    mm, _ = round_trip(tiny_cfg(MASK_RCNN), tmp_path, caplog)
    heads = [k for k in mm if not k.startswith("backbone.")]
    assert len(heads) == 42  # spec §3.2: FPN 16, RPN 6, box 8, mask 12


def test_cascade_round_trip(tmp_path, caplog):
    mm, source = round_trip(tiny_cfg(CASCADE), tmp_path, caplog)
    heads = [k for k in mm if not k.startswith("backbone.")]
    assert len(heads) == 148  # spec §3.3: FPN 16, RPN 6, box 3 x 30, mask 3 x 12
    assert mm["roi_head.bbox_head.2.fc_reg.weight"].shape[0] == 320  # class-specific in every stage
    # box heads with FrozenBN: the same statistics, no batch count
    frozen = build_model(tiny_cfg(CASCADE, "MODEL.ROI_BOX_HEAD.NORM", "FrozenBN"))
    FocalNetCheckpointer(frozen).load(str(tmp_path / "released.pth"))
    want = source.state_dict()
    assert len(want) - len(frozen.state_dict()) == 12
    for k, v in frozen.state_dict().items():
        assert torch.equal(v, want[k]), k


# ----------------------------------------------------------------------------------------------------------
# errors, other mmdet detectors, other class counts


@pytest.fixture(scope="module")
def mask_rcnn():
    return random_model(tiny_cfg(MASK_RCNN))


def test_unknown_head_key_is_one_line_error(mask_rcnn, tmp_path, capsys):
    path = str(tmp_path / "extra.pth")
    write_mmdet_file(mask_rcnn, path, lambda sd: sd.update({"roi_head.bbox_head.fc_extra.weight": torch.zeros(2)}))
    with pytest.raises(UserError, match=r"extra\.pth: key roi_head\.bbox_head\.fc_extra\.weight ") as info:
        FocalNetCheckpointer(build_model(tiny_cfg(MASK_RCNN))).load(path)
    assert "\n" not in str(info.value)
    assert convert_checkpoint.main([path, str(tmp_path / "out.pth")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "roi_head.bbox_head.fc_extra.weight" in err, err
    assert not (tmp_path / "out.pth").exists()


def test_missing_key_and_wrong_model_are_one_line_errors(mask_rcnn, tmp_path):
    path = str(tmp_path / "missing.pth")
    write_mmdet_file(mask_rcnn, path, lambda sd: sd.pop("roi_head.mask_head.conv_logits.weight"))
    with pytest.raises(UserError, match=r"lacks the model's key roi_heads\.mask_head\.predictor\.weight ") as info:
        FocalNetCheckpointer(build_model(tiny_cfg(MASK_RCNN))).load(path)
    assert "\n" not in str(info.value)

    path = str(tmp_path / "mask_rcnn.pth")
    write_mmdet_file(mask_rcnn, path)
    with pytest.raises(UserError, match=r"mask_rcnn\.pth is a Mask R-CNN checkpoint, the model is a Cascade"):
        FocalNetCheckpointer(build_model(tiny_cfg(CASCADE))).load(path)
    windows = tiny_cfg(MASK_RCNN, "MODEL.FOCALNET.FOCAL_WINDOWS", [7, 7, 7, 7])
    with pytest.raises(UserError, match=r"focal_layers\.0\.0\.weight has shape \(16, 1, 9, 9\)|FOCAL_WINDOWS") as info:
        FocalNetCheckpointer(build_model(windows)).load(path)  # the file's windows are 9: strict, no adaptation
    assert "\n" not in str(info.value)


def test_other_class_count_keeps_class_heads(mask_rcnn, tmp_path, caplog):
    """A COCO file fine-tuned on 3 classes: everything but the class-sized tensors loads."""
    path = str(tmp_path / "coco.pth")
    write_mmdet_file(mask_rcnn, path)
    model = build_model(tiny_cfg(MASK_RCNN, "MODEL.ROI_HEADS.NUM_CLASSES", 3)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level("INFO"):
        FocalNetCheckpointer(model).load(path)
    # each class-sized tensor named with both shapes (81 logits incl. background in the file, 4 in the model)
    assert ("roi_heads.box_predictor.cls_score.weight re-initialised for the class count "
            "(MODEL.ROI_HEADS.NUM_CLASSES): (81, 64) in the checkpoint, (4, 64) in the model") in caplog.text
    assert "roi_heads.mask_head.predictor.weight re-initialised" in caplog.text
    class_sized = ("box_predictor.cls_score.", "box_predictor.bbox_pred.", "mask_head.predictor.")
    for k, v in model.state_dict().items():
        ref = before[k] if any(c in k for c in class_sized) else mask_rcnn.state_dict()[k]
        assert torch.equal(v, ref), k


class BackboneOnly(torch.nn.Module):
    """A model with a FocalNet-FPN backbone and no R-CNN heads (e.g. another head family)."""

    def __init__(self, cfg):
        super().__init__()
        self.backbone = build_backbone(cfg)


@pytest.mark.parametrize("case", ["atss", "sparse_rcnn", "rcnn_into_other_model"])
def test_mmdet_detector_gives_its_backbone_to_non_rcnn(mask_rcnn, case, tmp_path, caplog):
    """ATSS / Sparse R-CNN files, or an R-CNN file loaded into a model without R-CNN heads: backbone only."""
    def other_heads(sd):
        for k in [k for k in sd if not k.startswith(("backbone.", "neck."))]:
            del sd[k]
        if case == "atss":
            sd.update({"bbox_head.atss_cls.weight": torch.zeros(80, 32, 3, 3),
                       "bbox_head.atss_reg.bias": torch.zeros(4)})
        else:
            sd.update({"rpn_head.init_proposal_bboxes.weight": torch.zeros(300, 4),
                       "roi_head.bbox_head.0.fc_cls.weight": torch.zeros(80, 256)})

    path = str(tmp_path / f"{case}.pth")
    write_mmdet_file(mask_rcnn, path, None if case == "rcnn_into_other_model" else other_heads)
    cfg = tiny_cfg(MASK_RCNN)
    model = (BackboneOnly(cfg) if case == "rcnn_into_other_model" else build_model(cfg)).eval()
    fpn_before = model.backbone.fpn_output2.weight.clone()
    with caplog.at_level("INFO"):
        FocalNetCheckpointer(model).load(path)
    assert "only its backbone is loaded" in caplog.text
    want = mask_rcnn.backbone.bottom_up.state_dict()
    for k, v in model.backbone.bottom_up.state_dict().items():
        assert torch.equal(v, want[k]), k
    assert torch.equal(model.backbone.fpn_output2.weight, fpn_before)


# ----------------------------------------------------------------------------------------------------------
# the Cascade's inference and training rules (spec §4.2 C1-C7), against a hand computation

STDS = [(0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067)]  # mmdet's target_stds
H = W = 64


def mmdet_decode(box, delta, std):
    """mmdet's delta2bbox: (delta * std) on the box's centre and size, clipped to the image."""
    x1, y1, x2, y2 = box
    pw, ph = x2 - x1, y2 - y1
    dx, dy, dw, dh = (d * s for d, s in zip(delta, std))
    cx, cy = x1 + 0.5 * pw + pw * dx, y1 + 0.5 * ph + ph * dy
    w, h = pw * math.exp(dw), ph * math.exp(dh)
    clip = lambda v, hi: min(max(v, 0.0), hi)  # noqa: E731
    return [clip(cx - 0.5 * w, W), clip(cy - 0.5 * h, H), clip(cx + 0.5 * w, W), clip(cy + 0.5 * h, H)]


def softmax(x):
    e = [math.exp(v - max(x)) for v in x]
    return [v / sum(e) for v in e]


def cascade_heads(num_classes=3):
    model = build_model(tiny_cfg(CASCADE, "MODEL.ROI_HEADS.NUM_CLASSES", num_classes)).eval()
    return model.roi_heads


def fix_outputs(roi_heads, logits, deltas, mask_logits):
    """Make every stage predict the given constant class logits and per-class deltas, every mask head the given
    constant per-class mask logits (weights zero, biases set)."""
    with torch.no_grad():
        for k, predictor in enumerate(roi_heads.box_predictor):
            predictor.cls_score.weight.zero_()
            predictor.cls_score.bias.copy_(torch.tensor(logits[k]))
            predictor.bbox_pred.weight.zero_()
            predictor.bbox_pred.bias.copy_(torch.tensor(deltas[k]).flatten())
        for k, head in enumerate(roi_heads.mask_head):
            head.predictor.weight.zero_()
            head.predictor.bias.copy_(torch.tensor(mask_logits[k]))


def test_cascade_inference_rules_by_hand():
    roi_heads = cascade_heads()
    assert len(roi_heads.mask_head) == 3 and roi_heads.box_head[0].conv4.norm is not None  # C6, C7
    logits = [[2.0, 0.0, -1.0, 0.5], [-1.0, 3.0, 0.0, 0.2], [0.5, 0.2, 1.0, 0.0]]  # K + 1, background last
    g = torch.Generator().manual_seed(0)
    deltas = [(torch.rand(3, 4, generator=g) * 4 - 2).tolist() for _ in range(3)]  # per stage, per class
    mask_logits = [[1.0, -2.0, 0.5], [3.0, 0.0, -1.0], [-0.5, 2.0, 1.5]]
    fix_outputs(roi_heads, logits, deltas, mask_logits)

    proposal = [10.0, 12.0, 40.0, 44.0]
    proposals = Instances((H, W), proposal_boxes=Boxes(torch.tensor([proposal])), objectness_logits=torch.ones(1))
    features = {f"p{i}": torch.randn(1, 32, H >> i, W >> i, generator=g) for i in range(2, 7)}
    with torch.no_grad():
        instances = roi_heads(None, features, [proposals])[0][0]

    # C2: stages 1 and 2 refine with their own argmax foreground class; C4: stage-3 per-class boxes;
    # C3: score = softmax(mean of the logits); C5: stage weights = 1 / std
    box = proposal
    for k in range(2):
        fg = logits[k][:-1]
        box = mmdet_decode(box, deltas[k][fg.index(max(fg))], STDS[k])
    scores = softmax([sum(stage[c] for stage in logits) / 3 for c in range(4)])[:-1]
    mean_of_probs = [sum(softmax(stage)[c] for stage in logits) / 3 for c in range(3)]
    assert max(abs(a - b) for a, b in zip(scores, mean_of_probs)) > 0.02  # the rule is visible in the result
    order = sorted((c for c in range(3) if scores[c] > 0.05), key=lambda c: -scores[c])
    assert instances.pred_classes.tolist() == order
    assert instances.scores.tolist() == pytest.approx([scores[c] for c in order], abs=1e-6)
    want_boxes = [mmdet_decode(box, deltas[2][c], STDS[2]) for c in order]
    assert instances.pred_boxes.tensor.tolist() == [pytest.approx(b, abs=2e-4) for b in want_boxes]

    # C7: mask = mean of the three heads' sigmoids of the predicted class (not the sigmoid of the mean logit)
    assert instances.pred_masks.shape == (len(order), 1, 28, 28)
    for mask, c in zip(instances.pred_masks, order):
        want = sum(1 / (1 + math.exp(-head[c])) for head in mask_logits) / 3
        assert mask.min().item() == pytest.approx(want, abs=1e-6) and mask.max().item() == pytest.approx(want, abs=1e-6)


def test_cascade_training_refinement_and_mask_losses():
    """Training: a foreground RoI is refined with its ground-truth class's deltas, a background one with its argmax
    class's; each stage trains its own mask head, the three losses adding up to their mean."""
    roi_heads = cascade_heads().train()
    predictor = roi_heads.box_predictor[0]
    deltas = torch.arange(12.0).view(3, 4) / 20
    proposals = Instances((H, W), proposal_boxes=Boxes(torch.tensor([[10.0, 10, 30, 30], [20, 20, 50, 40]])),
                          gt_classes=torch.tensor([2, 3]))  # foreground of class 2; background (3 = K)
    logits = torch.tensor([[0.0, 5.0, 1.0, 0.0], [0.0, 5.0, 1.0, 9.0]])  # argmax foreground class: 1
    refined = roi_heads._refined_boxes(predictor, (logits, deltas.flatten().repeat(2, 1)), [proposals])[0]
    boxes = proposals.proposal_boxes.tensor.tolist()
    want = [mmdet_decode(boxes[0], deltas[2].tolist(), STDS[0]), mmdet_decode(boxes[1], deltas[1].tolist(), STDS[0])]
    assert refined.tolist() == [pytest.approx(b, abs=1e-4) for b in want]

    # zero deltas (RoIs stay put: ground-truth RoIs stay foreground in every stage) and zero mask logits: the
    # binary cross-entropy is log 2 per pixel whatever the target, so each head's loss is log(2) / 3
    model = build_model(tiny_cfg(CASCADE, "MODEL.ROI_HEADS.NUM_CLASSES", 3)).train()
    fix_outputs(model.roi_heads, [[0.0] * 4] * 3, [[[0.0] * 4] * 3] * 3, [[0.0] * 3] * 3)
    masks = torch.zeros(2, H, W, dtype=torch.bool)
    masks[0, 8:40, 8:30] = masks[1, 24:56, 20:60] = True
    target = Instances((H, W), gt_boxes=Boxes(torch.tensor([[8.0, 8, 30, 40], [20, 24, 60, 56]])),
                       gt_classes=torch.tensor([0, 2]), gt_masks=BitMasks(masks))
    with EventStorage():
        losses = model([{"image": torch.rand(3, H, W) * 255, "instances": target}])
    stages = {f"{name}_stage{k}" for name in ("loss_cls", "loss_box_reg", "loss_mask") for k in range(3)}
    assert set(losses) == stages | {"loss_rpn_cls", "loss_rpn_loc"}
    for k in range(3):
        assert losses[f"loss_mask_stage{k}"].item() == pytest.approx(math.log(2) / 3, abs=1e-6)
    sum(losses.values()).backward()
    for k in range(3):
        assert model.roi_heads.mask_head[k].predictor.bias.grad.abs().sum() > 0, k
        assert model.roi_heads.box_predictor[k].cls_score.bias.grad.abs().sum() > 0, k


# ----------------------------------------------------------------------------------------------------------
# configs (spec §2.2, §4.1, §4.2)

VARIANTS = {  # name: (embed dim, depths, focal levels), windows 9 (spec §2.2)
    "tiny_srf": (96, [2, 2, 6, 2], 2), "tiny_lrf": (96, [2, 2, 6, 2], 3),
    "small_srf": (96, [2, 2, 18, 2], 2), "small_lrf": (96, [2, 2, 18, 2], 3),
    "base_srf": (128, [2, 2, 18, 2], 2), "base_lrf": (128, [2, 2, 18, 2], 3),
}
MASK_RCNN_CONFIGS = [f"mask_rcnn_focalnet_{v}_{s}.yaml" for v in VARIANTS for s in ("1x", "3x")]


def assert_mmdet_inference(cfg):
    m = cfg.MODEL
    assert cfg.INPUT.FORMAT == "RGB" and (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (800, 1333)
    assert list(m.PIXEL_MEAN) == [123.675, 116.28, 103.53] and list(m.PIXEL_STD) == [58.395, 57.12, 57.375]
    assert m.FPN.OUT_CHANNELS == 256 and m.FPN.NORM == ""
    assert [list(s) for s in m.ANCHOR_GENERATOR.SIZES] == [[32], [64], [128], [256], [512]]
    assert [list(r) for r in m.ANCHOR_GENERATOR.ASPECT_RATIOS] == [[0.5, 1.0, 2.0]] and m.ANCHOR_GENERATOR.OFFSET == 0
    assert (m.RPN.PRE_NMS_TOPK_TEST, m.RPN.POST_NMS_TOPK_TEST, m.RPN.NMS_THRESH) == (1000, 1000, 0.7)
    assert tuple(m.RPN.BBOX_REG_WEIGHTS) == (1.0, 1.0, 1.0, 1.0)
    assert (m.ROI_HEADS.SCORE_THRESH_TEST, m.ROI_HEADS.NMS_THRESH_TEST) == (0.05, 0.5)
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 100
    for head in (m.ROI_BOX_HEAD, m.ROI_MASK_HEAD):
        assert (head.POOLER_TYPE, head.POOLER_SAMPLING_RATIO) == ("ROIAlignV2", 0)
    assert (m.ROI_BOX_HEAD.POOLER_RESOLUTION, m.ROI_MASK_HEAD.POOLER_RESOLUTION) == (7, 14)
    assert not m.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG and not m.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK
    assert m.ROI_MASK_HEAD.NUM_CONV == 4 and m.ROI_BOX_HEAD.FC_DIM == 1024


@pytest.mark.parametrize("name", MASK_RCNN_CONFIGS)
def test_mask_rcnn_configs_match_mmdet(name):
    cfg = load_cfg(name)
    assert_mmdet_inference(cfg)
    m = cfg.MODEL
    assert (m.ROI_HEADS.NAME, m.ROI_BOX_HEAD.NUM_CONV, m.ROI_BOX_HEAD.NUM_FC) == ("StandardROIHeads", 0, 2)
    assert tuple(m.ROI_BOX_HEAD.BBOX_REG_WEIGHTS) == (10.0, 10.0, 5.0, 5.0)
    dim, depths, levels = VARIANTS[name[len("mask_rcnn_focalnet_"):-len("_1x.yaml")]]
    f = m.FOCALNET
    assert (f.EMBED_DIM, list(f.DEPTHS)) == (dim, depths)
    assert (list(f.FOCAL_LEVELS), list(f.FOCAL_WINDOWS)) == ([levels] * 4, [9] * 4)
    assert not (f.USE_CONV_EMBED or f.USE_POSTLN or f.USE_LAYERSCALE or f.NORMALIZE_MODULATOR)


def test_cascade_config_matches_mmdet_and_its_size():
    cfg = load_cfg(CASCADE)
    assert_mmdet_inference(cfg)
    m = cfg.MODEL
    assert m.ROI_HEADS.NAME == "MMDetCascadeROIHeads"
    assert (m.ROI_BOX_HEAD.NUM_CONV, m.ROI_BOX_HEAD.CONV_DIM, m.ROI_BOX_HEAD.NUM_FC) == (4, 256, 1)
    assert m.ROI_BOX_HEAD.NORM in ("BN", "SyncBN", "naiveSyncBN")
    assert (m.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE, m.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT) == ("giou", 10.0)
    for weights, std in zip(m.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS, STDS):
        assert list(weights) == pytest.approx([1 / s for s in std], rel=1e-7)
    f = m.FOCALNET
    assert (f.EMBED_DIM, list(f.DEPTHS), list(f.FOCAL_LEVELS), list(f.FOCAL_WINDOWS)) == (
        96, [2, 2, 6, 2], [3] * 4, [11, 9, 9, 7])
    model = build_model(cfg)
    # mmdet's model built from the released config: 87.105 M (spec §1; README 87.1 M)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(87.105, abs=0.001)
