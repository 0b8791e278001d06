"""tools/predict.py: the files it writes, re-scored by the programs they are for (pycocotools, panopticapi, a mIoU
computed here from the PNGs), give the numbers ``tools/train_net.py --eval-only`` gives for the same model and data.

The models are small random-weight FocalNet models of three head families (saved once, so that both tools load the
same weights); their metrics are low but not zero, which is all an equality test needs."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SMALL_MASK_RCNN = [
    "MODEL.FOCALNET.EMBED_DIM", "16", "MODEL.FOCALNET.DEPTHS", "[1,1,1,1]", "MODEL.FPN.OUT_CHANNELS", "16",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "32", "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
]
SMALL_M2F = [
    "MODEL.FOCALNET.EMBED_DIM", "16", "MODEL.FOCALNET.DEPTHS", "[1,1,1,1]", "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32",
    "MODEL.SEM_SEG_HEAD.MASK_DIM", "32", "MODEL.MASK_FORMER.HIDDEN_DIM", "32", "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1", "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "16",
    # random queries score low: keep them, so that the panoptic result has segments to score
    "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD", "0.0", "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD", "0.0",
]
SMALL_UPERNET = ["MODEL.FOCALNET.EMBED_DIM", "16", "MODEL.FOCALNET.DEPTHS", "[1,1,1,1]", "TEST.AUG.ENABLED", "False"]
CONFIGS = {
    "mask_rcnn": ("configs/Tiny/mask_rcnn_focalnet_tiny_shapes.yaml", SMALL_MASK_RCNN),
    "mask2former": ("configs/Tiny/maskformer2_focalnet_tiny_shapes.yaml", SMALL_M2F),
    "upernet": ("configs/Tiny/upernet_focalnet_tiny_shapes.yaml", SMALL_UPERNET),
}


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """One generated copy of the tiny datasets for this module's tests."""
    before = os.environ.get("FOCALNET_DET_CACHE")
    os.environ["FOCALNET_DET_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if before is None:
        os.environ.pop("FOCALNET_DET_CACHE")
    else:
        os.environ["FOCALNET_DET_CACHE"] = before


def save_random_model(family, path):
    from detectron2.modeling import build_model
    from focalnet_det.config import load_config

    config, opts = CONFIGS[family]
    cfg = load_config(str(REPO / config), opts)
    torch.manual_seed(0)
    model = build_model(cfg)
    if family == "mask_rcnn":  # random masks match nothing: predict each box filled, so mask AP is not 0 either
        with torch.no_grad():
            model.roi_heads.mask_head.predictor.weight.zero_()
            model.roi_heads.mask_head.predictor.bias.fill_(5.0)
    if family == "mask2former":  # random queries match nothing: every query says "dark background" (id 3)
        with torch.no_grad():
            model.sem_seg_head.predictor.class_embed.weight.zero_()
            model.sem_seg_head.predictor.class_embed.bias.zero_()[3] = 5.0
    torch.save({"model": model.state_dict()}, path)
    return cfg


def eval_only(family, weights, out):
    """``tools/train_net.py --eval-only`` (in this process): its result dict."""
    from detectron2.engine import default_argument_parser
    import train_net

    config, opts = CONFIGS[family]
    args = default_argument_parser().parse_args(
        ["--config-file", str(REPO / config), "--eval-only", *opts, "MODEL.WEIGHTS", str(weights),
         "OUTPUT_DIR", str(out), "DATALOADER.NUM_WORKERS", "0"])
    return train_net.main(args)


def predict(family, weights, inputs, out, *extra):
    import predict as predict_tool

    config, opts = CONFIGS[family]
    return predict_tool.main(["--config-file", str(REPO / config), "--input", *map(str, inputs), "--output", str(out),
                              *extra, *opts, "MODEL.WEIGHTS", str(weights)])


def ids_by_file_name(written_images, gt_images):
    """Our image ids -> the ground truth's, matched by file name."""
    gt = {os.path.basename(im["file_name"]): im["id"] for im in gt_images}
    return {im["id"]: gt[im["file_name"]] for im in written_images}


def coco_ap(gt_json, results, iou_type):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(gt_json)
    ev = COCOeval(gt, gt.loadRes(results), iou_type)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats[0] * 100


def miou(pred_dir, pairs, num_classes, ignore=255):
    """Mean IoU over the classes present in the ground truth, from label PNGs."""
    conf = np.zeros((num_classes, num_classes), np.int64)
    for stem, gt_file in pairs:
        pred = np.array(Image.open(pred_dir / f"{stem}.png"), dtype=np.int64)
        gt = np.array(Image.open(gt_file), dtype=np.int64)
        valid = gt != ignore
        conf += np.bincount(gt[valid] * num_classes + pred[valid], minlength=num_classes**2).reshape(num_classes, -1)
    tp, gt_pos, pred_pos = np.diag(conf), conf.sum(1), conf.sum(0)
    present = gt_pos > 0
    return 100 * np.mean(tp[present] / (gt_pos + pred_pos - tp)[present])


def test_instances_files_rescored_by_pycocotools_give_eval_only_ap(tmp_path, tiny_cache):
    from detectron2.data import MetadataCatalog

    weights = tmp_path / "model.pth"
    save_random_model("mask_rcnn", weights)
    res = eval_only("mask_rcnn", weights, tmp_path / "eval")
    meta = MetadataCatalog.get("tiny_shapes_val")
    assert predict("mask_rcnn", weights, [meta.image_root], tmp_path / "pred") == 0

    with open(tmp_path / "pred" / "annotations.json") as f:
        ann = json.load(f)
    with open(meta.json_file) as f:
        gt = json.load(f)
    assert len(ann["images"]) == len(gt["images"]) == 50
    assert [c["name"] for c in ann["categories"]] == ["circle", "square", "triangle"]
    assert {c["id"] for c in ann["categories"]} == {c["id"] for c in gt["categories"]}
    # the annotation file is itself a COCO dataset pycocotools reads, scores kept
    from pycocotools.coco import COCO
    assert len(COCO(str(tmp_path / "pred" / "annotations.json")).getAnnIds()) == len(ann["annotations"]) > 0
    assert all(0 <= a["score"] <= 1 and a["area"] > 0 for a in ann["annotations"])

    with open(tmp_path / "pred" / "predictions.json") as f:
        results = json.load(f)
    remap = ids_by_file_name(ann["images"], gt["images"])
    for r in results:
        r["image_id"] = remap[r["image_id"]]
    for iou_type, task in (("bbox", "bbox"), ("segm", "segm")):
        ap = coco_ap(meta.json_file, results, iou_type)
        assert res[task]["AP"] > 0, res  # not trivially equal
        assert ap == pytest.approx(res[task]["AP"], abs=1e-6), (iou_type, ap, res[task])


def test_panoptic_semantic_and_instance_files_give_eval_only_pq_miou_ap(tmp_path, tiny_cache):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from panopticapi.evaluation import pq_compute

    weights = tmp_path / "model.pth"
    save_random_model("mask2former", weights)
    res = eval_only("mask2former", weights, tmp_path / "eval")
    meta = MetadataCatalog.get("tiny_shapes_panoptic_val")
    out = tmp_path / "pred"
    assert predict("mask2former", weights, [meta.image_root], out) == 0

    # panoptic: panopticapi on our PNGs and json (image ids mapped to the ground truth's by file name)
    with open(out / "panoptic.json") as f:
        pan = json.load(f)
    with open(meta.panoptic_json) as f:
        gt = json.load(f)
    remap = ids_by_file_name(pan["images"], gt["images"])
    for a in pan["annotations"]:
        a["image_id"] = remap[a["image_id"]]
    with open(tmp_path / "pan.json", "w") as f:
        json.dump(pan, f)
    pq = pq_compute(meta.panoptic_json, str(tmp_path / "pan.json"), meta.panoptic_root, str(out / "panoptic"))
    assert res["panoptic_seg"]["PQ"] > 0, res
    assert 100 * pq["All"]["pq"] == pytest.approx(res["panoptic_seg"]["PQ"], abs=1e-6)

    # semantic: mIoU from our label PNGs against the dataset's
    pairs = [(Path(d["file_name"]).stem, d["sem_seg_file_name"]) for d in DatasetCatalog.get("tiny_shapes_panoptic_val")]
    assert miou(out / "sem_seg", pairs, 5) == pytest.approx(res["sem_seg"]["mIoU"], abs=1e-6)

    # instances (things): pycocotools on predictions.json against tiny_shapes' instance json
    with open(out / "annotations.json") as f:
        images = json.load(f)["images"]
    with open(meta.json_file) as f:
        remap = ids_by_file_name(images, json.load(f)["images"])
    with open(out / "predictions.json") as f:
        results = json.load(f)
    for r in results:
        r["image_id"] = remap[r["image_id"]]
    assert coco_ap(meta.json_file, results, "segm") == pytest.approx(res["segm"]["AP"], abs=1e-6)


def test_semantic_files_give_eval_only_miou_and_resume_skips_done_images(tmp_path, tiny_cache):
    from detectron2.data import DatasetCatalog

    weights = tmp_path / "model.pth"
    save_random_model("upernet", weights)
    res = eval_only("upernet", weights, tmp_path / "eval")
    dicts = DatasetCatalog.get("tiny_shapes_sem_seg_val")
    images = [d["file_name"] for d in dicts]
    out = tmp_path / "pred"
    # an interrupted run: the first 20 images done, then a line cut short by the kill
    assert predict("upernet", weights, images[:20], out) == 0
    with open(out / "journal.jsonl", "a") as f:
        f.write('{"key": "/cut/short.png", "id": 99, "file_na')
    stamp = {p.name: p.stat().st_mtime_ns for p in (out / "sem_seg").iterdir()}
    assert predict("upernet", weights, images, out, "--resume") == 0
    assert all((out / "sem_seg" / name).stat().st_mtime_ns == t for name, t in stamp.items())  # not predicted again
    with open(out / "journal.jsonl") as f:
        keys = [json.loads(line)["key"] for line in f if line.strip().endswith("}")]
    assert sorted(keys) == sorted(os.path.abspath(p) for p in images)  # each image once
    pairs = [(Path(d["file_name"]).stem, d["sem_seg_file_name"]) for d in dicts]
    value = miou(out / "sem_seg", pairs, 5)
    assert res["sem_seg"]["mIoU"] > 0
    assert value == pytest.approx(res["sem_seg"]["mIoU"], abs=1e-6)


def test_predict_skips_unreadable_inputs_and_names_config_mistakes(tmp_path, capsys):
    import predict as predict_tool
    from focalnet_det.data.datasets.tiny_shapes import generate_tiny_shapes
    from focalnet_det.errors import UserError

    root = generate_tiny_shapes(tmp_path / "shapes", num_train=0, num_val=2, image_size=64, min_size=12, max_size=30)
    bad = tmp_path / "broken.jpg"
    bad.write_text("not a JPEG")
    config = str(REPO / CONFIGS["mask_rcnn"][0])
    assert predict_tool.main(["--config-file", config, "--input", str(root / "val"), str(bad), "--output",
                              str(tmp_path / "o"), "--score-threshold", "0.3", "--top-k", "5", *SMALL_MASK_RCNN]) == 0
    skipped = [line for line in capsys.readouterr().err.splitlines() if "broken.jpg" in line]
    assert len(skipped) == 1 and "predict.py: skipped" in skipped[0]
    with open(tmp_path / "o" / "predictions.json") as f:
        results = json.load(f)
    per_image = {}
    for res in results:
        per_image[res["image_id"]] = per_image.get(res["image_id"], 0) + 1
        assert res["score"] >= 0.3
    assert max(per_image.values(), default=0) <= 5
    assert not list((tmp_path / "o").glob(".*tmp*"))  # no temporary file left behind

    with pytest.raises(UserError, match="MODEL.NO_SUCH_KEY"):
        predict_tool.main(["--config-file", config, "--input", str(bad), "--output", str(tmp_path / "o2"),
                           "MODEL.NO_SUCH_KEY", "1"])
    with pytest.raises(UserError, match="none of the 1 inputs could be read"):
        predict_tool.main(["--config-file", config, "--input", str(bad), "--output", str(tmp_path / "o3"),
                           *SMALL_MASK_RCNN])
