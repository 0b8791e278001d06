"""Training machinery around Detectron2's trainer: many processes on any device, exact resume, config checks.
Public: ``create_ddp_model``, ``adapt_sync_batchnorm``, ``SeedEveryIteration``, ``check_config``."""
from .checks import check_config
from .distributed import adapt_sync_batchnorm, create_ddp_model
from .hooks import SeedEveryIteration

__all__ = ["create_ddp_model", "adapt_sync_batchnorm", "SeedEveryIteration", "check_config"]
