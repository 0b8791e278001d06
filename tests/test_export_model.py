"""tools/export_model.py: the exported files, run on their own (torch.jit.load / onnxruntime), against eager models
the test builds itself from the same checkpoint; refusals and the failed check."""
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_backbone, build_model

import focalnet_det  # noqa: F401
from focalnet_det import add_focalnet_config
from focalnet_det.errors import UserError

import export_model  # tools/ (conftest puts it on the path)

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "Tiny"
UPERNET = "upernet_focalnet_tiny_shapes.yaml"
MASK_RCNN = "mask_rcnn_focalnet_tiny_shapes.yaml"
M2F = "maskformer2_focalnet_tiny_shapes.yaml"
SLIM = ["MODEL.FOCALNET.EMBED_DIM", "16", "MODEL.FOCALNET.DEPTHS", "[1,1,1,1]", "MODEL.DEVICE", "cpu"]
HEADS = {  # narrower heads where the Tiny config's are wide
    MASK_RCNN: ["MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
                "MODEL.ROI_MASK_HEAD.CONV_DIM", "32"],
    M2F: ["MODEL.SEM_SEG_HEAD.CONVS_DIM", "64", "MODEL.SEM_SEG_HEAD.MASK_DIM", "64",
          "MODEL.MASK_FORMER.HIDDEN_DIM", "64", "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "128"],
    UPERNET: [],
}
# tracing and loading TorchScript is what these tests do: torch's deprecation notices are noise here
pytestmark = [
    pytest.mark.usefixtures("one_thread"),  # conftest: small tensors, one thread
    pytest.mark.filterwarnings(r"ignore:.*torch\.jit\.\w+.* is deprecated:FutureWarning"),
    pytest.mark.filterwarnings(r"ignore:torch\.meshgrid. in an upcoming release:UserWarning"),  # Detectron2's anchors
]
H, W = 64, 96  # a sample image not a multiple of the pyramid pooling's bins at stride 32 (2x3)


def make_cfg(config, opts=()):
    cfg = get_cfg()
    add_focalnet_config(cfg)
    cfg.merge_from_file(str(TINY / config))
    cfg.merge_from_list(SLIM + HEADS[config] + list(opts))
    return cfg


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    path = tmp_path_factory.mktemp("sample") / "sample.png"
    y, x = np.mgrid[:H, :W]
    image = np.stack([x * 2.5, y * 3.5, (x + y) * 1.5], -1).astype(np.uint8)
    cv2.circle(image, (30, 30), 15, (0, 0, 255), -1)
    cv2.imwrite(str(path), image)
    return path


def checkpoint(tmp_path, config, seed=0, backbone_only=False):
    """A Detectron2 checkpoint of a freshly initialised model (the bare backbone under backbone.); the model."""
    cfg = make_cfg(config)
    torch.manual_seed(seed)
    if backbone_only:
        cfg.MODEL.BACKBONE.NAME = "build_focalnet_backbone"
        model = torch.nn.Module()
        model.backbone = build_backbone(cfg)
    else:
        model = build_model(cfg)
    path = tmp_path / "weights.pth"
    torch.save({"model": model.state_dict()}, path)
    return str(path), cfg


def export(tmp_path, config, fmt, sample, weights, *extra):
    out = tmp_path / "export"
    code = export_model.main(["--config-file", str(TINY / config), "--format", fmt, "--output", str(out),
                              "--sample-image", str(sample), *extra, *SLIM, *HEADS[config], "MODEL.WEIGHTS", weights])
    return code, out


def eager_model(cfg, weights):
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(weights)
    return model


def image_of(sample, cfg):
    return torch.as_tensor(read_image(str(sample), format=cfg.INPUT.FORMAT).transpose(2, 0, 1).copy()).float()


def assert_close(exported, eager):
    exported = exported.detach() if isinstance(exported, torch.Tensor) else torch.as_tensor(np.asarray(exported))
    exported, eager = exported.float(), eager.detach().float()
    assert exported.shape == eager.shape
    scale = eager.abs().max().item()
    assert scale > 0
    assert (exported - eager).abs().max().item() <= 1e-4 * scale


def test_upernet_onnx(tmp_path, sample, capsys):
    onnx, ort = pytest.importorskip("onnx"), pytest.importorskip("onnxruntime")
    weights, cfg = checkpoint(tmp_path, UPERNET)
    code, out = export(tmp_path, UPERNET, "onnx", sample, weights)
    assert code == 0
    assert "max |eager - exported| =" in capsys.readouterr().out
    graph = onnx.load(str(out / "model.onnx"))
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("image", [1, 3, H, W])]
    image = image_of(sample, cfg)
    (logits,) = session.run(None, {"image": image[None].numpy()})  # raw 0-255 values: normalised inside
    with torch.no_grad():
        eager = eager_model(cfg, weights)([{"image": image}])[0]["sem_seg"]
    assert logits.shape == (1, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, H, W)
    assert_close(logits[0], eager)
    summary = json.loads((out / "model.json").read_text())
    assert summary["check"]["passed"] and summary["outputs"] == [{"name": "sem_seg", "shape": [1, 5, H, W]}]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_backbone(tmp_path, sample, fmt):
    weights, cfg = checkpoint(tmp_path, MASK_RCNN, seed=1, backbone_only=True)
    code, out = export(tmp_path, MASK_RCNN, fmt, sample, weights, "--backbone-only")
    assert code == 0
    image = image_of(sample, cfg)[None]
    cfg.MODEL.BACKBONE.NAME = "build_focalnet_backbone"
    holder = torch.nn.Module()
    holder.backbone = build_backbone(cfg).eval()
    DetectionCheckpointer(holder).load(weights)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD))
    with torch.no_grad():
        eager = holder.backbone((image - mean) / std)
    if fmt == "onnx":
        ort = pytest.importorskip("onnxruntime")
        session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        outputs = session.run(None, {"image": image.numpy()})
    else:
        names = list(holder.backbone.output_shape())
        with torch.no_grad():
            outputs = torch.jit.load(str(out / "model.ts"))(image)
    assert names == ["res2", "res3", "res4", "res5"]
    for name, value in zip(names, outputs):
        assert_close(value, eager[name])


def test_upernet_torchscript(tmp_path, sample):
    weights, cfg = checkpoint(tmp_path, UPERNET, seed=2)
    code, out = export(tmp_path, UPERNET, "torchscript", sample, weights)
    assert code == 0
    image = image_of(sample, cfg)
    with torch.no_grad():
        (sem_seg,) = torch.jit.load(str(out / "model.ts"))(image)  # Detectron2's input: one (3, H, W) image
        assert_close(sem_seg, eager_model(cfg, weights)([{"image": image}])[0]["sem_seg"])


def test_mask2former_semantic_torchscript(tmp_path, sample):
    weights, cfg = checkpoint(tmp_path, M2F, seed=3)
    code, out = export(tmp_path, M2F, "torchscript", sample, weights)
    assert code == 0
    image = image_of(sample, cfg)
    with torch.no_grad():
        (sem_seg,) = torch.jit.load(str(out / "model.ts"))(image)
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = False
    cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON = True
    with torch.no_grad():
        eager = eager_model(cfg, weights)([{"image": image}])[0]["sem_seg"]
    assert sem_seg.shape == (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, H, W)
    assert_close(sem_seg, eager)


def test_mask_rcnn_torchscript(tmp_path, sample):
    weights, cfg = checkpoint(tmp_path, MASK_RCNN, seed=4)
    code, out = export(tmp_path, MASK_RCNN, "torchscript", sample, weights)
    assert code == 0
    image = image_of(sample, cfg)
    with torch.no_grad():
        boxes, classes, masks, scores, size = torch.jit.load(str(out / "model.ts"))(image)
        eager = eager_model(cfg, weights).inference([{"image": image}], do_postprocess=False)[0]
    assert len(eager) > 0 and size.tolist() == [H, W]
    assert_close(boxes, eager.pred_boxes.tensor)
    assert torch.equal(classes, eager.pred_classes)
    assert_close(masks, eager.pred_masks)
    assert_close(scores, eager.scores)
    summary = json.loads((out / "model.json").read_text())
    assert [o["name"] for o in summary["outputs"]] == [
        "instances.pred_boxes", "instances.pred_classes", "instances.pred_masks", "instances.scores",
        "instances.image_size"]


@pytest.mark.parametrize(
    "config, fmt, extra, words",
    [
        (MASK_RCNN, "onnx", [], "Mask R-CNN cannot be exported to ONNX without custom ops"),
        (M2F, "onnx", [], "use --format torchscript"),
        (UPERNET, "onnx", ["MODEL.META_ARCHITECTURE", "PanopticFPN"],
         "META_ARCHITECTURE PanopticFPN cannot be exported"),
        (UPERNET, "torchscript", ["MODEL.WEIGHTS", "nowhere.pth"], "MODEL.WEIGHTS file not found"),
    ],
)
def test_refusals(tmp_path, config, fmt, extra, words):
    with pytest.raises(UserError, match=words):
        export_model.main(["--config-file", str(TINY / config), "--format", fmt, "--output", str(tmp_path / "o"),
                           *SLIM, *extra])
    assert not (tmp_path / "o").exists()


def test_refusal_is_one_line_and_exit_2(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "tools" / "export_model.py"), "--config-file", str(TINY / MASK_RCNN),
                        "--format", "onnx", "--output", str(tmp_path / "o")], capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("export_model.py: error: Mask R-CNN cannot be exported to ONNX")
    assert "--format torchscript" in lines[0]


def test_a_differing_export_exits_1(tmp_path, sample, monkeypatch, capsys):
    real = export_model.export_torchscript

    def off_by_one(*args):
        path, names, eager, exported, spec = real(*args)
        return path, names, eager, tuple(t + 1.0 for t in exported), spec

    monkeypatch.setattr(export_model, "export_torchscript", off_by_one)
    weights, _ = checkpoint(tmp_path, UPERNET, backbone_only=True)
    code, out = export(tmp_path, UPERNET, "torchscript", sample, weights, "--backbone-only")
    assert code == 1
    assert "differs from the eager model by 1" in capsys.readouterr().err
    assert json.loads((out / "model.json").read_text())["check"]["passed"] is False
