"""The built-in tiny dataset: generator, registration, and ground truth scoring AP 100."""
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from pycocotools.coco import COCO

import focalnet_det  # noqa: F401  (registers the datasets)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import BoxMode, Boxes, Instances
from focalnet_det.data.datasets import tiny_shapes
from focalnet_det.data.datasets.tiny_shapes import generate_tiny_shapes

SMALL = dict(num_train=4, num_val=6, seed=3, image_size=96, max_objects=4, min_size=12, max_size=40)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_cache(tmp_path, monkeypatch):
    """Registered datasets generated small, into a fresh cache folder."""
    monkeypatch.setenv("FOCALNET_DET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tiny_shapes, "TINY_SHAPES_DEFAULTS", dict(SMALL))
    return tmp_path / "cache"


def test_generator_is_deterministic(tmp_path):
    a, b = generate_tiny_shapes(tmp_path / "a", **SMALL), generate_tiny_shapes(tmp_path / "b", **SMALL)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == SMALL["num_train"] + SMALL["num_val"] + 2
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    c = generate_tiny_shapes(tmp_path / "c", **dict(SMALL, seed=4))
    assert (c / "train/000000.png").read_bytes() != (a / "train/000000.png").read_bytes()


def test_generator_writes_valid_coco(tmp_path):
    root = generate_tiny_shapes(tmp_path, **SMALL)
    for split in ("train", "val"):
        coco = COCO(str(root / "annotations" / f"instances_{split}.json"))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(tiny_shapes.TINY_SHAPES_CLASSES)
        assert len(coco.getImgIds()) == SMALL[f"num_{split}"]
        assert len(coco.getAnnIds()) >= len(coco.getImgIds())
        for ann in coco.loadAnns(coco.getAnnIds()):
            img = coco.loadImgs(ann["image_id"])[0]
            assert (root / split / img["file_name"]).is_file()
            mask = coco.annToMask(ann)
            assert mask.shape == (img["height"], img["width"])
            assert ann["area"] == mask.sum() > 0 and ann["iscrowd"] == 0
            ys, xs = np.nonzero(mask)
            expected = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert ann["bbox"] == pytest.approx(expected)
        # occlusion: the visible masks of one image never overlap
        for img_id in coco.getImgIds():
            masks = [coco.annToMask(a) for a in coco.loadAnns(coco.getAnnIds(imgIds=img_id))]
            assert np.sum(masks, axis=0).max() <= 1


def test_import_writes_nothing(tmp_path):
    cache = tmp_path / "cache"
    code = (
        "import focalnet_det; from detectron2.data import MetadataCatalog;"
        "m = MetadataCatalog.get('tiny_shapes_val'); print(m.thing_classes, m.evaluator_type)"
    )
    env = dict(os.environ, FOCALNET_DET_CACHE=str(cache))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert "'circle', 'square', 'triangle'" in out.stdout and "coco" in out.stdout
    assert not cache.exists()


def test_registration_generates_lazily(tiny_cache):
    assert "tiny_shapes_train" in DatasetCatalog.list() and "tiny_shapes_val" in DatasetCatalog.list()
    assert not tiny_cache.exists()
    dicts = DatasetCatalog.get("tiny_shapes_val")
    assert len(dicts) == SMALL["num_val"]
    for d in dicts:
        assert {"file_name", "height", "width", "image_id", "annotations"} <= set(d)
        assert os.path.isfile(d["file_name"]) and d["height"] == d["width"] == SMALL["image_size"]
        for ann in d["annotations"]:
            assert ann["bbox_mode"] == BoxMode.XYWH_ABS and 0 <= ann["category_id"] < 3
            assert isinstance(ann["segmentation"], dict) and ann["iscrowd"] == 0
    meta = MetadataCatalog.get("tiny_shapes_val")
    assert meta.evaluator_type == "coco" and meta.thing_classes == ["circle", "square", "triangle"]
    assert Path(meta.json_file).is_file() and Path(meta.image_root).is_dir()
    assert Path(meta.json_file).is_relative_to(tiny_cache)


def test_metadata_lookup_generates(tiny_cache):
    assert Path(MetadataCatalog.get("tiny_shapes_train").json_file).is_file()


def test_concurrent_generation_is_safe(tiny_cache):
    roots = []
    threads = [threading.Thread(target=lambda: roots.append(tiny_shapes.ensure_tiny_shapes())) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(roots) == 3 and len(set(roots)) == 1
    assert [p.name for p in tiny_cache.iterdir()] == [roots[0].name]  # no temporary folders left
    json.loads((roots[0] / "annotations" / "instances_val.json").read_text())


def test_ground_truth_as_predictions_scores_100(tiny_cache):
    evaluator = COCOEvaluator("tiny_shapes_val", output_dir=None, use_fast_impl=False)
    evaluator.reset()
    for d in DatasetCatalog.get("tiny_shapes_val"):
        anns = d["annotations"]
        inst = Instances((d["height"], d["width"]))
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.scores = torch.ones(len(anns))
        inst.pred_classes = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
        inst.pred_masks = torch.from_numpy(np.stack([mask_util.decode(a["segmentation"]) for a in anns])).bool()
        evaluator.process([{"image_id": d["image_id"]}], [{"instances": inst}])
    results = evaluator.evaluate()
    assert results["bbox"]["AP"] == pytest.approx(100, abs=1e-6)
    assert results["segm"]["AP"] == pytest.approx(100, abs=1e-6)


def test_cli(tmp_path):
    out = tmp_path / "cli"
    args = [sys.executable, str(REPO / "datasets/generate_tiny_shapes.py"), "--output", str(out)]
    subprocess.run(args + ["--num-train", "2", "--num-val", "1", "--seed", "1"], check=True, capture_output=True)
    assert len(list((out / "train").glob("*.png"))) == 2 and len(list((out / "val").glob("*.png"))) == 1
    bad = subprocess.run(args + ["--num-train", "-1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
