"""UPerNet on FocalNet: head shapes, losses, configs (parameter counts), multi-scale test, mmseg checkpoints,
the semantic data pipeline and evaluator, and a short training run on the tiny semantic dataset."""
import copy
import os
import time

import cv2
import numpy as np
import pytest
import torch

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_backbone, build_model
from detectron2.modeling.meta_arch.semantic_seg import build_sem_seg_head

from focalnet_det import add_focalnet_config
from focalnet_det.checkpoint import FocalNetCheckpointer
from focalnet_det.data.dataset_mappers.upernet import PhotometricDistortion, ResizeScaleRatio, SemSegDatasetMapper
from focalnet_det.evaluation import build_sem_seg_evaluator
from focalnet_det.modeling.upernet import SemanticSegmentorWithTTA

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
ADE = os.path.join(ROOT, "configs", "ADE20K-SemanticSegmentation")
TINY = os.path.join(ROOT, "configs", "Tiny", "upernet_focalnet_tiny_shapes.yaml")
# a FocalNet small enough for fast tests; the head keeps its structure with fewer channels
SMALL = [
    "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu",
    "MODEL.FOCALNET.EMBED_DIM", "16", "MODEL.FOCALNET.DEPTHS", "[1,1,1,1]",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.UPERNET.AUX_CHANNELS", "32",
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5", "MODEL.SEM_SEG_HEAD.NORM", "BN",
]


def make_cfg(config=TINY, opts=()):
    cfg = get_cfg()
    add_focalnet_config(cfg)
    cfg.merge_from_file(config)
    cfg.merge_from_list(list(opts))
    return cfg


def small_model(opts=(), seed=0):
    torch.manual_seed(seed)
    return build_model(make_cfg(opts=[*SMALL, *opts]))


# --------------------------------------------------------------------------------------------------
# configs


# published totals (microsoft/FocalNet README rounded to 1 M; these are the exact sums of the mmseg modules)
PARAMS = {
    "tiny_srf": 60.82, "tiny_lrf": 61.57, "small_srf": 83.06, "small_lrf": 84.59, "base_srf": 123.69, "base_lrf": 125.73,
}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts_match_the_official_models(name):
    cfg = make_cfg(os.path.join(ADE, f"upernet_focalnet_{name}_160k.yaml"))
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        backbone = build_backbone(cfg)
        head = build_sem_seg_head(cfg, backbone.output_shape())
    count = sum(p.numel() for m in (backbone, head) for p in m.parameters()) / 1e6
    assert count == pytest.approx(PARAMS[name], rel=0.005), f"{name}: {count:.3f} M"
    assert hasattr(head, "auxiliary_head")


@pytest.mark.parametrize("name", [f"{v}_{k}" for v in ("tiny", "small", "base") for k in ("srf", "lrf")] +
                         ["large_fl3", "large_fl4"])
def test_ade20k_configs_carry_the_recipe(name):
    cfg = make_cfg(os.path.join(ADE, f"upernet_focalnet_{name}_160k.yaml"))
    s, i = cfg.SOLVER, cfg.INPUT
    assert (s.OPTIMIZER, s.BASE_LR, s.WEIGHT_DECAY, s.WEIGHT_DECAY_NORM) == ("ADAMW", 6e-5, 0.01, 0.0)
    assert (s.LR_SCHEDULER_NAME, s.POLY_LR_POWER, s.WARMUP_ITERS, s.WARMUP_FACTOR) == ("WarmupPolyLR", 1.0, 1500, 1e-6)
    assert (s.IMS_PER_BATCH, s.MAX_ITER) == (16, 160000)
    crop = 640 if name.startswith("large") else 512
    assert tuple(i.CROP.SIZE) == (crop, crop) and i.CROP.SINGLE_CATEGORY_MAX_AREA == 0.75
    assert (i.MIN_SIZE_TRAIN, i.MAX_SIZE_TRAIN, tuple(i.RESIZE_RATIO_RANGE)) == ((crop,), 4 * crop, (0.5, 2.0))
    assert i.COLOR_AUG_SSD and i.RANDOM_FLIP == "horizontal"
    assert cfg.MODEL.FOCALNET.DROP_PATH_RATE == 0.3
    assert list(cfg.TEST.AUG.RATIOS) == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75] and cfg.TEST.AUG.FLIP
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 150 and cfg.MODEL.UPERNET.AUX_LOSS_WEIGHT == 0.4
    if name.startswith("large"):
        assert cfg.MODEL.FOCALNET.EMBED_DIM == 192 and "384" in cfg.MODEL.WEIGHTS  # IN-22K
        assert cfg.MODEL.FOCALNET.NORMALIZE_MODULATOR == name.endswith("fl4")


def test_poly_schedule_matches_mmcv():
    """mmcv: lr = base * (1 - i/max)^power, times the linear warm-up factor 1 - (1 - i/W)(1 - ratio)."""
    import sys

    sys.path.insert(0, os.path.join(ROOT, "tools"))
    from train_net import Trainer

    cfg = make_cfg(os.path.join(ADE, "upernet_focalnet_tiny_srf_160k.yaml"))
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
    sched = Trainer.build_lr_scheduler(cfg, opt)
    base, warm, total = 6e-5, 1500, 160000
    for it in range(3001):
        if it in (0, 750, 1500, 3000):
            factor = 1 - (1 - it / warm) * (1 - 1e-6) if it < warm else 1.0
            assert opt.param_groups[0]["lr"] == pytest.approx(base * (1 - it / total) * factor, rel=1e-6, abs=1e-14)
        opt.step()
        sched.step()


# --------------------------------------------------------------------------------------------------
# the head


@pytest.mark.parametrize("size", [(75, 101), (97, 61)])
def test_output_shape_and_stride_for_odd_sizes(size):
    model = small_model().eval()
    h, w = size
    image = torch.randint(0, 255, (3, h, w), dtype=torch.uint8)
    with torch.no_grad():
        out = model([{"image": image}])[0]["sem_seg"]
        assert out.shape == (5, h, w)
        out = model([{"image": image, "height": 2 * h + 1, "width": w - 3}])[0]["sem_seg"]
        assert out.shape == (5, 2 * h + 1, w - 3)

        # the head alone: logits at stride 4 of the finest feature, upsampled x4 at inference
        x = torch.randn(1, 3, h, w)
        features = model.backbone(x)
        assert features["res2"].shape[-2:] == (-(-h // 4), -(-w // 4))
        logits = model.sem_seg_head.layers(features)
        assert logits.shape == (1, 5, *features["res2"].shape[-2:])
        up, losses = model.sem_seg_head(features)
        assert losses == {} and up.shape[-2:] == (4 * logits.shape[-2], 4 * logits.shape[-1])
        assert up.shape[-2] >= h and up.shape[-1] >= w


def test_auxiliary_loss_in_training_only():
    model = small_model()
    calls = []
    model.sem_seg_head.auxiliary_head.register_forward_hook(lambda *a: calls.append(1))
    batch = [{"image": torch.randint(0, 255, (3, 64, 80), dtype=torch.uint8),
              "sem_seg": torch.randint(0, 5, (64, 80))} for _ in range(2)]
    batch[0]["sem_seg"][:10] = 255  # ignored pixels
    model.train()
    losses = model(batch)
    assert set(losses) == {"loss_sem_seg", "loss_aux"} and len(calls) == 1
    # CE of a near-uniform initial prediction, ~ln 5; the auxiliary loss weighted 0.4
    assert losses["loss_sem_seg"].item() == pytest.approx(np.log(5) * (1 - 20 / 128), rel=0.1)
    assert losses["loss_aux"].item() == pytest.approx(0.4 * losses["loss_sem_seg"].item(), rel=0.1)
    sum(losses.values()).backward()
    assert model.sem_seg_head.auxiliary_head.conv_seg.weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        out = model(batch)  # targets given, still only predictions
    assert isinstance(out, list) and set(out[0]) == {"sem_seg"} and len(calls) == 1

    no_aux = small_model(["MODEL.UPERNET.AUX_IN_FEATURE", ""])
    assert not hasattr(no_aux.sem_seg_head, "auxiliary_head")
    assert set(no_aux.train()(batch)) == {"loss_sem_seg"}


def test_loss_normalisation_and_all_ignored_batch():
    model = small_model().train()
    # two images: the 1x1 pyramid-pooling cell needs more than one value per channel for BatchNorm (as in mmseg)
    batch = [{"image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8), "sem_seg": torch.full((64, 64), 255)}
             for _ in range(2)]
    losses = model(batch)
    assert all(torch.isfinite(v) and v.item() == 0 for v in losses.values())  # mmseg: mean over all pixels
    d2 = small_model(["MODEL.UPERNET.LOSS_AVERAGE_ALL_PIXELS", "False"]).train()
    for b in batch:
        b["sem_seg"][:32] = 1
    half, full = model(batch)["loss_sem_seg"], d2(batch)["loss_sem_seg"]
    assert half.item() == pytest.approx(full.item() / 2, rel=0.05)


def test_norms_are_selectable():
    for norm, cls in (("BN", torch.nn.BatchNorm2d), ("SyncBN", torch.nn.SyncBatchNorm), ("GN", torch.nn.GroupNorm)):
        head = small_model(["MODEL.SEM_SEG_HEAD.NORM", norm]).sem_seg_head
        module = head.bottleneck.gn if norm == "GN" else head.bottleneck.bn
        assert isinstance(module, cls)


# --------------------------------------------------------------------------------------------------
# multi-scale test


def test_tta_with_scale_one_and_no_flip_equals_plain_inference():
    opts = ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "256"]
    model = small_model(opts).eval()
    cfg = make_cfg(opts=[*SMALL, *opts, "TEST.AUG.RATIOS", "[1.0]", "TEST.AUG.FLIP", "False"])
    tta = SemanticSegmentorWithTTA(cfg, model)
    # an image at the test size (64 short side) that came from a 96 x 120 original
    inputs = [{"image": torch.randint(0, 255, (3, 64, 80), dtype=torch.uint8), "height": 96, "width": 120}]
    with torch.no_grad():
        plain = model(copy.deepcopy(inputs))[0]["sem_seg"]
        out = tta(copy.deepcopy(inputs))[0]["sem_seg"]
    assert out.shape == plain.shape == (5, 96, 120)
    torch.testing.assert_close(out, plain.softmax(0), rtol=0, atol=1e-6)
    assert torch.equal(out.argmax(0), plain.argmax(0))

    # the full multi-scale + flip test: 6 scales x 2 views, probabilities at the original size
    ms = SemanticSegmentorWithTTA(make_cfg(opts=[*SMALL, *opts]), model)
    assert ms.sizes == [(32, 128), (48, 192), (64, 256), (80, 320), (96, 384), (112, 448)] and ms.flip
    calls = []
    handle = model.register_forward_hook(lambda m, i, o: calls.append(i[0][0]["image"].shape))
    with torch.no_grad():
        out = ms(copy.deepcopy(inputs))[0]["sem_seg"]
    handle.remove()
    assert len(calls) == 12 and calls[0] == (3, 32, 40) and calls[-1] == (3, 112, 140)
    assert out.shape == (5, 96, 120)
    torch.testing.assert_close(out.sum(0), torch.ones(96, 120))


# --------------------------------------------------------------------------------------------------
# mmseg checkpoints


def mmseg_upernet_state_dict(backbone_sd, in_channels, channels, num_classes, aux_channels, scales=(1, 2, 3, 6)):
    """An mmseg EncoderDecoder state dict with the names and shapes of mmseg 0.x's UPerHead and FCNHead
    (written out here from mmseg's module structure, not from our model)."""
    sd = {f"backbone.{k}": torch.randn(v.shape) for k, v in backbone_sd.items()}

    def conv_module(prefix, cin, cout, k):
        sd[f"{prefix}.conv.weight"] = torch.randn(cout, cin, k, k)
        for name in ("weight", "bias", "running_mean"):
            sd[f"{prefix}.bn.{name}"] = torch.randn(cout)
        sd[f"{prefix}.bn.running_var"] = torch.rand(cout) + 0.5
        sd[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(160000)

    for i, _ in enumerate(scales):
        conv_module(f"decode_head.psp_modules.{i}.1", in_channels[-1], channels, 1)
    conv_module("decode_head.bottleneck", in_channels[-1] + len(scales) * channels, channels, 3)
    for i, c in enumerate(in_channels[:-1]):
        conv_module(f"decode_head.lateral_convs.{i}", c, channels, 1)
        conv_module(f"decode_head.fpn_convs.{i}", channels, channels, 3)
    conv_module("decode_head.fpn_bottleneck", len(in_channels) * channels, channels, 3)
    sd["decode_head.conv_seg.weight"] = torch.randn(num_classes, channels, 1, 1)
    sd["decode_head.conv_seg.bias"] = torch.randn(num_classes)
    conv_module("auxiliary_head.convs.0", in_channels[2], aux_channels, 3)
    sd["auxiliary_head.conv_seg.weight"] = torch.randn(num_classes, aux_channels, 1, 1)
    sd["auxiliary_head.conv_seg.bias"] = torch.randn(num_classes)
    return sd


def test_mmseg_checkpoint_converts_and_loads_strictly(tmp_path):
    import convert_checkpoint

    model = small_model()
    backbone_sd = model.backbone.state_dict()
    mmseg = mmseg_upernet_state_dict(backbone_sd, [16, 32, 64, 128], channels=32, num_classes=5, aux_channels=32)
    src, dst = tmp_path / "upernet_mmseg.pth", tmp_path / "upernet_d2.pth"
    torch.save({"meta": {"mmseg_version": "0.11.0", "CLASSES": ["a"] * 5}, "state_dict": mmseg}, src)
    assert convert_checkpoint.main([str(src), str(dst)]) == 0

    converted = torch.load(dst, weights_only=True)["model"]
    model_sd = model.state_dict()
    assert not set(model_sd) - set(converted), "missing"
    assert not set(converted) - set(model_sd), "unexpected"
    assert len(converted) == len(mmseg)

    FocalNetCheckpointer(model).load(str(dst))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, converted[key], rtol=0, atol=0, msg=key)
    assert torch.equal(model.sem_seg_head.auxiliary_head.convs[0].bn.running_var,
                       mmseg["auxiliary_head.convs.0.bn.running_var"])
    assert torch.equal(model.sem_seg_head.psp_modules[3][1].conv.weight, mmseg["decode_head.psp_modules.3.1.conv.weight"])


def test_mmseg_checkpoint_loads_directly_as_model_weights(tmp_path):
    """A released mmseg UPerNet file given as MODEL.WEIGHTS loads whole (heads too), without converting."""
    from focalnet_det.checkpoint.mmseg import mmseg_upernet_to_detectron2

    other = small_model(seed=1).backbone.state_dict()  # weights the model does not start with
    mmseg = mmseg_upernet_state_dict(other, [16, 32, 64, 128], channels=32, num_classes=5, aux_channels=32)
    src = tmp_path / "upernet_mmseg.pth"
    torch.save({"meta": {"mmseg_version": "0.11.0"}, "state_dict": mmseg}, src)
    model = small_model()
    FocalNetCheckpointer(model).load(str(src))
    expected = mmseg_upernet_to_detectron2(mmseg)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)


# --------------------------------------------------------------------------------------------------
# data and evaluation


def test_resize_scale_ratio_follows_mmseg():
    """mmcv imrescale to r * (2048, 512): scale = r * min(2048 / long side, 512 / short side), sizes rounded."""
    aug = ResizeScaleRatio(512, 2048, (0.5, 2.0))
    for seed, (h, w) in enumerate([(300, 400), (100, 1000), (683, 512), (512, 4000)]):
        np.random.seed(seed)
        r = np.random.uniform(0.5, 2.0)
        np.random.seed(seed)
        tfm = aug.get_transform(np.zeros((h, w, 3), np.uint8))
        scale = r * min(2048 / max(h, w), 512 / min(h, w))
        assert (tfm.h, tfm.w) == (h, w)
        assert abs(tfm.new_h - int(h * scale + 0.5)) <= 1 and abs(tfm.new_w - int(w * scale + 0.5)) <= 1


def test_photometric_distortion_changes_colours_only():
    np.random.seed(0)
    image = np.random.randint(0, 256, (32, 40, 3), dtype=np.uint8)
    label = np.random.randint(0, 5, (32, 40)).astype(np.uint8)
    unchanged = 0
    for _ in range(200):
        tfm = PhotometricDistortion("RGB").get_transform(image)
        out = tfm.apply_image(image.copy())
        assert out.shape == image.shape and out.dtype == np.uint8
        assert np.array_equal(tfm.apply_segmentation(label.copy()), label)
        unchanged += np.array_equal(out, image)
    assert unchanged < 30  # each of the four distortions is applied with probability 0.5: none in 1/16 of draws


def test_train_mapper_crops_flips_and_pads_to_crop_size():
    cfg = make_cfg(os.path.join(ADE, "upernet_focalnet_tiny_srf_160k.yaml"), ["INPUT.CROP.SIZE", "(192, 192)"])
    mapper = SemSegDatasetMapper(cfg, is_train=True)
    names = [type(a).__name__ for a in mapper.augmentations.augs]
    assert names == ["ResizeScaleRatio", "RandomCrop_CategoryAreaConstraint", "RandomFlip", "PhotometricDistortion"]
    d = DatasetCatalog.get("tiny_shapes_sem_seg_train")[0]
    np.random.seed(1)
    for _ in range(5):  # a 160 px image resized to 256-1024 px, cropped to 192 px
        out = mapper(d)
        assert out["image"].shape == (3, 192, 192) and out["image"].dtype == torch.uint8
        assert out["sem_seg"].shape == (192, 192) and out["sem_seg"].dtype == torch.int64
        labels = set(out["sem_seg"].unique().tolist())
        assert labels <= {0, 1, 2, 3, 4, 255}
    # crops larger than the resized image: padded with the pixel mean (0 once normalised) and the ignore label
    big = SemSegDatasetMapper(make_cfg(os.path.join(ADE, "upernet_focalnet_tiny_srf_160k.yaml"),
                                       ["INPUT.CROP.SIZE", "(1100, 1100)"]), is_train=True)
    out = big(d)
    assert out["image"].shape == (3, 1100, 1100) and out["sem_seg"].shape == (1100, 1100)
    assert out["image"][:, -1, -1].tolist() == [124, 116, 104] and out["sem_seg"][-1, -1] == 255
    test = SemSegDatasetMapper(cfg, is_train=False)(d)
    assert "sem_seg" not in test and test["image"].shape == (3, 512, 512)


def test_sem_seg_evaluator_gives_100_for_ground_truth(tmp_path):
    # a dataset with ignored pixels (255), beside the built-in tiny one
    name = "test_upernet_gt_as_prediction"
    rng = np.random.default_rng(0)
    dicts = []
    for i in range(3):
        label = rng.integers(0, 3, size=(20 + i, 30)).astype(np.uint8)
        label[:, :4] = 255
        cv2.imwrite(str(tmp_path / f"{i}_gt.png"), label)
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.zeros((20 + i, 30, 3), np.uint8))
        dicts.append({"file_name": str(tmp_path / f"{i}.png"), "sem_seg_file_name": str(tmp_path / f"{i}_gt.png"),
                      "height": 20 + i, "width": 30})
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: dicts)
        MetadataCatalog.get(name).set(stuff_classes=["a", "b", "c"], ignore_label=255, evaluator_type="sem_seg")

    for dataset in (name, "tiny_shapes_sem_seg_val"):
        evaluator = build_sem_seg_evaluator(dataset, distributed=False)
        evaluator.reset()
        num_classes = len(MetadataCatalog.get(dataset).stuff_classes)
        for d in DatasetCatalog.get(dataset):
            gt = torch.as_tensor(cv2.imread(d["sem_seg_file_name"], cv2.IMREAD_UNCHANGED).astype(np.int64))
            logits = torch.nn.functional.one_hot(gt.clamp(max=num_classes - 1), num_classes).permute(2, 0, 1).float()
            evaluator.process([d], [{"sem_seg": logits}])
        res = evaluator.evaluate()["sem_seg"]
        assert res["mIoU"] == pytest.approx(100) and res["pACC"] == pytest.approx(100), dataset


def test_prepare_ade20k_shifts_labels(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("prepare_ade", os.path.join(ROOT, "datasets", "prepare_ade20k_sem_seg.py"))
    prep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prep)
    base = tmp_path / "ADEChallengeData2016"
    for split in prep.SPLITS:
        (base / "annotations" / split).mkdir(parents=True)
        cv2.imwrite(str(base / "annotations" / split / "a.png"), np.array([[0, 1, 150], [2, 0, 75]], np.uint8))
    assert prep.main(["--root", str(tmp_path), "--workers", "1"]) == 0
    for split in prep.SPLITS:
        out = cv2.imread(str(base / "annotations_detectron2" / split / "a.png"), cv2.IMREAD_UNCHANGED)
        assert out.tolist() == [[255, 0, 149], [1, 255, 74]]
    assert prep.main(["--root", str(tmp_path / "nope")]) == 2


def test_tiny_semantic_dataset_is_registered():
    """The semantic view of tiny_shapes_panoptic: same images, same labels, evaluated by SemSegEvaluator."""
    meta = MetadataCatalog.get("tiny_shapes_sem_seg_val")
    assert meta.evaluator_type == "sem_seg" and meta.ignore_label == 255
    assert meta.stuff_classes == ["circle", "square", "triangle", "dark background", "light background"]
    assert len(meta.stuff_colors) == 5
    for split in ("train", "val"):
        sem = DatasetCatalog.get(f"tiny_shapes_sem_seg_{split}")
        pan = DatasetCatalog.get(f"tiny_shapes_panoptic_{split}")
        assert [(d["file_name"], d["sem_seg_file_name"]) for d in sem] == \
            [(d["file_name"], d["sem_seg_file_name"]) for d in pan]
    label = cv2.imread(sem[0]["sem_seg_file_name"], cv2.IMREAD_UNCHANGED)
    assert label.shape == (160, 160) and set(np.unique(label)) <= {0, 1, 2, 3, 4}


# --------------------------------------------------------------------------------------------------
# a short training run


def evaluate(cfg, model, dataset):
    import train_net
    from detectron2.evaluation import inference_on_dataset

    loader = train_net.Trainer.build_test_loader(cfg, dataset)
    return inference_on_dataset(model, loader, build_sem_seg_evaluator(dataset, distributed=False))["sem_seg"]


def test_short_training_run_beats_chance():
    """The tiny config's model and pipeline (Trainer's mapper, optimizer, poly schedule, evaluator) on a short
    schedule, single-threaded and seeded: mIoU on tiny_shapes_sem_seg_val against always predicting the most
    frequent class (the best image-blind guess)."""
    import random

    import train_net

    iters = 320
    cfg = make_cfg(TINY, ["SOLVER.MAX_ITER", str(iters), "DATALOADER.NUM_WORKERS", "0"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops on a busy machine: one thread is much faster
    try:
        random.seed(0), np.random.seed(0), torch.manual_seed(0)
        model = build_model(cfg)
        opt = train_net.Trainer.build_optimizer(cfg, model)
        sched = train_net.Trainer.build_lr_scheduler(cfg, opt)
        loader = iter(train_net.Trainer.build_train_loader(cfg))
        start = time.time()
        model.train()
        for _ in range(iters):
            losses = model(next(loader))
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
            sched.step()
        train_time = time.time() - start
        model.eval()
        with torch.no_grad():
            res = evaluate(cfg, model, "tiny_shapes_sem_seg_val")
    finally:
        torch.set_num_threads(threads)

    dataset = DatasetCatalog.get("tiny_shapes_sem_seg_val")
    counts = sum(np.bincount(cv2.imread(d["sem_seg_file_name"], cv2.IMREAD_UNCHANGED).ravel(), minlength=256)
                 for d in dataset)
    majority = int(counts[:255].argmax())

    class Constant(torch.nn.Module):
        def forward(self, inputs):
            return [{"sem_seg": torch.nn.functional.one_hot(torch.full((x["height"], x["width"]), majority), 5)
                     .permute(2, 0, 1).float()} for x in inputs]

    chance = evaluate(cfg, Constant(), "tiny_shapes_sem_seg_val")
    classes = MetadataCatalog.get("tiny_shapes_sem_seg_val").stuff_classes
    print(f"\ntiny UPerNet, {iters} iterations in {train_time:.0f} s: mIoU {res['mIoU']:.1f} "
          f"(always {classes[majority]!r}: {chance['mIoU']:.1f}); IoU {[round(res['IoU-' + c], 1) for c in classes]}")
    assert chance["mIoU"] < 12
    assert res["mIoU"] > 2.5 * chance["mIoU"]
    assert min(res["IoU-" + c] for c in classes[3:]) > 75  # both background kinds
    assert max(res["IoU-" + c] for c in classes[:3]) > 10  # shapes found


def test_train_net_trains_and_evaluates_single_and_multi_scale(tmp_path):
    """tools/train_net.py on the tiny config (a few iterations): semantic mapper, poly schedule, SemSegEvaluator,
    and with TEST.AUG.ENABLED the multi-scale + flip result under sem_seg_MS."""
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "tools/train_net.py", "--config-file", TINY, "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2",
         "TEST.AUG.RATIOS", "[1.0, 1.25]", "OUTPUT_DIR", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "WarmupPolyLR" in (tmp_path / "config.yaml").read_text()
    assert log.count("copypaste: Task: sem_seg") == 2  # single-scale, then multi-scale + flip
    assert (tmp_path / "inference" / "sem_seg_predictions.json").is_file()
    assert (tmp_path / "inference_MS" / "sem_seg_predictions.json").is_file()
