"""tools/export_model.py (focalnet_det/export): the exported files, run on their own (torch.jit.load / onnxruntime),
against eager models the test builds itself from the same checkpoint; DINO and Mask2Former (semantic, panoptic,
instance) to both formats; the README's loaders in a fresh Python; refusals and the failed check."""
import json
import os
import re
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

from focalnet_det.export import exporter

import export_model  # tools/ (conftest puts it on the path)

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "Tiny"
UPERNET = "upernet_focalnet_tiny_shapes.yaml"
MASK_RCNN = "mask_rcnn_focalnet_tiny_shapes.yaml"
M2F = "maskformer2_focalnet_tiny_shapes.yaml"
DINO = "dino_focalnet_tiny_shapes.yaml"
SLIM = ["MODEL.FOCALNET.EMBED_DIM", "16", "MODEL.FOCALNET.DEPTHS", "[1,1,1,1]", "MODEL.DEVICE", "cpu"]
HEADS = {  # narrower heads where the Tiny config's are wide
    MASK_RCNN: ["MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
                "MODEL.ROI_MASK_HEAD.CONV_DIM", "32"],
    M2F: ["MODEL.SEM_SEG_HEAD.CONVS_DIM", "64", "MODEL.SEM_SEG_HEAD.MASK_DIM", "64",
          "MODEL.MASK_FORMER.HIDDEN_DIM", "64", "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "128"],
    UPERNET: [],
    DINO: ["MODEL.DINO.HIDDEN_DIM", "32", "MODEL.DINO.DIM_FEEDFORWARD", "64", "MODEL.DINO.NUM_QUERIES", "20",
           "MODEL.DINO.NUM_SELECT", "30", "MODEL.DINO.ENC_LAYERS", "1", "MODEL.DINO.DEC_LAYERS", "2"],
}
M2F_TASKS = {  # MODEL.MASK_FORMER.TEST switches of a semantic, a panoptic and an instance config
    task: [v for key in ("SEMANTIC", "PANOPTIC", "INSTANCE")
           for v in (f"MODEL.MASK_FORMER.TEST.{key}_ON", str(key.lower() == task))]
    for task in ("semantic", "panoptic", "instance")
}
# every query a segment candidate, so that random weights give segments to compare
M2F_TASKS["panoptic"] += ["MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD", "0.0",
                          "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD", "0.0"]
M2F_TASKS["instance"] += ["TEST.DETECTIONS_PER_IMAGE", "10"]
# tracing and loading TorchScript is what these tests do: torch's deprecation notices are noise here
pytestmark = [
    pytest.mark.usefixtures("one_thread"),  # conftest: small tensors, one thread
    pytest.mark.filterwarnings(r"ignore:.*torch\.jit\.\w+.* is deprecated:FutureWarning"),
    pytest.mark.filterwarnings(r"ignore:torch\.meshgrid. in an upcoming release:UserWarning"),  # Detectron2's anchors
]
H, W = 64, 96  # a sample image not a multiple of the pyramid pooling's bins at stride 32 (2x3)
H2, W2 = 72, 88  # not a multiple of 32: Mask2Former pads inside the graph and crops back; DINO's boxes scale by W2, H2


def make_cfg(config, opts=()):
    cfg = get_cfg()
    add_focalnet_config(cfg)
    cfg.merge_from_file(str(TINY / config))
    cfg.merge_from_list(SLIM + HEADS[config] + list(opts))
    return cfg


def write_sample(path, h, w):
    y, x = np.mgrid[:h, :w]
    image = np.stack([x * 2.5, y * 3.5, (x + y) * 1.5], -1).astype(np.uint8)
    cv2.circle(image, (30, 30), 15, (0, 0, 255), -1)
    cv2.imwrite(str(path), image)
    return path


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return write_sample(tmp_path_factory.mktemp("sample") / "sample.png", H, W)


@pytest.fixture(scope="module")
def sample2(tmp_path_factory):
    return write_sample(tmp_path_factory.mktemp("sample2") / "sample.png", H2, W2)


def checkpoint(tmp_path, config, seed=0, backbone_only=False, opts=()):
    """A Detectron2 checkpoint of a freshly initialised model (the bare backbone under backbone.); its config."""
    cfg = make_cfg(config, opts)
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


def readme_loader(fmt):
    """The README's block that loads and runs ``exported/model.ts`` (or ``.onnx``), as written there."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    (code,) = [b for b in blocks if b.startswith(f"# load exported/model.{'ts' if fmt == 'torchscript' else 'onnx'}")]
    return code


def run_readme_loader(fmt, folder, drop=""):
    """The README's loader (without the line ``drop``) in a fresh Python, in ``folder`` (holding exported/ and
    image.jpg); lines appended to it check that neither Detectron2 nor this package was imported and save the outputs.
    Returns the finished process and the outputs."""
    code = readme_loader(fmt)
    assert drop in code
    code = code.replace(drop, "") + (
        "\nimport sys\nassert not {'detectron2', 'focalnet_det'} & set(sys.modules)\n"
        "import numpy\nnumpy.savez('outputs.npz', *[numpy.asarray(v) for v in outputs])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    if r.returncode != 0:
        return r, None
    with np.load(folder / "outputs.npz") as f:
        return r, [torch.as_tensor(f[f"arr_{i}"]) for i in range(len(f.files))]


def readme_image(folder, cfg, height, width):
    """image.jpg (another size than the export's) in ``folder``, and what the README's loader makes of it: the
    (3, height, width) float image in INPUT.FORMAT."""
    write_sample(folder / "image.jpg", 50, 70)
    image = cv2.resize(cv2.imread(str(folder / "image.jpg")), (width, height))
    if cfg.INPUT.FORMAT == "RGB":
        image = image[:, :, ::-1]
    return torch.as_tensor(image.transpose(2, 0, 1).copy()).float()


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
    # the LRF kernels 9, 11, 13 (T/S/B LRF): eager CPU inference zero-pads 13 to 15, which ONNX cannot take
    lrf = ["MODEL.FOCALNET.FOCAL_LEVELS", "[3,3,3,3]", "MODEL.FOCALNET.FOCAL_WINDOWS", "[9,9,9,9]"]
    weights, cfg = checkpoint(tmp_path, MASK_RCNN, seed=1, backbone_only=True, opts=lrf)
    code, out = export(tmp_path, MASK_RCNN, fmt, sample, weights, "--backbone-only", *lrf)
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


def run_exported(out, fmt, image):
    """The exported file on (1, 3, H, W) ``image``, loaded the way a deployment loads it: outputs by name."""
    if fmt == "onnx":
        ort = pytest.importorskip("onnxruntime")
        session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
        values = session.run(None, {"image": image.numpy()})
        return {o.name: torch.as_tensor(v) for o, v in zip(session.get_outputs(), values)}
    names = [o["name"] for o in json.loads((out / "model.json").read_text())["outputs"]]
    with torch.no_grad():
        return dict(zip(names, torch.jit.load(str(out / "model.ts"))(image)))


def assert_samples_with_grid_sample(out, fmt):
    """The deformable attention was recorded as the plain per-level grid_sample (the fast CPU kernel is eager-only)."""
    summary = json.loads((out / "model.json").read_text())
    assert summary["deformable_attention"] == "grid_sample"
    if fmt == "onnx":
        onnx = pytest.importorskip("onnx")
        graph = onnx.load(str(out / "model.onnx"))
        assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 16
        ops = {n.op_type for n in graph.graph.node}
        assert "GridSample" in ops and all(n.domain in ("", "ai.onnx") for n in graph.graph.node)
    else:
        assert "aten::grid_sampler" in str(torch.jit.load(str(out / "model.ts")).inlined_graph)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("task", ["semantic", "panoptic", "instance"])
def test_mask2former(tmp_path, sample2, task, fmt):
    """Class and mask logits (and semantic scores) out of the file; the eager model's own panoptic / instance
    inference on them gives what the eager model gives."""
    opts = M2F_TASKS[task]
    weights, cfg = checkpoint(tmp_path, M2F, seed=3, opts=opts)
    code, out = export(tmp_path, M2F, fmt, sample2, weights, *opts)
    assert code == 0
    assert_samples_with_grid_sample(out, fmt)
    image = image_of(sample2, cfg)
    got = run_exported(out, fmt, image[None])
    model = eager_model(cfg, weights)
    k, q = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES
    assert list(got) == ["pred_logits", "pred_masks"] + (["sem_seg"] if task == "semantic" else [])
    assert got["pred_logits"].shape == (1, q, k + 1) and got["pred_masks"].shape == (1, q, H2, W2)
    with torch.no_grad():
        eager = model([{"image": image}])[0]
        # the head on the image padded to 32 as ImageList pads: class logits do not depend on the crop
        x = torch.nn.functional.pad((image - model.pixel_mean) / model.pixel_std, (0, 96 - W2, 0, 96 - H2))
        assert_close(got["pred_logits"], model.sem_seg_head(model.backbone(x[None]))["pred_logits"])
    logits, masks = got["pred_logits"][0], got["pred_masks"][0]
    if task == "semantic":
        assert_close(got["sem_seg"][0], eager["sem_seg"])
    elif task == "panoptic":
        seg, info = model.panoptic_inference(logits, masks)
        eager_seg, eager_info = eager["panoptic_seg"]
        assert info == eager_info and len(info) > 0
        assert (seg == eager_seg).float().mean() > 0.999
    else:
        inst, ref = model.instance_inference(logits, masks), eager["instances"]
        assert len(ref) == 10 and torch.equal(inst.pred_classes, ref.pred_classes)
        assert_close(inst.scores, ref.scores)
        assert (inst.pred_masks == ref.pred_masks).float().mean() > 0.999


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_dino(tmp_path, sample2, fmt):
    """Top-k boxes (input pixels), scores and labels out of the file, as the eager model's Instances; the file run by
    the README's loader in a fresh Python, on an image of another size."""
    weights, cfg = checkpoint(tmp_path, DINO, seed=5)
    code, out = export(tmp_path, DINO, fmt, sample2, weights)
    assert code == 0
    assert_samples_with_grid_sample(out, fmt)
    out.rename(tmp_path / "exported")
    image = readme_image(tmp_path, cfg, H2, W2)
    r, outputs = run_readme_loader(fmt, tmp_path)
    assert r.returncode == 0, r.stderr
    k = cfg.MODEL.DINO.NUM_SELECT
    assert r.stdout.splitlines() == [f"boxes ({k}, 4)", f"scores ({k},)", f"labels ({k},)"]
    with torch.no_grad():
        eager = eager_model(cfg, weights)([{"image": image}])[0]["instances"]
    assert len(eager) == k and eager.image_size == (H2, W2)
    boxes, scores, labels = outputs
    assert_close(boxes, eager.pred_boxes.tensor)
    assert_close(scores, eager.scores)
    assert torch.equal(labels, eager.pred_classes)


def test_dino_nms_and_dataset_ids_in_the_onnx_graph(tmp_path, sample2):
    """With MODEL.DINO.NMS_IOU_THRESHOLD and logits indexed by dataset ids (tiny_shapes: ids 1-3 of 5 logits) the
    number of boxes depends on the image: the graph drops the logits that are no class and runs the NMS."""
    opts = ["MODEL.DINO.NMS_IOU_THRESHOLD", "0.3", "MODEL.DINO.LOGITS_BY_DATASET_ID", "True",
            "MODEL.DINO.NUM_CLASSES", "5"]
    weights, cfg = checkpoint(tmp_path, DINO, seed=6, opts=opts)
    code, out = export(tmp_path, DINO, "onnx", sample2, weights, *opts)
    assert code == 0
    onnx = pytest.importorskip("onnx")
    assert "NonMaxSuppression" in {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    image = image_of(sample2, cfg)
    got = run_exported(out, "onnx", image[None])
    with torch.no_grad():
        eager = eager_model(cfg, weights)([{"image": image}])[0]["instances"]
    assert 0 < len(eager) < cfg.MODEL.DINO.NUM_SELECT  # some dropped, others kept
    assert set(eager.pred_classes.tolist()) <= {0, 1, 2}
    assert_close(got["boxes"], eager.pred_boxes.tensor)
    assert_close(got["scores"], eager.scores)
    assert torch.equal(got["labels"], eager.pred_classes)


def test_mask_rcnn_torchscript(tmp_path, sample):
    """Run by the README's loader in a fresh Python: it needs torchvision imported first (else "Unknown builtin op:
    torchvision::nms", as the README says), and then gives the eager model's outputs."""
    keep_all = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]
    weights, cfg = checkpoint(tmp_path, MASK_RCNN, seed=4, opts=keep_all)
    code, out = export(tmp_path, MASK_RCNN, "torchscript", sample, weights, *keep_all)
    assert code == 0
    summary = json.loads((out / "model.json").read_text())
    assert [o["name"] for o in summary["outputs"]] == [
        "instances.pred_boxes", "instances.pred_classes", "instances.pred_masks", "instances.scores",
        "instances.image_size"]
    assert summary["needs"].startswith("torch and torchvision")
    out.rename(tmp_path / "exported")
    image = readme_image(tmp_path, cfg, H, W)
    r, _ = run_readme_loader("torchscript", tmp_path, drop="import torchvision")
    assert r.returncode != 0 and "Unknown builtin op: torchvision::nms" in r.stderr
    r, (boxes, classes, masks, scores, size) = run_readme_loader("torchscript", tmp_path)
    assert r.returncode == 0, r.stderr
    with torch.no_grad():
        eager = eager_model(cfg, weights).inference([{"image": image}], do_postprocess=False)[0]
    assert len(eager) > 0 and size.tolist() == [H, W]
    assert_close(boxes, eager.pred_boxes.tensor)
    assert torch.equal(classes, eager.pred_classes)
    assert_close(masks, eager.pred_masks)
    assert_close(scores, eager.scores)


@pytest.mark.parametrize(
    "config, fmt, extra, words",
    [
        (MASK_RCNN, "onnx", [], "Mask R-CNN cannot be exported to ONNX without custom ops"),
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
    real = exporter.write_torchscript

    def off_by_one(*args):
        run, graph = real(*args)
        return (lambda: tuple(t + 1.0 for t in run())), graph

    monkeypatch.setattr(exporter, "write_torchscript", off_by_one)
    weights, _ = checkpoint(tmp_path, UPERNET, backbone_only=True)
    code, out = export(tmp_path, UPERNET, "torchscript", sample, weights, "--backbone-only")
    assert code == 1
    assert "differs from the eager model by 1" in capsys.readouterr().err
    assert json.loads((out / "model.json").read_text())["check"]["passed"] is False


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_failed_write_leaves_the_previous_file(tmp_path, monkeypatch, fmt):
    """Exports are written under a temporary name and renamed when complete: a writer failing half-way leaves the
    previous export as it was and no partial file."""
    path = tmp_path / ("model.onnx" if fmt == "onnx" else "model.ts")
    path.write_bytes(b"the previous export")

    def half_written(module, inputs, f, *args, **kwargs):
        with open(f, "wb") as out:
            out.write(b"half")
        raise RuntimeError("disk full")

    if fmt == "onnx":
        monkeypatch.setattr(torch.onnx, "export", half_written)
    else:
        monkeypatch.setattr(torch.jit.ScriptModule, "save", lambda self, f, **kw: half_written(None, None, f))
    module = torch.nn.Conv2d(3, 2, 1).eval()
    x = torch.rand(1, 3, 8, 8)
    t = exporter.Traceable(module, (x,), ["y"], (module(x),), {})
    with pytest.raises(RuntimeError, match="disk full"):
        (exporter.write_onnx if fmt == "onnx" else exporter.write_torchscript)(t, str(path))
    assert path.read_bytes() == b"the previous export" and os.listdir(tmp_path) == [path.name]


def test_ranked_detections_compare_up_to_the_order_of_tied_scores():
    """DINO's top-k: pairs with scores equal to rounding may come out in either order, or trade the k-th place with
    the (k+1)-th; the check aligns those and still sees a box that moved."""
    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20], [30, 30, 40, 40], [1, 2, 3, 4], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.5, 0.5 - 1e-6, 0.2, 0.1])
    labels = torch.tensor([0, 1, 1, 2, 0])
    eager = (boxes, scores, labels)
    swapped = [0, 2, 1, 3, 4]  # rows 1 and 2 tie: the export ranked them the other way round
    exported = [boxes[swapped], scores[swapped], labels[swapped]]
    exported[0][4], exported[1][4] = torch.tensor([70.0, 70, 80, 80]), 0.1 + 1e-5  # another pair tied at the cut
    aligned = exporter.align_ranked(eager, tuple(exported))
    _, worst, _ = exporter.compare(["boxes", "scores", "labels"], eager, aligned)
    assert worst < 1e-4
    _, worst, _ = exporter.compare(["boxes", "scores", "labels"], eager, tuple(exported))
    assert worst > 10  # unaligned: the swap shows as a box difference
    exported[0][3] = torch.tensor([1.0, 2, 3, 9])  # a box that moved: still seen
    _, worst, _ = exporter.compare(["boxes", "scores", "labels"], eager, exporter.align_ranked(eager, tuple(exported)))
    assert worst == pytest.approx(5.0)
