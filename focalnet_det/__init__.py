"""FocalNet dense prediction on Detectron2. Importing this package registers everything."""
from .config import add_focalnet_config
from .modeling import *  # noqa: F401,F403  (registers backbones)
from . import data  # noqa: F401  (registers datasets)

__all__ = ["add_focalnet_config"]
