"""Mask2Former data and training: the tiny panoptic dataset, mappers, evaluation of ground truth (PQ 100),
dataset scripts, the optimizer recipe, and a few training iterations that lower the loss."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOPanopticEvaluator
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

import focalnet_det  # noqa: F401  (registers everything)
from focalnet_det import add_focalnet_config
from focalnet_det.data.datasets import tiny_shapes
from focalnet_det.data.dataset_mappers import (
    COCOInstanceNewBaselineDatasetMapper,
    COCOPanopticNewBaselineDatasetMapper,
    MaskFormerInstanceDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
    build_maskformer_train_mapper,
)
from focalnet_det.data.datasets.panoptic_utils import id2rgb, rgb2id
from focalnet_det.data.datasets.register_tiny_shapes_panoptic import TINY_PANOPTIC_CATEGORIES
from focalnet_det.evaluation import build_maskformer_evaluators
from focalnet_det.solver import build_optimizer

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs/Tiny/maskformer2_focalnet_tiny_shapes.yaml")
SMALL = dict(num_train=6, num_val=4, seed=5, image_size=96, max_objects=4, min_size=14, max_size=40)
# a model small enough for quick CPU steps
SMALL_MODEL = [
    "MODEL.FOCALNET.EMBED_DIM", "32", "MODEL.FOCALNET.DEPTHS", "[1,1,1,1]",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "64", "MODEL.SEM_SEG_HEAD.MASK_DIM", "64",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1", "MODEL.MASK_FORMER.HIDDEN_DIM", "64",
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "128", "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "8",
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256",
]


@pytest.fixture
def tiny_cache(tmp_path, monkeypatch):
    """The registered tiny datasets generated small, in a fresh cache."""
    monkeypatch.setenv("FOCALNET_DET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tiny_shapes, "TINY_SHAPES_DEFAULTS", dict(SMALL))
    return tmp_path / "cache"


def tiny_cfg(*opts):
    cfg = get_cfg()
    add_focalnet_config(cfg)
    cfg.merge_from_file(TINY)
    cfg.merge_from_list(["INPUT.IMAGE_SIZE", "96", "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "96",
                         *SMALL_MODEL, *opts])
    return cfg


def test_tiny_panoptic_dataset(tiny_cache):
    names = DatasetCatalog.list()
    assert "tiny_shapes_panoptic_train" in names and "tiny_shapes_panoptic_val" in names
    assert not tiny_cache.exists()  # registration writes nothing
    meta = MetadataCatalog.get("tiny_shapes_panoptic_val")
    assert meta.evaluator_type == "coco_panoptic_seg"
    assert meta.thing_classes == ["circle", "square", "triangle"]
    assert meta.stuff_classes == ["circle", "square", "triangle", "dark background", "light background"]
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2}
    dicts = DatasetCatalog.get("tiny_shapes_panoptic_val")
    assert len(dicts) == SMALL["num_val"]
    with open(meta.json_file) as f:  # tiny_shapes' instance annotations
        instances = json.load(f)["annotations"]
    for d in dicts:
        ids = rgb2id(np.asarray(Image.open(d["pan_seg_file_name"])))
        sem = np.asarray(Image.open(d["sem_seg_file_name"]))
        assert ids.shape == sem.shape == (d["height"], d["width"])
        seg_ids = [s["id"] for s in d["segments_info"]]
        assert sorted(np.unique(ids).tolist()) == sorted(seg_ids)  # every pixel in exactly one segment, no VOID
        for s in d["segments_info"]:
            mask = ids == s["id"]
            assert s["area"] == mask.sum() and (sem[mask] == s["category_id"]).all()
            assert s["isthing"] == (s["category_id"] < 3)
        # the things are the shapes of tiny_shapes, mask for mask
        things = sorted(int((ids == s["id"]).sum()) for s in d["segments_info"] if s["isthing"])
        assert things == sorted(a["area"] for a in instances if a["image_id"] == d["image_id"])
        stuff = {s["category_id"] for s in d["segments_info"] if not s["isthing"]}
        assert stuff and stuff <= {3, 4}


def test_ground_truth_scores_pq_miou_and_ap_100(tiny_cache, tmp_path):
    """Evaluating the ground truth as predictions: PQ 100 (panopticapi), mIoU 100, mask AP 100."""
    cfg = tiny_cfg()
    evaluators = build_maskformer_evaluators(cfg, "tiny_shapes_panoptic_val", str(tmp_path / "eval"))
    assert [type(e).__name__ for e in evaluators] == ["PerClassPanopticEvaluator", "COCOEvaluator", "SemSegEvaluator"]
    assert isinstance(evaluators[0], COCOPanopticEvaluator)
    for e in evaluators:
        e.reset()
    for d in DatasetCatalog.get("tiny_shapes_panoptic_val"):
        ids = torch.as_tensor(rgb2id(np.asarray(Image.open(d["pan_seg_file_name"]))), dtype=torch.int32)
        sem = torch.as_tensor(np.asarray(Image.open(d["sem_seg_file_name"])).astype(np.int64))
        segments = [{"id": s["id"], "isthing": s["isthing"], "category_id": s["category_id"]} for s in d["segments_info"]]
        things = [s for s in d["segments_info"] if s["isthing"]]
        inst = Instances(tuple(ids.shape))
        inst.pred_masks = torch.stack([ids == s["id"] for s in things]).float()
        inst.pred_boxes = Boxes(torch.zeros(len(things), 4))
        inst.scores = torch.ones(len(things))
        inst.pred_classes = torch.tensor([s["category_id"] for s in things])
        output = {"panoptic_seg": (ids, segments), "instances": inst,
                  "sem_seg": torch.nn.functional.one_hot(sem, 5).permute(2, 0, 1).float()}
        for e in evaluators:
            e.process([{"file_name": d["file_name"], "image_id": d["image_id"]}], [output])
    pan, ins, sem = [e.evaluate() for e in evaluators]
    assert pan["panoptic_seg"]["PQ"] == pytest.approx(100.0)
    assert pan["panoptic_seg"]["PQ_th"] == pytest.approx(100.0) and pan["panoptic_seg"]["PQ_st"] == pytest.approx(100.0)
    present = {MetadataCatalog.get("tiny_shapes_panoptic_val").stuff_classes[s["category_id"]]
               for d in DatasetCatalog.get("tiny_shapes_panoptic_val") for s in d["segments_info"]}
    per_class = {k[3:]: v for k, v in pan["panoptic_seg"].items() if k.startswith("PQ-")}
    assert len(per_class) == 5 and {c for c, v in per_class.items() if v == v} == present  # NaN: absent
    assert all(per_class[c] == pytest.approx(100.0) for c in present)
    assert ins["segm"]["AP"] == pytest.approx(100.0)
    assert sem["sem_seg"]["mIoU"] == pytest.approx(100.0)


def test_panoptic_lsj_mapper(tiny_cache):
    cfg = tiny_cfg()
    mapper = build_maskformer_train_mapper(cfg)
    assert isinstance(mapper, COCOPanopticNewBaselineDatasetMapper)
    d = DatasetCatalog.get("tiny_shapes_panoptic_train")[0]
    out = mapper(d)
    assert out["image"].shape == (3, 96, 96) and out["image"].dtype == torch.uint8
    inst = out["instances"]
    assert inst.gt_masks.dtype == torch.bool and inst.gt_masks.shape[-2:] == (96, 96)
    assert len(inst) == len(inst.gt_classes) == len(inst.gt_boxes)
    assert not inst.gt_masks.sum(0).gt(1).any()  # panoptic: disjoint
    assert set(inst.gt_classes.tolist()) <= set(range(5))


def test_mask_former_mappers(tiny_cache, tmp_path):
    d = DatasetCatalog.get("tiny_shapes_panoptic_train")[1]
    opts = ["INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.SIZE_DIVISIBILITY", "128",
            "INPUT.CROP.ENABLED", "True", "INPUT.CROP.TYPE", "absolute", "INPUT.CROP.SIZE", "(80, 80)"]
    pan = MaskFormerPanopticDatasetMapper(tiny_cfg("INPUT.DATASET_MAPPER_NAME", "mask_former_panoptic", *opts), True)
    out = pan(d)
    assert out["image"].shape == (3, 128, 128) and out["sem_seg"].shape == (128, 128)
    assert (out["image"][:, 80:, :] == 128).all() and (out["sem_seg"][80:, :] == 255).all()  # square padding
    masks, sem = out["instances"].gt_masks, out["sem_seg"]
    for m, c in zip(masks, out["instances"].gt_classes):
        assert (sem[m] == c).all()  # each segment has its class in the semantic label
    assert masks.any(0).sum() == (sem != 255).sum()

    sem_mapper = MaskFormerSemanticDatasetMapper(tiny_cfg(*opts), True)
    out = sem_mapper({k: v for k, v in d.items() if k not in ("pan_seg_file_name", "segments_info")})
    classes = out["instances"].gt_classes.tolist()
    assert classes == sorted(set(out["sem_seg"].unique().tolist()) - {255})  # one mask per class present
    for m, c in zip(out["instances"].gt_masks, classes):
        assert torch.equal(m, out["sem_seg"] == c)

    ins_mapper = MaskFormerInstanceDatasetMapper(tiny_cfg(*opts), True)
    shapes = DatasetCatalog.get("tiny_shapes_train")[1]
    out = ins_mapper(shapes)
    inst = out["instances"]
    assert out["image"].shape == (3, 128, 128) and inst.gt_masks.shape[-2:] == (128, 128)
    assert not inst.gt_masks[:, 80:, :].any() and len(inst) <= len(shapes["annotations"])


def test_instance_lsj_mapper_keeps_crop_padding_out_of_the_masks(tiny_cache):
    cfg = tiny_cfg("INPUT.DATASET_MAPPER_NAME", "coco_instance_lsj", "INPUT.MIN_SCALE", "0.5", "INPUT.MAX_SCALE", "0.5",
                   "INPUT.RANDOM_FLIP", "none")
    mapper = build_maskformer_train_mapper(cfg)
    assert isinstance(mapper, COCOInstanceNewBaselineDatasetMapper)
    d = DatasetCatalog.get("tiny_shapes_train")[0]  # RLE annotations
    out = mapper(d)
    inst = out["instances"]
    assert out["image"].shape == (3, 96, 96) and (out["image"][:, 48:, :] == 128).all()  # resized to 48, padded
    assert len(inst) == len(d["annotations"]) and inst.gt_masks.dtype == torch.bool
    assert not inst.gt_masks[:, 48:, :].any() and not inst.gt_masks[:, :, 48:].any()
    assert (inst.gt_boxes.tensor[:, 2:] <= 48).all()


def test_maskformer_optimizer_recipe():
    cfg = tiny_cfg("SOLVER.BACKBONE_MULTIPLIER", "0.1", "SOLVER.BASE_LR", "0.0001", "SOLVER.WEIGHT_DECAY", "0.05",
                   "MODEL.FOCALNET.USE_LAYERSCALE", "True")
    model = build_model(cfg)
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW) and "FullModelGradientClipping" in type(opt).__name__
    settings = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    modules = dict(model.named_modules())
    for name, p in model.named_parameters():
        module = modules[name.rsplit(".", 1)[0]]
        lr, wd = settings[id(p)]
        assert lr == pytest.approx(1e-5 if name.startswith("backbone.") else 1e-4), name
        no_decay = isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.Embedding))
        assert wd == (0.0 if no_decay else 0.05), name
    # as the official recipe: biases, layerscale and the encoder's level_embed (a Parameter) decay
    assert settings[id(model.sem_seg_head.pixel_decoder.transformer.level_embed)][1] == 0.05
    assert settings[id(model.sem_seg_head.predictor.query_feat.weight)][1] == 0.0
    assert settings[id(model.backbone.layers[0].blocks[0].gamma_1)][1] == 0.05
    # full-model clipping: the global gradient norm is at most CLIP_VALUE (0.01) when the step is taken
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    norm = torch.norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert norm == pytest.approx(0.01, rel=1e-3)


def test_a_few_iterations_lower_the_loss(tiny_cache):
    """Training on the tiny panoptic dataset through the real mapper and optimizer lowers the loss."""
    torch.manual_seed(0)
    cfg = tiny_cfg("SOLVER.BASE_LR", "0.001", "SOLVER.IMS_PER_BATCH", "2")
    model = build_model(cfg)
    model.train()
    mapper = build_maskformer_train_mapper(cfg)
    dicts = DatasetCatalog.get("tiny_shapes_panoptic_train")
    np.random.seed(0)
    batch = [mapper(d) for d in dicts[:2]]
    opt = build_optimizer(cfg, model)

    def loss():
        torch.manual_seed(1)  # the same sampled points each time
        losses = model(batch)
        assert {"loss_ce", "loss_mask", "loss_dice", "loss_ce_2", "loss_dice_2"} <= set(losses)
        assert len(losses) == 3 * cfg.MODEL.MASK_FORMER.DEC_LAYERS
        return sum(losses.values())

    with torch.no_grad():
        before = float(loss())
    for _ in range(8):
        opt.zero_grad()
        total = loss()
        total.backward()
        opt.step()
    with torch.no_grad():
        after = float(loss())
    print("loss before/after", before, after)
    assert np.isfinite(after) and after < 0.8 * before, (before, after)


def test_prepare_coco_semantic_script(tmp_path, tiny_cache):
    """The script on a COCO-layout copy of the tiny panoptic val set (categories renumbered to COCO ids)."""
    root = tmp_path / "d2"
    coco = root / "coco"
    (coco / "annotations").mkdir(parents=True)
    meta = MetadataCatalog.get("tiny_shapes_panoptic_val")
    data = json.loads(Path(meta.panoptic_json).read_text())
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
    coco_ids = [1, 2, 3, 190, 200]  # person, bicycle, car, ..., the last two stuff categories
    remap = {c["id"]: cid for c, cid in zip(TINY_PANOPTIC_CATEGORIES, coco_ids)}
    for ann in data["annotations"]:
        for s in ann["segments_info"]:
            s["category_id"] = remap[s["category_id"]]
    data["categories"] = [c for c in COCO_CATEGORIES if c["id"] in coco_ids]
    (coco / "annotations" / "panoptic_val2017.json").write_text(json.dumps(data))
    os.symlink(meta.panoptic_root, coco / "panoptic_val2017")
    proc = subprocess.run([sys.executable, "datasets/prepare_coco_semantic_annos_from_panoptic_annos.py",
                           "--root", str(root), "--splits", "val2017", "--processes", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    contiguous = {c["id"]: i for i, c in enumerate(COCO_CATEGORIES)}
    for ann in data["annotations"]:
        got = np.asarray(Image.open(coco / "panoptic_semseg_val2017" / ann["file_name"]))
        ours = np.asarray(Image.open(Path(meta.sem_seg_root) / ann["file_name"]))
        lut = np.array([contiguous[cid] for cid in coco_ids])
        assert np.array_equal(got, lut[ours])


def test_prepare_ade20k_panoptic_script_and_registration(tmp_path):
    """A two-image ADE20K layout -> panoptic PNG/json + instance json, readable as ade20k_panoptic_val."""
    root = tmp_path / "d2"
    ade = root / "ADEChallengeData2016"
    for sub in ("images/validation", "annotations/validation", "annotations_instance/validation",
                "annotations_detectron2/validation"):
        (ade / sub).mkdir(parents=True)
    for k in range(2):
        stem = f"ADE_val_{k + 1:08d}"
        Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(ade / "images/validation" / f"{stem}.jpg")
        sem = np.full((6, 8), 1, np.uint8)  # wall (stuff)
        sem[:, 6:] = 0                      # "other": void
        sem[1:3, 1:3] = 8                   # bed (thing, instance class 1)
        sem[4:6, 3:5] = 9 + k               # window (thing, class 2) / grass (stuff) in the second image
        inst = np.zeros((6, 8, 3), np.uint8)
        inst[1:3, 1:3] = (1, 1, 0)
        if k == 0:
            inst[4:6, 3:5] = (2, 2, 0)
        Image.fromarray(sem).save(ade / "annotations/validation" / f"{stem}.png")
        Image.fromarray(inst).save(ade / "annotations_instance/validation" / f"{stem}.png")
        Image.fromarray(np.where(sem == 0, 255, sem - 1).astype(np.uint8)).save(
            ade / "annotations_detectron2/validation" / f"{stem}.png")
    proc = subprocess.run([sys.executable, "datasets/prepare_ade20k_pan_seg.py", "--root", str(root), "--splits", "val"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    pan = json.loads((ade / "ade20k_panoptic_val.json").read_text())
    assert len(pan["categories"]) == 150 and sum(c["isthing"] for c in pan["categories"]) == 100
    first = {s["category_id"]: s["area"] for s in pan["annotations"][0]["segments_info"]}
    assert first == {7: 4, 8: 4, 0: 36 - 4 - 4}  # bed, window (things), wall (stuff); "other" is void
    second = {s["category_id"]: s["area"] for s in pan["annotations"][1]["segments_info"]}
    assert second == {7: 4, 9: 4, 0: 28}  # grass is stuff
    ins = json.loads((ade / "ade20k_instance_val.json").read_text())
    assert sorted(a["category_id"] for a in ins["annotations"]) == [7, 7, 8]
    ids = rgb2id(np.asarray(Image.open(ade / "ade20k_panoptic_val" / "ADE_val_00000001.png")))
    assert (ids[:, 6:] == 0).all() and len(np.unique(ids)) == 4

    # mask AP of the ground truth through InstanceSegEvaluator (things are not the contiguous ids 0..99)
    from focalnet_det.data.datasets.register_ade20k_panoptic import get_ade20k_panoptic_metadata
    from focalnet_det.evaluation import InstanceSegEvaluator

    name = f"test_ade20k_instances_{tmp_path.name}"
    meta = get_ade20k_panoptic_metadata()
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(json_file=str(ade / "ade20k_instance_val.json"), thing_classes=meta["thing_classes"],
                                  thing_dataset_id_to_contiguous_id=meta["thing_dataset_id_to_contiguous_id"])
    evaluator = InstanceSegEvaluator(name, tasks=("segm",), output_dir=None, use_fast_impl=False)
    evaluator.reset()
    for ann in pan["annotations"]:
        pan_ids = rgb2id(np.asarray(Image.open(ade / "ade20k_panoptic_val" / ann["file_name"])))
        segs = ann["segments_info"]
        inst = Instances(pan_ids.shape)
        inst.pred_masks = torch.stack([torch.as_tensor(pan_ids == s["id"]) for s in segs]).float()
        inst.pred_boxes = Boxes(torch.zeros(len(segs), 4))
        inst.scores = torch.ones(len(segs))
        inst.pred_classes = torch.tensor([s["category_id"] for s in segs])  # wall (stuff, 0) is dropped
        evaluator.process([{"image_id": ann["image_id"]}], [{"instances": inst}])
    assert evaluator.evaluate()["segm"]["AP"] == pytest.approx(100.0)

    code = ("import focalnet_det; from detectron2.data import DatasetCatalog, MetadataCatalog;"
            "d = DatasetCatalog.get('ade20k_panoptic_val'); m = MetadataCatalog.get('ade20k_panoptic_val');"
            "print(len(d), sorted(s['category_id'] for s in d[0]['segments_info']), d[0]['sem_seg_file_name'].endswith('.png'),"
            " m.evaluator_type, len(m.thing_dataset_id_to_contiguous_id))")
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, DETECTRON2_DATASETS=str(root)),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "[0,", "7,", "8]", "True", "ade20k_panoptic_seg", "100"]


def test_panoptic_png_roundtrip():
    ids = np.array([[0, 1, 256], [70000, 16777215, 5]])
    assert np.array_equal(rgb2id(id2rgb(ids)), ids)


def test_train_net_trains_and_evaluates_the_tiny_config(tmp_path):
    """tools/train_net.py with the tiny config (a smaller model, 3 iterations): the Mask2Former mapper, optimizer
    and evaluators are wired in, and PQ, mask AP and mIoU come out."""
    opts = [o for pair in zip(SMALL_MODEL[::2], SMALL_MODEL[1::2]) for o in pair]
    proc = subprocess.run(
        [sys.executable, "tools/train_net.py", "--config-file", TINY, "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2",
         *opts, "OUTPUT_DIR", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    for line in ("copypaste: Task: panoptic_seg", "copypaste: Task: segm", "copypaste: Task: sem_seg"):
        assert line in log, line
    assert (tmp_path / "model_final.pth").is_file()
