#!/usr/bin/env bash
# Creates ./.venv (if missing) and installs what is missing: torch, Detectron2, the package.
# Idempotent: a second run with everything present takes a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
[ -x "$VENV/bin/python" ] || { echo "[setup] creating $VENV"; "$PY" -m venv "$VENV"; }
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
have() { "$VENV/bin/python" -c "$1" >/dev/null 2>&1; }

have "import setuptools, sys; sys.exit(int(setuptools.__version__.split('.')[0]) >= 81)" \
  || { echo "[setup] setuptools<81 (Detectron2's model_zoo imports pkg_resources)"; $PIP install 'setuptools<81' wheel; }

have "import torch, torchvision" || {
  echo "[setup] installing torch 2.14.1 / torchvision 0.29.1 (about a minute from the local disk)"
  $PIP install torch==2.14.1 torchvision==0.29.1
}

# Detectron2: an importable one first, then upstream source where reachable, then the PyPI wheel.
if have "import detectron2"; then
  echo "[setup] Detectron2 already importable"
else
  if [ -n "${DETECTRON2_SOURCE:-}" ] && $PIP install --no-build-isolation "$DETECTRON2_SOURCE" 2>/dev/null; then
    echo "[setup] Detectron2 built from $DETECTRON2_SOURCE"
  elif timeout 20 git ls-remote https://github.com/facebookresearch/detectron2 HEAD >/dev/null 2>&1 \
       && $PIP install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'; then
    echo "[setup] Detectron2 built from upstream source"
  else
    echo "[setup] installing Detectron2 (pure-Python part) from the sal-detectron2 0.7.2 wheel"
    SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    DEST="$VENV/detectron2-wheel"
    rm -rf "$DEST"
    $PIP install --no-deps --only-binary=:all: --python-version 3.10 --platform any \
      --target "$DEST" sal-detectron2==0.7.2
    # the compiled _C is built for CPython 3.10 and cannot load here; Detectron2 falls back without it
    find "$DEST" -name '_C*.so' -delete
    # its metadata pins numpy<2 and black, which it does not need at run time: hide it from pip
    rm -rf "$DEST"/*.dist-info
    echo "$(cd "$DEST" && pwd)" > "$SITE/detectron2-wheel.pth"
  fi
fi

# onnx/onnxruntime, transformers (the dev extra): an older .venv without them gets them here too
have "import focalnet_det, timm, fvcore, pycocotools, pytest, onnx, onnxruntime, transformers" || {
  echo "[setup] installing focalnet_det (editable) and its requirements"
  $PIP install -e '.[dev]'
}

# the web page (tools/web_demo.py: Gradio, the optional "web" extra) and its browser test (selenium, with Debian's
# chromium and chromedriver: nothing is downloaded when the tests run)
# (found, not imported: importing Gradio takes seconds)
have "import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in ('gradio', 'gradio_client', 'selenium')))" || {
  echo "[setup] installing the web extra (gradio, gradio_client) and selenium"
  $PIP install -e '.[dev,web]'
}
if ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing Debian's chromium and chromium-driver (the web page's browser test)"
    export DEBIAN_FRONTEND=noninteractive
    APT="apt-get install -y -q --no-install-recommends chromium chromium-driver"
    $APT >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && $APT >/dev/null 2>&1; } \
      || echo "[setup] could not install chromium: the browser test will be skipped"
  else
    echo "[setup] no chromium/chromedriver (install Debian's chromium and chromium-driver): the browser test will be skipped"
  fi
fi

# panopticapi (PQ evaluation, panoptic PNG ids): on PyPI only as panopticapi-lite 0.2.0, whose metadata pins
# numpy<2 although it imports and computes PQ correctly with numpy 2.x (seen here). --no-deps keeps numpy 2
# for the rest of the environment; setup.py cannot say --no-deps, hence this line.
have "import panopticapi.evaluation, panopticapi.utils" || {
  echo "[setup] installing panopticapi-lite 0.2.0 (--no-deps: it pins numpy<2 but works with numpy 2)"
  $PIP install --no-deps panopticapi-lite==0.2.0
}
# the CPU kernel of the multi-scale deformable attention (C++/OpenMP, torch.utils.cpp_extension), built once per
# machine (~1 min; cached under ~/.cache/torch_extensions): without a compiler the plain grid_sample path runs
"$VENV/bin/python" -c "import logging; logging.basicConfig(level=logging.INFO, format='[setup] %(message)s')
from focalnet_det.modeling.layers import cpu_kernel; cpu_kernel()" 2>&1 | grep '^\[setup\]' || true
echo "[setup] ready: $("$VENV/bin/python" -c 'import torch, detectron2; print("torch", torch.__version__, "| detectron2", detectron2.__version__)')"
