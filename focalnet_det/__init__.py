"""FocalNet dense prediction on Detectron2. Importing this package registers everything."""
import warnings

# fvcore (imported by Detectron2) calls the deprecated torch.jit.script at import: noise for our users
warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)
from .config import add_focalnet_config
from .modeling import *  # noqa: F401,F403  (registers backbones)
from . import data  # noqa: F401  (registers datasets)

__all__ = ["add_focalnet_config"]
