"""tools/train_net.py: help, user errors as one line, the optimizer recipe, and a short training run."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BASE = "configs/COCO-InstanceSegmentation/mask_rcnn_focalnet_tiny_srf_1x.yaml"
TINY = "configs/Tiny/mask_rcnn_focalnet_tiny_shapes.yaml"
SMALL_MODEL = ["MODEL.FOCALNET.DEPTHS", "[1,1,1,1]", "MODEL.FOCALNET.EMBED_DIM", "16", "MODEL.WEIGHTS", ""]


def run_tool(*args, tmp_path):
    return subprocess.run(
        [sys.executable, "tools/train_net.py", *args, "OUTPUT_DIR", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    for needle in needles:
        assert needle in last, last


def test_help_explains_itself():
    proc = subprocess.run([sys.executable, "tools/train_net.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0
    for flag in ("--config-file", "--eval-only", "--resume", "--num-gpus", "--num-machines", "--dist-url"):
        assert flag in proc.stdout
    assert "DETECTRON2_DATASETS" in proc.stdout


def test_missing_config_file(tmp_path):
    assert_one_line_error(run_tool("--config-file", "configs/nope.yaml", tmp_path=tmp_path), "configs/nope.yaml")


def test_unknown_config_key_in_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f'_BASE_: "{os.path.abspath(os.path.join(ROOT, BASE))}"\nMODEL:\n  FOCALNET:\n    FOCAL_LEVEL: 3\n')
    assert_one_line_error(run_tool("--config-file", str(bad), tmp_path=tmp_path), "bad.yaml", "MODEL.FOCALNET.FOCAL_LEVEL")


def test_unknown_override_key(tmp_path):
    proc = run_tool("--config-file", BASE, "SOLVER.NOT_A_KEY", "1", tmp_path=tmp_path)
    assert_one_line_error(proc, "SOLVER.NOT_A_KEY")


def test_missing_weights_file(tmp_path):
    proc = run_tool("--config-file", BASE, "--eval-only", *SMALL_MODEL[:-2], "MODEL.WEIGHTS", "/no/such/weights.pth",
                    tmp_path=tmp_path)
    assert_one_line_error(proc, "/no/such/weights.pth")


def test_optimizer_has_no_decay_on_norms_biases_and_gammas():
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from focalnet_det import add_focalnet_config
    from focalnet_det.solver import build_optimizer

    cfg = get_cfg()
    add_focalnet_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, BASE))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.FOCALNET.USE_LAYERSCALE", "True", *SMALL_MODEL])
    model = build_model(cfg)
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["lr"] == pytest.approx(1e-4)
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        no_decay = name.endswith(".bias") or ".norm" in name or "gamma_" in name or name.split(".")[-2] == "norm"
        assert decay[id(p)] == (0.0 if no_decay else 0.05), name
    assert decay[id(model.backbone.bottom_up.layers[0].blocks[0].modulation.f.weight)] == 0.05


def test_detection_augmentation_crop_branch():
    from detectron2.config import get_cfg
    from detectron2.data import transforms as T
    from focalnet_det import add_focalnet_config
    from focalnet_det.data.augmentation import build_detection_augmentation

    cfg = get_cfg()
    add_focalnet_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, BASE))
    augs = build_detection_augmentation(cfg, is_train=True)
    image = np.random.randint(0, 255, (900, 1200, 3), dtype=np.uint8)
    shorts = set()
    for seed in range(30):
        np.random.seed(seed)
        aug_input = T.AugInput(image.copy())
        T.AugmentationList(augs)(aug_input)
        h, w = aug_input.image.shape[:2]
        assert min(h, w) in cfg.INPUT.MIN_SIZE_TRAIN and max(h, w) <= 1333
        shorts.add(round(w / h, 2))
    # the crop branch changes the aspect ratio (900x1200 is 0.75 -> 1.33 otherwise)
    assert len(shorts) > 1 and 1.33 in shorts


def test_a_few_iterations_lower_the_loss(tmp_path, monkeypatch):
    """Training on the built-in tiny dataset: the loss of the last iterations is below that of the first."""
    monkeypatch.setenv("FOCALNET_DET_CACHE", str(tmp_path / "cache"))
    from detectron2.utils.events import EventStorage
    from train_net import Trainer, setup

    args = type("Args", (), {})()
    args.config_file = os.path.join(ROOT, TINY)
    args.opts = ["OUTPUT_DIR", str(tmp_path / "out"), "SOLVER.MAX_ITER", "40", "SOLVER.IMS_PER_BATCH", "2",
                 "MODEL.FOCALNET.DEPTHS", "[1,1,2,1]", "MODEL.FOCALNET.EMBED_DIM", "32",
                 "DATALOADER.NUM_WORKERS", "0", "SOLVER.WARMUP_ITERS", "5", "TEST.EVAL_PERIOD", "0", "SEED", "0"]
    args.eval_only, args.resume, args.num_gpus, args.machine_rank = False, False, 1, 0
    torch.manual_seed(0)
    cfg = setup(args)
    trainer = Trainer(cfg)
    model, optimizer = trainer.model, trainer.optimizer
    model.train()
    batch = next(iter(trainer.data_loader))  # one fixed batch: the loss on it must fall
    losses = []
    with EventStorage(0):
        for _ in range(cfg.SOLVER.MAX_ITER):
            loss = sum(model(batch).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
