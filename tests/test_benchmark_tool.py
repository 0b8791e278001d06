"""tools/benchmark.py: its rows, its references (timm, a fair R50-FPN) and its errors, on small inputs."""
import json
import subprocess
import sys
from pathlib import Path

import torch

import benchmark

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "COCO-InstanceSegmentation" / "mask_rcnn_focalnet_tiny_srf_1x.yaml")
SHRINK = ["MODEL.FOCALNET.DEPTHS", "[1,1,1,1]", "MODEL.FOCALNET.EMBED_DIM", "32"]


def test_backbone_rows_against_timm_in_each_mode(tmp_path):
    out = tmp_path / "rows.json"
    benchmark.main(["--config-file", TINY, "--backbone-only", "--size", "64", "96", "--modes", "fp32", "bf16",
                    "--runs", "1", "--warmup", "0", "--json", str(out), *SHRINK])
    rows = json.loads(out.read_text())["rows"]
    assert [r["mode"] for r in rows] == ["fp32", "bf16"]
    for r in rows:
        assert r["input"] == "64x96" and r["ms"] > 0 and r["timm fp32 ms"] > 0
        assert abs(r["ratio vs timm fp32"] - r["ms"] / r["timm fp32 ms"]) < 1e-6
    assert rows[0]["GFLOPs"] > 0


def test_time_per_megapixel_rows(tmp_path):
    out = tmp_path / "sizes.json"
    benchmark.main(["--config-file", TINY, "--backbone-only", "--sizes", "64", "128", "--runs", "1", "--warmup", "0",
                    "--json", str(out), *SHRINK])
    rows = json.loads(out.read_text())["rows"]
    assert [r["input"] for r in rows] == ["64x64", "128x128"]
    for r, side in zip(rows, (64, 128)):
        assert abs(r["ms_per_MP"] - r["ms"] / (side * side / 1e6)) < 1e-6


def test_r50_reference_does_the_same_work_as_ours():
    """Random weights leave Detectron2's R50 un-normalised: without calibration its heads see a handful of boxes."""
    cfg = benchmark.load_cfg(TINY, ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
    torch.manual_seed(0)
    inputs = benchmark.as_model_input(False, 256, 320)
    raw = benchmark.r50_fpn_mask_rcnn(cfg)
    with torch.no_grad():
        images = raw.preprocess_image(inputs)
        assert max(f.abs().max().item() for f in raw.backbone(images.tensor).values()) > 1e3
    r50 = benchmark.calibrate_frozen_bn(raw, inputs)
    ours = benchmark.build(cfg, backbone_only=False)
    with torch.no_grad():
        features = r50.backbone(images.tensor)
        assert max(f.abs().max().item() for f in features.values()) < 1e3
        detections = [len(model(inputs)[0]["instances"]) for model in (ours, r50)]
    assert detections == [cfg.TEST.DETECTIONS_PER_IMAGE] * 2


def test_bad_config_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "tools" / "benchmark.py"), "--config-file",
                             str(tmp_path / "missing.yaml")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("benchmark.py: error: config file not found")
    assert "Traceback" not in result.stderr


def test_peak_memory_is_seen_through_the_retained_heap():
    """The tools keep freed memory for reuse; the peak of a later call must still show its 64 MB temporary."""
    from focalnet_det.allocator import reuse_freed_memory

    reuse_freed_memory()

    def forward():
        torch.ones(64 * 2**20 // 4).sum()

    forward()  # the 64 MB now sit freed in the heap
    assert 60 < benchmark.peak_memory_mib(forward) < 80


TINY_M2F = str(REPO / "configs" / "Tiny" / "maskformer2_focalnet_tiny_shapes.yaml")
TINY_DINO = str(REPO / "configs" / "Tiny" / "dino_focalnet_tiny_shapes.yaml")


def test_mask2former_head_kernel_against_plain_path_with_profile(tmp_path, capsys):
    """--head-only --compare-plain: the head on random features, both deformable-attention paths, each one's peak
    memory and where its time goes."""
    out = tmp_path / "head.json"
    benchmark.main(["--config-file", TINY_M2F, "--head-only", "--size", "64", "64", "--compare-plain", "--profile",
                    "--runs", "1", "--warmup", "0", "--no-flops", "--json", str(out)])
    (row,) = json.loads(out.read_text())["rows"]
    assert row["ms"] > 0 and row["plain grid_sample ms"] > 0
    assert abs(row["ratio vs plain grid_sample"] - row["ms"] / row["plain grid_sample ms"]) < 1e-6
    assert row["params_M"] < 10  # the head alone, without the backbone
    printed = capsys.readouterr().out
    for title in ("focalnet_det", "plain grid_sample"):
        assert f"where the time goes ({title}, fp32, 64x64)" in printed
    for part in ("encoder sampling", "encoder FFN", "decoder"):
        assert part in printed
    assert "runs (64x64 fp32) plain grid_sample: " in printed


def test_profile_parts_of_dino_add_up():
    """The profile's parts nest: the encoder's sampling and feed-forward inside the encoder, all inside the run."""
    cfg = benchmark.load_cfg(TINY_DINO)
    torch.manual_seed(0)
    model = benchmark.build(cfg, backbone_only=False)
    parts = benchmark.profile_parts(model, benchmark.runner(model, benchmark.as_model_input(False, 96, 128), "fp32"))
    assert {"backbone", "encoder", "encoder sampling", "encoder FFN", "decoder", "decoder sampling",
            "post-processing"} <= set(parts)
    assert parts["encoder sampling"] + parts["encoder FFN"] < parts["encoder"]
    assert parts["decoder sampling"] < parts["decoder"]
    assert parts["backbone"] + parts["encoder"] + parts["decoder"] < parts["total (wall, profiled)"]


def test_training_step_rows(tmp_path):
    out = tmp_path / "train.json"
    benchmark.main(["--config-file", TINY_DINO, "--train-step", "--compare-plain", "--runs", "1", "--warmup", "0",
                    "--json", str(out), "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0"])
    (row,) = json.loads(out.read_text())["rows"]
    assert row["mode"] == "train fp32" and row["input"].startswith("2x")
    assert row["ms"] > 0 and row["plain grid_sample ms"] > 0
