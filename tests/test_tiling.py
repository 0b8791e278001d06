"""Tiled inference (TEST.TILE): tiles, merging of instances across tile borders, semantic averaging, panoptic from
the merged result, and every head family running tiled.

Most tests use a stub meta-architecture registered here, ``BrightBlobModel``: it "detects" the bright blobs of the
image *at the scale it sees* (after the test-time resize), as connected components at least ``MIN_SIDE`` px wide
and high, and returns them as Detectron2 models do (instances, semantic scores, panoptic). Its behaviour is known
exactly, so the merging can be checked pixel for pixel, and the effect of tiling (small objects visible at the
tile's scale, lost when the whole image is shrunk) is the one a trained detector has, without depending on how well
a network was trained. The real models of every family then run the same tiled path."""
import os

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import Boxes, Instances

from focalnet_det.config import add_focalnet_config
from focalnet_det.inference import Predictor, tile_windows
from focalnet_det.inference.tiling import SemanticBand

DATASET = "test_tiling_blobs"  # metadata only: contiguous 0 = background (stuff), 1 = blob (thing)
MetadataCatalog.get(DATASET).set(
    thing_classes=["background", "blob"], stuff_classes=["background", "blob"],
    thing_dataset_id_to_contiguous_id={2: 1}, stuff_dataset_id_to_contiguous_id={1: 0, 2: 1},
)


@META_ARCH_REGISTRY.register()
class BrightBlobModel(nn.Module):
    MIN_SIDE = 4  # px, at the scale the model sees

    def __init__(self, cfg):
        super().__init__()
        test = cfg.MODEL.MASK_FORMER.TEST
        self.semantic_on, self.instance_on, self.panoptic_on = test.SEMANTIC_ON, test.INSTANCE_ON, test.PANOPTIC_ON
        self.object_mask_threshold, self.overlap_threshold = 0.5, 0.5
        self.dummy = nn.Parameter(torch.zeros(1))
        self.seen = []  # (h, w) of every input, as the model saw it

    def forward(self, batched_inputs):
        results = []
        for x in batched_inputs:
            image = x["image"].float().mean(0).numpy()
            self.seen.append(image.shape)
            H, W = x["height"], x["width"]
            bright = (image > 128).astype(np.uint8)
            n, comp, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=4)
            keep = [c for c in range(1, n) if min(stats[c, cv2.CC_STAT_WIDTH], stats[c, cv2.CC_STAT_HEIGHT]) >= self.MIN_SIDE]
            masks = [cv2.resize((comp == c).astype(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST).astype(bool)
                     for c in keep]
            masks = [m for m in masks if m.any()]
            result = {}
            if self.instance_on:
                inst = Instances((H, W))
                boxes = []
                for m in masks:
                    ys, xs = np.nonzero(m)
                    boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
                inst.scores = torch.full((len(masks),), 0.9)
                inst.pred_classes = torch.ones(len(masks), dtype=torch.int64)
                inst.pred_masks = torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, H, W), dtype=torch.bool)
                result["instances"] = inst
            if self.semantic_on:
                b = torch.from_numpy(cv2.resize(bright.astype(np.float32), (W, H), interpolation=cv2.INTER_NEAREST))
                result["sem_seg"] = torch.stack([1 - b, b])
            if self.panoptic_on:
                pan = torch.zeros((H, W), dtype=torch.int32)
                info = []
                for k, m in enumerate(masks):
                    pan[torch.from_numpy(m)] = k + 1
                    info.append({"id": k + 1, "isthing": True, "category_id": 1})
                pan[pan == 0] = len(masks) + 1
                info.append({"id": len(masks) + 1, "isthing": False, "category_id": 0})
                result["panoptic_seg"] = (pan, info)
            results.append(result)
        return results


def stub_predictor(tile=0, overlap=0.25, size=200, instance=True, semantic=False, panoptic=False):
    cfg = get_cfg()
    add_focalnet_config(cfg)
    cfg.merge_from_list([
        "MODEL.META_ARCHITECTURE", "BrightBlobModel", "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
        "DATASETS.TEST", f"('{DATASET}',)", "INPUT.MIN_SIZE_TEST", str(size), "INPUT.MAX_SIZE_TEST", str(size),
        "TEST.TILE.SIZE", str(tile), "TEST.TILE.OVERLAP", str(overlap),
        "MODEL.MASK_FORMER.TEST.INSTANCE_ON", str(instance), "MODEL.MASK_FORMER.TEST.SEMANTIC_ON", str(semantic),
        "MODEL.MASK_FORMER.TEST.PANOPTIC_ON", str(panoptic),
    ])
    return Predictor(cfg)


def image_with(blobs, size):
    """A dark BGR image with bright rectangles ``(x0, y0, x1, y1)``; also returns their masks."""
    h, w = size
    image = np.full((h, w, 3), 30, np.uint8)
    masks = []
    for x0, y0, x1, y1 in blobs:
        image[y0:y1, x0:x1] = 230
        m = np.zeros((h, w), bool)
        m[y0:y1, x0:x1] = True
        masks.append(m)
    return image, masks


def test_tile_windows_cover_the_image_with_the_overlap_asked():
    windows = tile_windows(450, 1000, 200, 0.25)
    cover = np.zeros((450, 1000), int)
    for x0, y0, x1, y1 in windows:
        assert x1 - x0 == 200 and y1 - y0 == 200
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1
    xs = sorted({w[0] for w in windows})
    assert xs[-1] == 800 and all(b - a <= 150 for a, b in zip(xs, xs[1:]))  # overlap >= 50 px
    assert tile_windows(100, 120, 200, 0.25) == [(0, 0, 120, 100)]
    with pytest.raises(ValueError, match="TEST.TILE.OVERLAP"):
        tile_windows(100, 100, 50, 1.0)


def test_objects_cut_by_tile_borders_are_found_once_whole():
    # tiles of 200 (stride 150): x in [0, 200), [150, 350), [200, 400), the same in y
    blobs = [
        (185, 40, 215, 70),  # crosses x = 200, whole in the second column of tiles
        (120, 250, 370, 290),  # 250 px wide: whole in no tile; its parts are joined
        (40, 160, 70, 230),  # crosses y = 200
    ]
    image, masks = image_with(blobs, (400, 400))
    predictor = stub_predictor(tile=200)
    out = predictor(image)["instances"]
    assert len(predictor.model.seen) == 9 and set(predictor.model.seen) == {(200, 200)}  # tiles, at their own scale
    assert len(out) == 3
    found = sorted(range(3), key=lambda k: out.pred_boxes.tensor[k, 0].item())
    for blob, mask, k in zip(sorted(blobs), [masks[i] for i in np.argsort([b[0] for b in blobs])], found):
        assert out.pred_boxes.tensor[k].tolist() == list(map(float, blob))
        assert np.array_equal(out.pred_masks.paste(k), mask)
    # the same objects from the files the tools write: RLE in full-image coordinates
    import pycocotools.mask as mask_util
    for k in range(3):
        assert np.array_equal(mask_util.decode(out.pred_masks.to_rle(k)).astype(bool), out.pred_masks.paste(k))


def test_small_objects_in_a_large_image_are_found_with_tiles_and_missed_without():
    rng = np.random.default_rng(0)
    blobs = []
    for gy in range(3):
        for gx in range(4):  # 12 blobs of 10 px, away from each other, some on tile borders
            x, y = 150 + gx * 450 + int(rng.integers(0, 60)), 200 + gy * 550 + int(rng.integers(0, 60))
            blobs.append((x, y, x + 10, y + 10))
    image, masks = image_with(blobs, (1800, 2000))
    untiled = stub_predictor(tile=0)(image)["instances"]
    assert len(untiled) == 0  # shrunk to 200 px, a 10 px blob is 1 px: below what the model sees
    tiled = stub_predictor(tile=200)(image)["instances"]
    assert len(tiled) == len(blobs)
    assert sorted(map(tuple, tiled.pred_boxes.tensor.int().tolist())) == sorted(blobs)


def test_semantic_band_averages_overlapping_tiles_as_a_whole_image_sum_would():
    H, W, C = 130, 170, 4
    windows = tile_windows(H, W, 64, 0.3)
    gen = torch.Generator().manual_seed(0)
    scores = [torch.randn(C, y1 - y0, x1 - x0, generator=gen) for x0, y0, x1, y1 in windows]
    total, count = torch.zeros(C, H, W), torch.zeros(H, W)
    for s, (x0, y0, x1, y1) in zip(scores, windows):
        total[:, y0:y1, x0:x1] += s
        count[y0:y1, x0:x1] += 1
    band = SemanticBand((H, W), {"all": None, "last two": [2, 3]})
    for s, w in zip(scores, windows):
        band.add(s, w)
        assert band.acc.shape[1] <= 64 * 2  # never more than the rows of two tile rows
    labels = band.finish()
    mean = total / count
    assert torch.equal(labels["all"].long(), mean.argmax(0))
    assert torch.equal(labels["last two"].long(), mean[2:].argmax(0) + 2)


def test_semantic_and_panoptic_are_built_from_the_merged_tiles():
    blobs = [(185, 40, 215, 70), (120, 250, 370, 290), (300, 330, 306, 336)]
    image, masks = image_with(blobs, (400, 400))
    sem = stub_predictor(tile=200, instance=False, semantic=True)(image)
    assert "sem_seg" not in sem and np.array_equal(sem["sem_seg_labels"].numpy(), np.any(masks, 0).astype(np.uint8))

    predictor = stub_predictor(tile=200, instance=False, semantic=False, panoptic=True)
    pan, info = predictor(image)["panoptic_seg"]
    assert (predictor.model.panoptic_on, predictor.model.instance_on) == (True, False)  # switches put back
    things = [s for s in info if s["isthing"]]
    stuff = [s for s in info if not s["isthing"]]
    assert len(things) == 3 and len(stuff) == 1 and stuff[0]["category_id"] == 0
    matched = [[np.array_equal(pan.numpy() == s["id"], m) for m in masks].index(True) for s in things]
    assert sorted(matched) == [0, 1, 2]  # each blob one segment, whole
    assert np.array_equal(pan.numpy() == stuff[0]["id"], ~np.any(masks, 0))

    # and the panoptic files: PNG segments of the dataset's category ids
    import json
    import tempfile
    from PIL import Image
    from focalnet_det.data.datasets.panoptic_utils import rgb2id
    from focalnet_det.inference import PredictionWriter
    with tempfile.TemporaryDirectory() as out:
        writer = PredictionWriter(out, predictor.metadata)
        writer.add("/x/big.png", "big.png", image.shape[:2], {"panoptic_seg": (pan, info)})
        writer.finish()
        with open(f"{out}/panoptic.json") as f:
            ann = json.load(f)["annotations"][0]
        ids = rgb2id(np.array(Image.open(f"{out}/panoptic/big.png")))
        assert sorted(s["category_id"] for s in ann["segments_info"]) == [1, 2, 2, 2]
        assert all(int((ids == s["id"]).sum()) == s["area"] for s in ann["segments_info"])


@pytest.mark.parametrize("config, opts", [
    ("mask_rcnn_focalnet_tiny_shapes.yaml", [
        "MODEL.FPN.OUT_CHANNELS", "16", "MODEL.ROI_BOX_HEAD.FC_DIM", "32", "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]),
    ("maskformer2_focalnet_tiny_shapes.yaml", [
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.SEM_SEG_HEAD.MASK_DIM", "32", "MODEL.MASK_FORMER.HIDDEN_DIM", "32",
        "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD", "0.0"]),
    ("upernet_focalnet_tiny_shapes.yaml", ["TEST.AUG.ENABLED", "False"]),
    ("dino_focalnet_tiny_shapes.yaml", ["MODEL.DINO.HIDDEN_DIM", "32", "MODEL.DINO.DIM_FEEDFORWARD", "64"]),
])
def test_every_head_family_predicts_a_large_image_by_tiles(config, opts, one_thread, tmp_path):
    from pathlib import Path
    from PIL import Image
    from pycocotools.coco import COCO
    from focalnet_det.config import load_config
    from focalnet_det.inference import PredictionWriter

    cfg = load_config(str(Path(__file__).resolve().parents[1] / "configs" / "Tiny" / config),
                      ["MODEL.FOCALNET.EMBED_DIM", "16", "MODEL.FOCALNET.DEPTHS", "[1,1,1,1]", *opts,
                       "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "96", "TEST.TILE.SIZE", "96"])
    torch.manual_seed(0)
    predictor = Predictor(cfg)
    out = predictor(np.random.default_rng(0).integers(0, 255, (150, 230, 3), dtype=np.uint8))
    writer = PredictionWriter(tmp_path, predictor.metadata)  # the tiled outputs as files
    writer.add("/x/big.png", "big.png", (150, 230), out)
    written = {os.path.basename(p) for p in writer.finish()}
    if "instances" in out:
        gt = COCO(str(tmp_path / "annotations.json"))
        assert len(gt.loadRes(str(tmp_path / "predictions.json")).getAnnIds()) == len(out["instances"])
    if "sem_seg_labels" in out:
        assert np.array_equal(np.array(Image.open(tmp_path / "sem_seg" / "big.png")), out["sem_seg_labels"].numpy())
    if "panoptic_seg" in out:
        assert "panoptic.json" in written and (tmp_path / "panoptic" / "big.png").is_file()
    for key, value in out.items():
        if key == "instances":
            assert value.image_size == (150, 230) and len(value) > 0
            assert (value.pred_boxes.tensor[:, 2] <= 230).all() and (value.pred_boxes.tensor[:, 3] <= 150).all()
        elif key == "sem_seg_labels":
            assert value.shape == (150, 230)
        elif key == "panoptic_seg":
            assert value[0].shape == (150, 230) and len(value[1]) > 0
    assert set(out) == {"mask_rcnn": {"instances"}, "maskformer2": {"instances", "sem_seg_labels", "panoptic_seg"},
                        "upernet": {"sem_seg_labels"}, "dino": {"instances"}}[config.split("_focalnet")[0]]


def test_merging_holds_only_the_kept_detections_not_the_tiles():
    """What stays in memory between tiles: at most max_detections crops, none of them a view of a tile's masks."""
    from focalnet_det.inference import InstanceMerger
    from focalnet_det.inference.tiling import localize_instances

    merger = InstanceMerger((1000, 1000), max_detections=5)
    tile_masks = []
    for t, window in enumerate(tile_windows(1000, 1000, 200, 0.25)[:6]):
        inst = Instances((200, 200))
        masks = torch.zeros(8, 200, 200, dtype=torch.bool)
        for k in range(8):  # eight separate squares per tile
            masks[k, 10 + 20 * k : 25 + 20 * k, 10 + 20 * k : 25 + 20 * k] = True
        inst.pred_masks, inst.scores = masks, torch.rand(8)
        inst.pred_classes = torch.zeros(8, dtype=torch.int64)
        inst.pred_boxes = Boxes(torch.tensor([[10 + 20 * k] * 2 + [25 + 20 * k] * 2 for k in range(8)]).float())
        tile_masks.append(masks)
        merger.add(localize_instances(inst, window, (1000, 1000)))
        assert len(merger.kept) <= 5
    result = merger.result()
    assert len(result) == 5 and torch.all(result.scores[:-1] >= result.scores[1:])
    for crop in result.pred_masks.crops:
        assert crop.shape == (15, 15) and not any(np.shares_memory(crop, m.numpy()) for m in tile_masks)
