"""tools/web_demo.py as a user meets it: the server started on 127.0.0.1, called through gradio_client, and the page
opened in Debian's headless Chromium (selenium + Debian's chromedriver; no browser is downloaded), an image uploaded
and the page's screenshot taken."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("gradio", reason="the web extra (pip install -e '.[web]'; make setup installs it)")

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "Tiny" / "mask_rcnn_focalnet_tiny_shapes.yaml"
SMALL = ["MODEL.FOCALNET.EMBED_DIM", "16", "MODEL.FOCALNET.DEPTHS", "[1,1,1,1]", "MODEL.FPN.OUT_CHANNELS", "16",
         "MODEL.ROI_BOX_HEAD.FC_DIM", "32", "MODEL.ROI_MASK_HEAD.CONV_DIM", "16"]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,1100"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(config, opts, tmp_path, port):
    """tools/web_demo.py in a process of its own; returns it once the page answers."""
    import urllib.request

    env = dict(os.environ, FOCALNET_DET_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1",
               GRADIO_ANALYTICS_ENABLED="False", GRADIO_TEMP_DIR=str(tmp_path / "gradio"))
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, str(REPO / "tools" / "web_demo.py"), "--config-file", str(config),
                             "--port", str(port), *opts], env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"web_demo.py exited with {proc.returncode}: {(tmp_path / 'server.log').read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            return proc
        except OSError:
            time.sleep(1)
    proc.kill()
    raise RuntimeError("web_demo.py did not answer within 180 s")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("web")
    from detectron2.modeling import build_model
    from focalnet_det.config import load_config
    from focalnet_det.data.datasets.tiny_shapes import generate_tiny_shapes

    cfg = load_config(str(CONFIG), SMALL)
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg).state_dict()}, tmp / "model.pth")
    root = generate_tiny_shapes(tmp / "shapes", num_train=0, num_val=1, image_size=160)
    port = free_port()
    proc = start_server(CONFIG, [*SMALL, "MODEL.WEIGHTS", str(tmp / "model.pth")], tmp, port)
    yield f"http://127.0.0.1:{port}/", root / "val" / "000000.png", tmp
    proc.terminate()
    proc.wait(timeout=30)


def test_gradio_client_gets_pictures_and_prediction_files(server):
    from gradio_client import Client, handle_file
    from pycocotools.coco import COCO

    url, image, tmp = server
    client = Client(url, verbose=False)
    drawn, maps, files = client.predict(handle_file(str(image)), 0.0, ["circle", "square", "triangle"],
                                        api_name="/predict")
    original = np.asarray(Image.open(image).convert("RGB"))
    drawn = np.asarray(Image.open(drawn).convert("RGB"))
    assert drawn.shape == original.shape and not np.array_equal(drawn, original)  # predictions drawn over it
    assert np.asarray(Image.open(maps)).shape[0] > 100  # the modulation grid: four stages
    names = {os.path.basename(f) for f in files}
    assert names == {"predictions.json", "annotations.json"}
    by_name = {os.path.basename(f): f for f in files}
    gt = COCO(by_name["annotations.json"])  # a COCO dataset pycocotools reads
    res = gt.loadRes(by_name["predictions.json"])
    assert len(res.getAnnIds()) == len(gt.getAnnIds()) > 0
    assert gt.loadImgs(gt.getImgIds())[0]["file_name"] == image.name

    # no class selected: nothing drawn; a score above every prediction: nothing drawn, nothing in the files
    nothing, _, _ = client.predict(handle_file(str(image)), 0.0, [], api_name="/predict")
    assert np.array_equal(np.asarray(Image.open(nothing).convert("RGB")), original)
    _, _, files = client.predict(handle_file(str(image)), 1.0, ["circle"], api_name="/predict")
    with open({os.path.basename(f): f for f in files}["predictions.json"]) as f:
        assert json.load(f) == []


def page_screenshot(url, image, out_png, score=None, timeout=60):
    """Open the page in headless Chromium, set the score slider to ``score`` (if given), upload ``image``, wait for
    the drawn predictions, save a screenshot. Returns the predictions picture the page shows (RGB array)."""
    import io
    import urllib.request

    from selenium.webdriver.common.keys import Keys
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in BROWSER_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(timeout)
        driver.get(url)
        wait = WebDriverWait(driver, timeout)
        if score is not None:
            box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#score input[type=number]"))
            box.send_keys(Keys.CONTROL, "a")
            box.send_keys(str(score), Keys.ENTER)
        upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#input-image input[type=file]"))
        upload.send_keys(str(image))
        shown = wait.until(lambda d: [img for img in d.find_elements(By.CSS_SELECTOR, "#predictions img")
                                      if d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)])
        src = shown[0].get_attribute("src")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#modulation img"))
        time.sleep(0.5)  # let the pictures paint
        driver.save_screenshot(str(out_png))
        with urllib.request.urlopen(src, timeout=10) as r:
            return np.asarray(Image.open(io.BytesIO(r.read())).convert("RGB"))
    finally:
        driver.quit()


@pytest.mark.skipif(not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)),
                    reason="Debian's chromium and chromium-driver (make setup installs them)")
def test_page_in_headless_chromium_shows_the_uploaded_images_predictions(server):
    pytest.importorskip("selenium")
    url, image, tmp = server
    shot = tmp / "page.png"
    shown = page_screenshot(url, image, shot, score=0.0)  # a random model: its scores are low
    original = np.asarray(Image.open(image).convert("RGB"))
    assert shown.shape == original.shape and not np.array_equal(shown, original)  # predictions drawn over it
    page = np.asarray(Image.open(shot).convert("RGB"))
    assert page.shape[0] > 500 and page.shape[1] > 1000 and page.std() > 10  # a rendered page, not a blank one
