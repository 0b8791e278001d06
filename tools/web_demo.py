#!/usr/bin/env python
"""A web page to try a model (Gradio): drop an image, see its predictions (score slider, class filter), the focal
modulation maps, and download the prediction files tools/predict.py writes.

    python tools/web_demo.py --config-file configs/X.yaml [--port 7860] [--host 127.0.0.1] MODEL.WEIGHTS model.pth

then open http://127.0.0.1:7860. Large images: add TEST.TILE.SIZE 640. Class names come from DATASETS.TEST[0] (or
--register-* flags). Needs the optional extra: pip install -e '.[web]' (make setup installs it). The same page from
Python: focalnet_det.inference.web.build_web_demo(Predictor(cfg)).
"""
import argparse
import logging
import warnings

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated")  # raised by Detectron2's import

from detectron2.utils.logger import setup_logger  # noqa: E402

from focalnet_det.errors import run_tool  # noqa: E402
from focalnet_det.inference import Predictor, add_inference_arguments, load_tool_config, split_overrides  # noqa: E402
from focalnet_det.inference.web import build_web_demo, import_gradio  # noqa: E402

logger = logging.getLogger("focalnet_det.web_demo")


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_inference_arguments(p)
    p.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="fvcore")
    setup_logger(name="focalnet_det")
    setup_logger()
    import_gradio()  # a missing extra is a one-line error before the model is built
    cfg = load_tool_config(args, split_overrides(args))
    page, workdir = build_web_demo(Predictor(cfg))
    logger.info(f"serving on http://{args.host}:{args.port} (Ctrl-C stops)")
    page.queue().launch(server_name=args.host, server_port=args.port, allowed_paths=[workdir], ssr_mode=False)
    return 0


if __name__ == "__main__":
    run_tool(main)
