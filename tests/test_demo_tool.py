"""tools/demo.py as users run it: a tiny random-weight FocalNet Mask R-CNN on a few small images."""
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from focalnet_det.data.datasets.tiny_shapes import generate_tiny_shapes

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "tools" / "demo.py"
CONFIG = REPO / "configs" / "Tiny" / "mask_rcnn_focalnet_tiny_shapes.yaml"
# a FocalNet Mask R-CNN small enough to run in a few seconds
SHRINK = [
    "MODEL.FOCALNET.EMBED_DIM", "16", "MODEL.FOCALNET.DEPTHS", "[1,1,1,1]",
    "MODEL.FPN.OUT_CHANNELS", "16", "MODEL.ROI_BOX_HEAD.FC_DIM", "32", "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64", "MODEL.DEVICE", "cpu",
]


def run_demo(args, tmp_path):
    env = dict(os.environ, FOCALNET_DET_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(DEMO)] + args, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def inputs(tmp_path):
    root = generate_tiny_shapes(tmp_path / "shapes", num_train=0, num_val=2, image_size=64, min_size=12, max_size=30)
    bad = tmp_path / "images" / "not_an_image.jpg"
    bad.parent.mkdir()
    bad.write_text("this is text, not a JPEG\n")
    clip = tmp_path / "images" / "clip.mp4"  # 3 frames
    video = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 5, (64, 64))
    for i in range(3):
        video.write(cv2.imread(str(root / "val" / f"00000{i % 2}.png")))
    video.release()
    return [str(root / "val" / "000000.png"), str(root / "val" / "000001.png"), str(bad), str(clip)]


@pytest.mark.skipif(not CONFIG.is_file(), reason="configs/Tiny config missing")
def test_demo_draws_good_images_and_skips_bad_ones(tmp_path, inputs):
    out = tmp_path / "out"
    # KEY VALUE overrides right after the --input paths, and after --opts: both reach the config
    r = run_demo(["--config-file", str(CONFIG), "--output", str(out), "--confidence-threshold", "0.0",
                  "--input", *inputs, *SHRINK[4:], "--opts", *SHRINK[:4]], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "clip.mp4"]
    assert all(p.stat().st_size > 0 for p in out.iterdir())
    assert cv2.imread(str(out / "000000.png")).shape == (64, 64, 3)
    drawn = cv2.VideoCapture(str(out / "clip.mp4"))
    assert drawn.get(cv2.CAP_PROP_FRAME_COUNT) == 3
    skipped = [line for line in r.stderr.splitlines() if "not_an_image.jpg" in line]
    assert len(skipped) == 1 and "skipped" in skipped[0]
    assert not (tmp_path / "cache").exists()  # drawing needs the class names, not the dataset


@pytest.mark.skipif(not CONFIG.is_file(), reason="configs/Tiny config missing")
def test_demo_with_no_readable_input_exits_2(tmp_path, inputs):
    # trailing overrides after the last option
    r = run_demo(["--config-file", str(CONFIG), "--input", inputs[2], "--output", str(tmp_path / "o"), *SHRINK], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("demo.py: error:")


@pytest.mark.parametrize(
    "config, extra, words",
    [
        ("missing.yaml", [], "config file not found: missing.yaml"),
        (str(CONFIG), ["MODEL.NO_SUCH_KEY", "1"], "MODEL.NO_SUCH_KEY"),
    ],
)
def test_demo_config_errors_are_one_line(tmp_path, inputs, config, extra, words):
    r = run_demo(["--config-file", config, "--input", inputs[0], "--output", str(tmp_path / "o"), *extra], tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("demo.py: error:") and words in lines[0], r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not CONFIG.is_file(), reason="configs/Tiny config missing")
def test_demo_draws_tiled_predictions(tmp_path, inputs):
    """TEST.TILE.SIZE: the same pictures from the tiled path (cropped masks pasted for drawing only)."""
    import demo

    out = tmp_path / "tiled"
    assert demo.main(["--config-file", str(CONFIG), "--output", str(out), "--confidence-threshold", "0.0",
                      "--input", inputs[0], *SHRINK, "TEST.TILE.SIZE", "40", "INPUT.MIN_SIZE_TEST", "40",
                      "INPUT.MAX_SIZE_TEST", "40"]) == 0
    drawn = cv2.imread(str(out / "000000.png"))
    assert drawn.shape == (64, 64, 3) and not (drawn == cv2.imread(inputs[0])).all()
