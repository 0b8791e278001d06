"""Training across processes on any device: DDP without device ids on the CPU, SyncBN that works over gloo."""
import logging

from torch import nn

from detectron2.engine.defaults import create_ddp_model as _create_ddp_model
from detectron2.layers import BatchNorm2d, NaiveSyncBatchNorm
from detectron2.utils import comm

__all__ = ["create_ddp_model", "adapt_sync_batchnorm"]

logger = logging.getLogger(__name__)


def create_ddp_model(model):
    """``model`` in DistributedDataParallel when there are several processes: on its GPU, or on the CPU
    (where DDP takes no device ids; Detectron2's trainer passes the local rank and fails there)."""
    on_cuda = next(model.parameters()).device.type == "cuda"
    return _create_ddp_model(model, broadcast_buffers=False,
                             device_ids=[comm.get_local_rank()] if on_cuda else None)


def adapt_sync_batchnorm(model):
    """Replace ``nn.SyncBatchNorm`` (it needs CUDA) in a CPU model: by Detectron2's ``NaiveSyncBatchNorm``
    (statistics all-reduced, over gloo too) when several processes train, by ``BatchNorm2d`` in one process.
    Parameters and statistics are kept; the state-dict keys do not change."""
    if next(model.parameters()).device.type == "cuda":
        return model
    world_size = comm.get_world_size()
    replacement = NaiveSyncBatchNorm if world_size > 1 else BatchNorm2d
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.SyncBatchNorm):
                new = replacement(child.num_features, eps=child.eps, momentum=child.momentum, affine=child.affine,
                                  track_running_stats=child.track_running_stats)
                new.load_state_dict(child.state_dict())
                setattr(parent, name, new)  # a CPU model: the new layer is already on the CPU
                count += 1
    if count:
        how = f"NaiveSyncBatchNorm across {world_size} processes" if world_size > 1 else "BatchNorm2d in one process"
        logger.info(f"SyncBN on the CPU: {count} SyncBatchNorm layers run as {how}")
    return model
