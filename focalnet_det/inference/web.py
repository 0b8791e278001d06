"""The web page of ``tools/web_demo.py`` (Gradio): upload an image, see the predictions drawn (score slider, class
filter), the focal modulation maps of the same image, and download the prediction files ``tools/predict.py`` would
write for it. Gradio is an optional extra (``pip install -e '.[web]'``; ``make setup`` installs it).

The page's one function is also an API (``api_name="predict"``): ``gradio_client.Client(url).predict(
handle_file(path), score, classes, api_name="/predict")`` -> (predictions picture, modulation picture, files)."""
import os
import tempfile

import numpy as np

from ..errors import UserError
from .inputs import read_image
from .writers import PredictionWriter

__all__ = ["build_web_demo", "class_names", "import_gradio"]


def import_gradio():
    try:
        import gradio
    except ImportError:
        raise UserError("the web page needs Gradio: pip install -e '.[web]' (make setup installs it)") from None
    return gradio


def class_names(metadata):
    """The names the class filter offers: the panoptic / semantic classes (stuff_classes) if the dataset has them,
    else its thing classes."""
    return list(metadata.get("stuff_classes", None) or metadata.get("thing_classes", None) or [])


def _figure_to_array(fig, dpi=80):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(dpi)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class _Session:
    """What one page needs: the predictor, the drawing, the maps, the files; the last image's predictions kept, so
    that moving the slider or the filter redraws without predicting again."""

    def __init__(self, predictor, workdir):
        self.predictor, self.workdir = predictor, workdir
        self.names = class_names(predictor.metadata)
        self._last = (None, None)

    def predictions(self, path):
        stamp = (path, os.path.getmtime(path))
        if self._last[0] != stamp:
            image = read_image(path, format="BGR")
            self._last = (stamp, (image, self.predictor(image)))
        return self._last[1]

    def __call__(self, path, threshold, classes):
        from detectron2.utils.visualizer import ColorMode, Visualizer

        from ..visualize import draw_predictions, find_focalnet, image_modulation_grid

        gr = import_gradio()
        if not path:
            raise gr.Error("upload an image first")
        try:
            image, predictions = self.predictions(path)
        except OSError as e:
            raise gr.Error(f"cannot read {os.path.basename(path)}: {e}") from None
        wanted = None if classes is None or len(classes) == len(self.names) else \
            {self.names.index(c) for c in classes if c in self.names}
        visualizer = Visualizer(image[:, :, ::-1], self.predictor.metadata, instance_mode=ColorMode.IMAGE)
        drawn = draw_predictions(visualizer, predictions, threshold, wanted)
        drawn = image[:, :, ::-1] if drawn is None else drawn.get_image()

        cfg = self.predictor.cfg
        maps = None
        try:
            backbone = find_focalnet(self.predictor.model)
            as_model = image if cfg.INPUT.FORMAT == "BGR" else image[:, :, ::-1]
            fig, _, _ = image_modulation_grid(backbone, cfg, np.ascontiguousarray(as_model),
                                              title=os.path.basename(path))
            maps = _figure_to_array(fig)
        except ValueError:  # a model without a FocalNet backbone has no maps to show
            pass

        out = tempfile.mkdtemp(prefix="predict-", dir=self.workdir)
        writer = PredictionWriter(out, self.predictor.metadata, score_threshold=float(threshold))
        writer.add(os.path.abspath(path), os.path.basename(path), image.shape[:2], predictions)
        files = []
        for written in writer.finish():
            if not os.path.isdir(written):
                files.append(written)
                continue
            for name in sorted(os.listdir(written)):  # sem_seg/x.png -> sem_seg_x.png: one name per download
                link = os.path.join(out, f"{os.path.basename(written)}_{name}")
                os.link(os.path.join(written, name), link)
                files.append(link)
        return drawn, maps, files


def build_web_demo(predictor, title="FocalNet predictions", workdir=None):
    """The Gradio ``Blocks`` page for ``predictor`` (a :class:`~focalnet_det.inference.Predictor`). Files it writes
    go under ``workdir`` (a new temporary folder by default); pass it to ``launch(allowed_paths=[workdir])``.
    Returns ``(blocks, workdir)``."""
    gr = import_gradio()
    workdir = workdir or tempfile.mkdtemp(prefix="focalnet-web-")
    session = _Session(predictor, workdir)
    with gr.Blocks(title=title) as page:
        gr.Markdown(f"## {title}\n{predictor.cfg.MODEL.META_ARCHITECTURE} on FocalNet: drop an image, then move the "
                    "score slider or the class filter; the files are those `tools/predict.py` writes.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", label="image", sources=["upload", "clipboard"], height=360,
                                 elem_id="input-image")
                score = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="minimum score", elem_id="score")
                classes = gr.CheckboxGroup(session.names, value=session.names, label="classes", elem_id="classes")
                button = gr.Button("Predict", variant="primary", elem_id="predict")
            with gr.Column():
                drawn = gr.Image(label="predictions", format="png", height=360, elem_id="predictions")
                files = gr.File(label="prediction files", file_count="multiple", elem_id="files")
        maps = gr.Image(label="focal modulation (per stage: the modulator, then each level's gate)", format="png",
                        elem_id="modulation")
        inputs, outputs = [image, score, classes], [drawn, maps, files]
        button.click(session, inputs, outputs, api_name="predict")
        image.upload(session, inputs, outputs, api_visibility="private")
        for control in (score, classes):
            control.change(lambda p, s, c: session(p, s, c) if p else (None, None, None), inputs, outputs,
                           api_visibility="private")
    return page, workdir
