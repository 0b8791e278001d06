"""Your own data (issue 19): datasets registered from the command line, their files checked before launch, the
traps named in one line, and one fine-tuning run end to end on a COCO file this test writes (category ids 7 and
42, an image without annotations, a crowd annotation, a box without area)."""
import argparse
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

from focalnet_det.config import load_config
from focalnet_det.data import add_dataset_arguments, register_datasets_from_args
from focalnet_det.data.datasets.panoptic_utils import id2rgb
from focalnet_det.engine import check_config
from focalnet_det.errors import UserError, one_line

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TINY = {f: os.path.join(ROOT, "configs/Tiny", f"{f}_focalnet_tiny_shapes.yaml")
        for f in ("mask_rcnn", "maskformer2", "upernet", "dino")}
SMALL = ["MODEL.FOCALNET.DEPTHS", "[1,1,1,1]", "MODEL.FOCALNET.EMBED_DIM", "16", "MODEL.WEIGHTS", ""]
CLASSES = {7: "cat", 42: "dog"}  # ids as a user's file has them: not 1..N


def write_coco(root, size=64):
    """4 images: two objects; an object and a crowd region; nothing; one object with a box of zero width."""
    (root / "images").mkdir(parents=True)
    boxes = {1: [(7, 4, 6, 20, 24), (42, 34, 30, 22, 26)], 2: [(42, 10, 10, 30, 30)], 3: [], 4: [(7, 30, 8, 24, 40)]}
    images, annotations = [], []
    rng = np.random.default_rng(0)
    for image_id, objects in boxes.items():
        pixels = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
        for cat, x, y, w, h in objects:
            pixels[y:y + h, x:x + w] = (220, 40, 40) if cat == 7 else (40, 40, 220)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat, "iscrowd": 0,
                                "bbox": [x, y, w, h], "area": w * h,
                                "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
        Image.fromarray(pixels).save(root / "images" / f"img{image_id}.jpg", quality=95)
        images.append({"id": image_id, "file_name": f"img{image_id}.jpg", "height": size, "width": size})
    crowd = np.zeros((size, size), np.uint8)
    crowd[44:60, 2:18] = 1
    counts, run, value = [], 0, 0  # uncompressed column-major RLE, as COCO writes crowd regions
    for v in crowd.flatten(order="F"):
        if v != value:
            counts.append(run)
            run, value = 0, v
        run += 1
    counts.append(run)
    annotations.append({"id": len(annotations) + 1, "image_id": 2, "category_id": 7, "iscrowd": 1,
                        "bbox": [2, 44, 16, 16], "area": 256, "segmentation": {"size": [size, size], "counts": counts}})
    annotations.append({"id": len(annotations) + 1, "image_id": 4, "category_id": 42, "iscrowd": 0,
                        "bbox": [5, 5, 0, 10], "area": 0, "segmentation": [[5, 5, 5, 5, 5, 15]]})
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": i, "name": n, "supercategory": "animal"} for i, n in sorted(CLASSES.items(), reverse=True)]}
    (root / "train.json").write_text(json.dumps(data))
    return root / "train.json", root / "images"


def register(*argv):
    return register_datasets_from_args(add_dataset_arguments(argparse.ArgumentParser()).parse_args(list(argv)))


@pytest.fixture
def coco(tmp_path):
    json_file, images = write_coco(tmp_path / "data")
    name = f"own_{tmp_path.name}"
    register("--register-coco", name, str(json_file), str(images))
    return name, json_file, images


def check(family, dataset, *opts):
    cfg = load_config(TINY[family], SMALL + ["DATASETS.TRAIN", f"('{dataset}',)", "DATASETS.TEST", f"('{dataset}',)",
                                             *opts])
    check_config(cfg)


def error_of(fn, *args):
    with pytest.raises(UserError) as e:
        fn(*args)
    assert "\n" not in str(e.value)
    return one_line(e.value)


# registration


def test_coco_from_the_command_line_maps_any_ids_and_names_the_files_classes(coco, caplog):
    name, json_file, images = coco
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["cat", "dog"] and meta.thing_dataset_id_to_contiguous_id == {7: 0, 42: 1}
    assert meta.evaluator_type == "coco" and meta.json_file == str(json_file)
    with caplog.at_level(logging.WARNING):
        dicts = DatasetCatalog.get(name)
    assert [len(d["annotations"]) for d in dicts] == [2, 2, 0, 1]  # the box without area dropped ...
    assert "dropped 1 annotations" in caplog.text  # ... and counted
    assert [a["category_id"] for a in dicts[0]["annotations"]] == [0, 1] and dicts[1]["annotations"][1]["iscrowd"] == 1
    check("mask_rcnn", name, "MODEL.ROI_HEADS.NUM_CLASSES", "2")  # the files pass the checks


def test_a_builtin_name_is_refused_and_missing_paths_are_named(tmp_path):
    json_file, images = write_coco(tmp_path)
    assert "taken by a built-in dataset" in error_of(register, "--register-coco", "tiny_shapes_train", str(json_file),
                                                     str(images))
    message = error_of(register, "--register-coco", "x", str(json_file), str(tmp_path / "nope"))
    assert message == f"--register-coco x: IMAGE_DIR {tmp_path / 'nope'} does not exist"
    assert "--classes" in error_of(register, "--register-sem-seg", "y", str(images), str(images))


def write_panoptic(root, size=32):
    """2 images: a 'cat' thing (id 7) on 'grass' stuff (id 42), some pixels unlabelled."""
    for folder in ("images", "panoptic"):
        (root / folder).mkdir(parents=True)
    images, annotations, expected = [], [], {}
    for i in range(2):
        ids = np.zeros((size, size), np.int64)
        ids[: size // 2] = 5 + i  # grass segment
        ids[4:12, 4 + i: 14 + i] = 300  # cat segment
        Image.fromarray(np.full((size, size, 3), 90, np.uint8)).save(root / "images" / f"p{i}.jpg")
        Image.fromarray(id2rgb(ids)).save(root / "panoptic" / f"p{i}.png")
        images.append({"id": i, "file_name": f"p{i}.jpg", "height": size, "width": size})
        annotations.append({"image_id": i, "file_name": f"p{i}.png", "segments_info": [
            {"id": s, "category_id": c, "iscrowd": 0, "area": int((ids == s).sum())} for s, c in ((5 + i, 42), (300, 7))]})
        sem = np.full((size, size), 255, np.uint8)
        sem[ids == 5 + i], sem[ids == 300] = 1, 0  # contiguous: 7 -> 0, 42 -> 1
        expected[f"p{i}.png"] = sem
    categories = [{"id": 7, "name": "cat", "isthing": 1, "color": [200, 0, 0]},
                  {"id": 42, "name": "grass", "isthing": 0, "color": [0, 200, 0]}]
    (root / "panoptic.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                    "categories": categories}))
    return root / "panoptic.json", root / "panoptic", root / "images", expected


def test_coco_panoptic_with_its_semantic_view_written_once(tmp_path, monkeypatch):
    monkeypatch.setenv("FOCALNET_DET_CACHE", str(tmp_path / "cache"))
    json_file, pngs, images, expected = write_panoptic(tmp_path / "data")
    name = f"pan_{tmp_path.name}"
    register("--register-coco-panoptic", name, str(json_file), str(pngs), str(images))
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["cat"] and meta.stuff_classes == ["cat", "grass"]
    check("maskformer2", name, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "2")
    dicts = DatasetCatalog.get(name)
    assert [[(s["category_id"], s["isthing"]) for s in d["segments_info"]] for d in dicts] == [[(1, False), (0, True)]] * 2
    for d in dicts:
        assert d["sem_seg_file_name"].startswith(str(tmp_path / "cache"))
        labels = np.asarray(Image.open(d["sem_seg_file_name"]))
        np.testing.assert_array_equal(labels, expected[os.path.basename(d["pan_seg_file_name"])])
    written = os.path.getmtime(dicts[0]["sem_seg_file_name"])
    assert MetadataCatalog.get(name).sem_seg_root and os.path.getmtime(dicts[0]["sem_seg_file_name"]) == written


def write_sem_seg(root, values=((0, 1), (2, 255), (1, 2)), size=16):
    for folder in ("img", "lbl"):
        (root / folder).mkdir(parents=True)
    for i, (a, b) in enumerate(values):
        Image.fromarray(np.full((size, size, 3), 80, np.uint8)).save(root / "img" / f"s{i}.jpg")
        label = np.full((size, size), a, np.uint8)
        label[size // 2:] = b
        Image.fromarray(label).save(root / "lbl" / f"s{i}.png")
    return root / "img", root / "lbl"


def test_sem_seg_pairs_by_stem_with_classes_from_a_file(tmp_path):
    images, labels = write_sem_seg(tmp_path)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(images / "unlabelled.jpg")
    (tmp_path / "classes.txt").write_text("road\nsky\n\ntree\n")
    name = f"sem_{tmp_path.name}"
    register("--register-sem-seg", name, str(images), str(labels), "--classes-file", str(tmp_path / "classes.txt"))
    meta = MetadataCatalog.get(name)
    assert meta.stuff_classes == ["road", "sky", "tree"] and meta.ignore_label == 255 and meta.evaluator_type == "sem_seg"
    dicts = DatasetCatalog.get(name)
    assert [(os.path.basename(d["file_name"]), os.path.basename(d["sem_seg_file_name"])) for d in dicts] == [
        ("s0.jpg", "s0.png"), ("s1.jpg", "s1.png"), ("s2.jpg", "s2.png")]
    check("upernet", name, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3")


# the files, checked before launch


def rewrite(json_file, change):
    data = json.loads(json_file.read_text())
    change(data)
    json_file.write_text(json.dumps(data))


@pytest.mark.parametrize("change, needles", [
    (lambda d: d["annotations"][2].update(image_id=99), ["annotations[2] (id 3)", "image_id 99", "not in 'images'"]),
    (lambda d: d["annotations"][0].update(category_id=8), ["annotations[0] (id 1)", "category_id 8", "ids [7, 42]"]),
    (lambda d: d["images"].extend({"id": 10 + i, "file_name": f"gone{i}.jpg"} for i in range(5)),
     ["5 of 9 images are missing under IMAGE_DIR", "gone0.jpg, gone1.jpg, gone2.jpg, ..."]),
    (lambda d: d.pop("categories"), ["no 'categories' list"]),
])
def test_a_bad_coco_file_is_named_with_its_first_offending_entry(coco, change, needles):
    name, json_file, _ = coco
    rewrite(json_file, change)
    message = error_of(check, "mask_rcnn", name, "MODEL.ROI_HEADS.NUM_CLASSES", "2")
    assert message.startswith(str(json_file)), message
    for needle in needles:
        assert needle in message, message


def test_degenerate_boxes_are_reported_before_launch(coco, caplog):
    name, json_file, _ = coco
    with caplog.at_level(logging.WARNING):
        check("mask_rcnn", name, "MODEL.ROI_HEADS.NUM_CLASSES", "2")
    assert "1 annotations have a box of zero or negative size (ids 6)" in caplog.text


def test_malformed_json_stops_train_net_in_one_line(tmp_path):
    json_file, images = write_coco(tmp_path)
    json_file.write_text(json_file.read_text()[:-40])
    proc = subprocess.run([sys.executable, "tools/train_net.py", "--config-file", TINY["mask_rcnn"],
                           "--register-coco", "mine", str(json_file), str(images), "DATASETS.TRAIN", "('mine',)",
                           "OUTPUT_DIR", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {json_file}: not valid JSON: ") and "line 1 column" in last, last


@pytest.mark.parametrize("values, rgb, needle", [
    (((0, 1), (2, 7)), False, "s1.png: label 7 is not a class"),
    (((0, 1),), True, "s0.png: a RGB image"),
])
def test_label_pngs_beyond_the_classes(tmp_path, values, rgb, needle):
    images, labels = write_sem_seg(tmp_path, values)
    if rgb:
        Image.open(labels / "s0.png").convert("RGB").save(labels / "s0.png")
    name = f"sem_{tmp_path.name}"
    register("--register-sem-seg", name, str(images), str(labels), "--classes", "road,sky,tree")
    assert needle in error_of(check, "upernet", name, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3")


# the traps, named before launch


def test_class_count_on_a_key_this_family_does_not_read(coco):
    name = coco[0]
    message = error_of(check, "maskformer2", name, "MODEL.ROI_HEADS.NUM_CLASSES", "2")
    assert message == (f"{name} has 2 classes; this Mask2Former config reads MODEL.SEM_SEG_HEAD.NUM_CLASSES (5): set "
                       f"MODEL.SEM_SEG_HEAD.NUM_CLASSES 2 (MODEL.ROI_HEADS.NUM_CLASSES 2 is not read by Mask2Former)")
    assert error_of(check, "mask_rcnn", name).startswith(
        f"{name} has 2 classes; this Mask R-CNN config reads MODEL.ROI_HEADS.NUM_CLASSES (3)")


def test_dino_label_book_smaller_than_the_classes(coco):
    message = error_of(check, "dino", coco[0], "MODEL.DINO.NUM_CLASSES", "1")
    assert "reads MODEL.DINO.NUM_CLASSES (1); its denoising label book (label_enc" in message, message


def test_logits_by_dataset_id_with_a_dataset_that_is_not_coco(coco):
    message = error_of(check, "dino", coco[0], "MODEL.DINO.NUM_CLASSES", "91", "MODEL.DINO.LOGITS_BY_DATASET_ID", "True")
    assert message.startswith("MODEL.DINO.LOGITS_BY_DATASET_ID True indexes the logits by COCO's") and \
        "set MODEL.DINO.LOGITS_BY_DATASET_ID False and MODEL.DINO.NUM_CLASSES 2" in message, message


def test_panoptic_head_on_an_instances_only_dataset(coco):
    message = error_of(check, "maskformer2", coco[0], "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "2")
    assert "has no panoptic annotations; INPUT.DATASET_MAPPER_NAME 'coco_panoptic_lsj'" in message, message
    message = error_of(check, "maskformer2", coco[0], "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "2",
                       "INPUT.DATASET_MAPPER_NAME", "coco_instance_lsj")
    assert "MODEL.MASK_FORMER.TEST.PANOPTIC_ON" in message, message


def test_semantic_ignore_value_that_is_a_class(tmp_path):
    images, labels = write_sem_seg(tmp_path)
    name = f"sem_{tmp_path.name}"
    register("--register-sem-seg", name, str(images), str(labels), "--classes", "road,sky,tree")
    message = error_of(check, "upernet", name, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3", "MODEL.SEM_SEG_HEAD.IGNORE_VALUE", "0")
    assert message.startswith("MODEL.SEM_SEG_HEAD.IGNORE_VALUE 0 is a class (0..2"), message
    message = error_of(check, "upernet", name, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3", "MODEL.SEM_SEG_HEAD.IGNORE_VALUE", "3")
    assert "marks unlabelled pixels 255; MODEL.SEM_SEG_HEAD.IGNORE_VALUE is 3" in message, message
    assert "ignore label 1 is class 'sky'" in error_of(register, "--register-sem-seg", name + "b", str(images),
                                                       str(labels), "--classes", "road,sky,tree", "--ignore-label", "1")


def test_best_checkpoint_metric_must_be_a_metric_name(coco):
    message = error_of(check, "mask_rcnn", coco[0], "MODEL.ROI_HEADS.NUM_CLASSES", "2",
                       "TEST.BEST_CHECKPOINT_METRIC", "AP")
    assert message.startswith("TEST.BEST_CHECKPOINT_METRIC 'AP': not a metric name"), message


# end to end


def test_fine_tune_a_checkpoint_of_another_class_count_on_a_coco_file(tmp_path):
    """Register from the command line, fine-tune a 5-class checkpoint to the file's 2 classes (ids 7 and 42),
    evaluate: the AP table and metrics.json name the file's classes; model_best.pth is kept by bbox/AP."""
    from detectron2.modeling import build_model

    json_file, images = write_coco(tmp_path / "data")
    released = build_model(load_config(TINY["mask_rcnn"], SMALL + ["MODEL.ROI_HEADS.NUM_CLASSES", "5"]))
    torch.save({"model": released.state_dict()}, tmp_path / "released.pth")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "tools/train_net.py", "--config-file", TINY["mask_rcnn"],
         "--register-coco", "pets_train", str(json_file), str(images),
         "--register-coco", "pets_val", str(json_file), str(images),
         *SMALL[:-2], "MODEL.WEIGHTS", str(tmp_path / "released.pth"), "MODEL.ROI_HEADS.NUM_CLASSES", "2",
         "DATASETS.TRAIN", "('pets_train',)", "DATASETS.TEST", "('pets_val',)", "SOLVER.MAX_ITER", "3",
         "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1", "DATALOADER.NUM_WORKERS", "0",
         "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.MIN_SIZE_TEST", "64",
         "INPUT.MAX_SIZE_TEST", "64", "TEST.BEST_CHECKPOINT_METRIC", "bbox/AP", "OUTPUT_DIR", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    for key, before, after in [("roi_heads.box_predictor.cls_score.weight", "(6, 512)", "(3, 512)"),
                               ("roi_heads.mask_head.predictor.bias", "(5,)", "(2,)")]:
        assert f"{key} re-initialised for the class count (MODEL.ROI_HEADS.NUM_CLASSES): {before} in the checkpoint, " \
               f"{after} in the model" in log
    assert "pets_train: dropped 1 annotations whose box has zero or negative width or height" in log
    assert "1 annotations have a box of zero or negative size (ids 6); they are dropped when pets_train is loaded" in log
    table = log[log.index("Per-category bbox AP"):]
    assert "| cat " in table and "| dog " in table  # the file's class names, not ids
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    final = next(m for m in reversed(metrics) if "bbox/AP" in m)
    assert {"bbox/AP-cat", "bbox/AP-dog", "segm/AP-cat", "segm/AP-dog"} <= set(final)
    assert (out / "model_best.pth").is_file()


def test_per_class_pq_of_ground_truth_and_of_a_missed_class(tmp_path, monkeypatch):
    """PQ-<class> for every class: 100 for ground truth given as predictions; a class never predicted gets 0, the
    others keep 100."""
    from focalnet_det.data.datasets.panoptic_utils import rgb2id
    from focalnet_det.evaluation import PerClassPanopticEvaluator

    monkeypatch.setenv("FOCALNET_DET_CACHE", str(tmp_path / "cache"))
    json_file, pngs, images, _ = write_panoptic(tmp_path / "data")
    name = f"pan_{tmp_path.name}"
    register("--register-coco-panoptic", name, str(json_file), str(pngs), str(images))
    for drop, expected in ((None, {"cat": 100.0, "grass": 100.0}), (0, {"cat": 0.0, "grass": 100.0})):
        evaluator = PerClassPanopticEvaluator(name, str(tmp_path / f"eval{drop}"))
        evaluator.reset()
        for d in DatasetCatalog.get(name):
            ids = torch.as_tensor(rgb2id(np.asarray(Image.open(d["pan_seg_file_name"]))))
            segments = [{"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]}
                        for s in d["segments_info"] if s["category_id"] != drop]
            ids[~torch.isin(ids, torch.tensor([s["id"] for s in segments]))] = 0  # a dropped segment: no prediction
            evaluator.process([d], [{"panoptic_seg": (ids, segments)}])
        results = evaluator.evaluate()["panoptic_seg"]
        assert {k[3:]: pytest.approx(v) for k, v in results.items() if k.startswith("PQ-")} == expected
