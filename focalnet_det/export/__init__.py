"""TorchScript and ONNX export of whole models (Mask R-CNN, UPerNet, Mask2Former, DINO) and of the FocalNet
backbone, each checked against the eager model (``tools/export_model.py`` is the command line).
Public: ``export_model`` and its steps (``export_config``, ``build_export_model``, ``sample_image``), the raw-image
wrappers that are traced (``RawImageBackbone``, ``RawImageSemSeg``, ``RawImageDINO``, ``RawImageMaskFormer``)."""
from .exporter import (
    MODELS,
    OPSET,
    TOLERANCE,
    build_export_model,
    compare,
    export_config,
    export_model,
    sample_image,
    traceable,
    write_onnx,
    write_torchscript,
)
from .wrappers import RawImageBackbone, RawImageDINO, RawImageMaskFormer, RawImageSemSeg

__all__ = ["MODELS", "OPSET", "TOLERANCE", "build_export_model", "compare", "export_config", "export_model",
           "sample_image", "traceable", "write_onnx", "write_torchscript", "RawImageBackbone", "RawImageDINO",
           "RawImageMaskFormer", "RawImageSemSeg"]
