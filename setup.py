from setuptools import find_packages, setup

setup(
    name="focalnet_det",
    version="0.1.0",
    description="Focal Modulation Networks (FocalNets) for detection and segmentation on Detectron2",
    packages=find_packages(include=["focalnet_det", "focalnet_det.*"]),
    python_requires=">=3.10",
    # torch/torchvision and Detectron2 are installed by scripts/setup_env.sh (see README):
    # Detectron2 is not on PyPI, and the torch build must match the machine.
    install_requires=[
        "timm>=1.0,<1.1",
        "safetensors",
        "fvcore",
        "iopath",
        "pycocotools",
        "omegaconf",
        "hydra-core",
        "termcolor",
        "yacs",
        "tabulate",
        "cloudpickle",
        "matplotlib",
        "tensorboard",
        "scipy",
        "shapely",
        "opencv-python-headless",
        "tqdm",
        "setuptools<81",
        # builds the CPU kernel of the deformable attention (focalnet_det/modeling/layers/csrc) at first use
        "ninja",
    ],
    package_data={"focalnet_det.modeling.layers": ["csrc/*.cpp"]},
    # onnx / onnxruntime: tools/export_model.py --format onnx writes and checks ONNX graphs (and its tests);
    # transformers: the tests build Hugging Face FocalNet checkpoints (reading them needs only safetensors/torch)
    # web: tools/web_demo.py's page (Gradio) and its client; selenium (dev): the page's test in Debian's Chromium
    extras_require={"dev": ["pytest", "onnx", "onnxruntime", "transformers", "selenium"],
                    "web": ["gradio>=6,<7", "gradio_client"]},
)
