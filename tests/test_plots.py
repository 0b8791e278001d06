"""tools/plot_metrics.py on a metrics.json written by Detectron2's own JSONWriter, and benchmark.py --plot."""
import json
import runpy
import sys
from pathlib import Path

import cv2
import pytest

from detectron2.utils.events import EventStorage, JSONWriter

import benchmark
import plot_metrics
from focalnet_det.errors import UserError

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small tensors, one thread


def write_run(output_dir, resume_from=None, offset=0.0):
    """What a training run leaves: losses and lr every 10 iterations, evaluation results at 29 and 59 (a Mask R-CNN's
    and a semantic evaluator's keys, per-class included), Detectron2's training statistics."""
    writer = JSONWriter(str(output_dir / "metrics.json"), window_size=1)
    start = resume_from or 0
    with EventStorage(start) as storage:
        for it in range(start, 60):
            storage.iter = it
            storage.put_scalars(total_loss=3.0 - it / 30 + offset, loss_cls=1.0 - it / 90, loss_mask=0.5,
                                lr=1e-3 * (it + 1) / 60,
                                **{"rpn/num_pos_anchors": 20.0, "fast_rcnn/cls_accuracy": 0.5})
            if it in (29, 59):
                storage.put_scalars(**{"bbox/AP": it / 3, "bbox/AP50": it / 2, "bbox/AP-circle": it / 4,
                                       "segm/AP": it / 5, "sem_seg/mIoU": it * 1.0, "sem_seg/IoU-circle": 7.0,
                                       "sem_seg/min(IoU, B-Iou)-wall-other": 3.0},
                                    smoothing_hint=False)
            if (it + 1) % 10 == 0:
                writer.write()
    writer.close()


def test_pictures_of_every_group(tmp_path):
    write_run(tmp_path)
    written = plot_metrics.plot_metrics(str(tmp_path), str(tmp_path / "pictures"))
    names = sorted(Path(p).name for p in written)
    assert names == ["eval_bbox.png", "eval_bbox_per_class.png", "eval_segm.png", "eval_sem_seg.png",
                     "eval_sem_seg_per_class.png", "losses.png", "lr.png"]  # no rpn/, fast_rcnn/ (training stats)
    for p in written:
        image = cv2.imread(p)
        assert image is not None and min(image.shape[:2]) > 100


def test_what_is_plotted(tmp_path):
    write_run(tmp_path)
    with open(tmp_path / "metrics.json", "a") as f:  # a run killed mid-write, then resumed from iteration 40
        f.write('{"iteration": 4')
        f.write("\n")
    write_run(tmp_path, resume_from=40, offset=0.5)  # the repeated iterations keep the resumed run's values
    rows = plot_metrics.read_metrics(str(tmp_path / "metrics.json"))
    losses, summary, per_class = plot_metrics.group_keys(rows)
    assert losses == ["total_loss", "loss_cls", "loss_mask"]
    assert summary == {"bbox": ["bbox/AP", "bbox/AP50"], "segm": ["segm/AP"], "sem_seg": ["sem_seg/mIoU"]}
    assert per_class == {"bbox": ["bbox/AP-circle"],
                         "sem_seg": ["sem_seg/IoU-circle", "sem_seg/min(IoU, B-Iou)-wall-other"]}
    assert plot_metrics.split_per_class("min(IoU, B-Iou)-wall-other") == ("min(IoU, B-Iou)", "wall-other")
    assert plot_metrics.split_per_class("AP-hot-dog") == ("AP", "hot-dog")
    x, y = plot_metrics.series(rows, "total_loss")
    assert x == [9, 19, 29, 39, 49, 59]
    assert y == pytest.approx([3.0 - it / 30 + (0.5 if it >= 40 else 0) for it in x])
    assert plot_metrics.series(rows, "bbox/AP") == ([29, 59], pytest.approx([29 / 3, 59 / 3]))


def test_missing_metrics_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    tool = str(REPO / "tools" / "plot_metrics.py")
    monkeypatch.setattr(sys, "argv", [tool, str(tmp_path)])
    with pytest.raises(SystemExit) as exit_:  # its __main__ block, run in this process
        runpy.run_path(tool, run_name="__main__")
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("plot_metrics.py: error: no metrics.json at"), lines
    (tmp_path / "metrics.json").write_text("garbage\n")
    with pytest.raises(UserError, match="holds no metrics"):
        plot_metrics.main([str(tmp_path)])


def test_benchmark_plot_draws_each_model_at_each_size(tmp_path):
    out, rows_file = tmp_path / "latency.png", tmp_path / "rows.json"
    config = str(REPO / "configs" / "COCO-InstanceSegmentation" / "mask_rcnn_focalnet_tiny_srf_1x.yaml")
    benchmark.main(["--config-file", config, "--backbone-only", "--sizes", "64", "96", "--runs", "1", "--warmup", "0",
                    "--plot", str(out), "--json", str(rows_file),
                    "MODEL.FOCALNET.DEPTHS", "[1,1,1,1]", "MODEL.FOCALNET.EMBED_DIM", "16"])
    assert cv2.imread(str(out)) is not None
    rows = json.loads(rows_file.read_text())["rows"]
    assert all(r["timm fp32 ms"] > 0 for r in rows)  # the reference is timed at every size too
    lines = benchmark.plot_latency(rows, str(tmp_path / "again.png"), "t")
    mp = [64 * 64 / 1e6, 96 * 96 / 1e6]
    assert lines == {"focalnet_det fp32": list(zip(mp, [r["ms"] for r in rows])),
                     "timm fp32": list(zip(mp, [r["timm fp32 ms"] for r in rows]))}
