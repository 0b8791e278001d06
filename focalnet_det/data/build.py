"""A training loader that a resumed run continues exactly, and test mappers that name unreadable images.

Detectron2's training loader draws its order and its augmentations from random generators that a checkpoint
does not hold, so ``--resume`` restarts the data stream. Here the stream is a function of ``SEED`` alone:

- the index order: per epoch a permutation drawn from (``SEED``, epoch); rank ``r`` of ``w`` takes every
  ``w``-th position from ``r`` (as Detectron2's ``TrainingSampler``);
- batches: grouped by aspect ratio (``DATALOADER.ASPECT_RATIO_GROUPING``, from the dicts' width and height)
  in the main process, so batch ``i`` is the same whatever ``DATALOADER.NUM_WORKERS``;
- augmentations: each sample is mapped under random generators seeded from (``SEED``, its position in the
  stream), saved and restored around the call, so workers and the model's generators never interfere.

Batch ``i`` is what iteration ``i`` trains on: a run resumed at iteration ``i`` starts the stream there (the
iteration a checkpoint stores is the stream position). An image that cannot be read is skipped, counted and
logged; training goes on with the rest of its batch.
"""
import hashlib
import logging
import random
from contextlib import contextmanager

import numpy as np
import torch
import torch.utils.data as torchdata

from detectron2.data.build import _train_loader_from_config, trivial_batch_collator
from detectron2.utils import comm

from ..errors import UserError

__all__ = ["ResumableBatchSampler", "build_resumable_train_loader", "stream_seed", "seed_all", "ReadCheckedMapper"]

logger = logging.getLogger(__name__)

# what reading an image can raise (PIL's UnidentifiedImageError and missing files are OSErrors)
READ_ERRORS = (OSError,)


def stream_seed(seed, *keys):
    """A 63-bit seed from ``seed`` and integer keys (stable across processes and runs)."""
    digest = hashlib.sha256(":".join(str(int(k)) for k in (seed, *keys)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_all(seed):
    """Seed Python's, NumPy's and torch's generators (all devices) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def seeded_rng(seed):
    """Python, NumPy and torch (CPU) generators seeded with ``seed`` inside, restored afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            seed_all(seed)
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class ResumableBatchSampler(torchdata.Sampler):
    """Infinite batches of ``(position, dataset index)`` for this rank, starting at batch ``start_iter``."""

    def __init__(self, aspect_groups, batch_size, seed, *, rank=0, world_size=1):
        """
        Args:
            aspect_groups: one group id per dataset item (batches never mix groups), e.g. width > height.
            batch_size: images per batch on this rank.
            seed: the stream's seed (``SEED``).
        """
        self.groups = list(aspect_groups)
        self.batch_size = batch_size
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.start_iter = 0  # set by the trainer after a resume, read when iteration starts

    def _positions(self):
        """(global position, dataset index) for this rank, forever."""
        n, position, epoch = len(self.groups), 0, 0
        while True:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(stream_seed(self.seed, epoch)))
            for idx in order.tolist():
                if position % self.world_size == self.rank:
                    yield position, idx
                position += 1
            epoch += 1

    def __iter__(self):
        buckets, batch_index = {}, 0
        for item in self._positions():
            bucket = buckets.setdefault(self.groups[item[1]], [])
            bucket.append(item)
            if len(bucket) == self.batch_size:
                if batch_index >= self.start_iter:
                    yield list(bucket)
                batch_index += 1
                bucket.clear()


class _SeededMapDataset(torchdata.Dataset):
    """``dataset[(position, index)]``: the mapped dict, under generators seeded by the position; or a marker
    naming the file when the image cannot be read."""

    def __init__(self, dicts, mapper, seed):
        self.dicts, self.mapper, self.seed = dicts, mapper, seed

    def __len__(self):
        return len(self.dicts)

    def __getitem__(self, key):
        position, index = key
        d = self.dicts[index]
        with seeded_rng(stream_seed(self.seed, position)):
            try:
                return self.mapper(d)
            except READ_ERRORS as e:
                return {"__unreadable__": d.get("file_name", f"item {index}"), "error": f"{type(e).__name__}: {e}"}


class _SkipUnreadable:
    """Iterates a loader of batches, dropping (and counting, and logging) the images that could not be read."""

    def __init__(self, loader):
        self.loader = loader
        self.skipped = 0

    @property
    def batch_sampler(self):
        """Where the trainer sets ``start_iter`` after a resume."""
        return self.loader.batch_sampler

    def __iter__(self):
        for batch in self.loader:
            good = [d for d in batch if "__unreadable__" not in d]
            for bad in batch:
                if "__unreadable__" in bad:
                    self.skipped += 1
                    logger.warning(f"skipped unreadable image {bad['__unreadable__']} ({bad['error']}); "
                                   f"{self.skipped} skipped so far")
            if good:
                yield good
            else:
                logger.warning("a whole batch was unreadable: it is skipped (the data stream shifts by one batch)")


def build_resumable_train_loader(cfg, mapper):
    """The training loader of ``cfg`` with ``mapper`` (see the module docstring). ``loader.batch_sampler.start_iter``
    is where the stream starts; ``SEED`` < 0 draws a seed (shared by all ranks), so a resume is then not exact."""
    dataset = _train_loader_from_config(cfg, mapper=mapper)["dataset"]
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        raise UserError(f"DATALOADER.SAMPLER_TRAIN: {cfg.DATALOADER.SAMPLER_TRAIN!r} is not supported by the "
                        "resumable loader (use TrainingSampler)")
    world_size = comm.get_world_size()
    total = cfg.SOLVER.IMS_PER_BATCH
    if total % world_size:
        raise UserError(f"SOLVER.IMS_PER_BATCH: {total} images do not split over {world_size} processes")
    seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    if cfg.DATALOADER.ASPECT_RATIO_GROUPING:
        groups = [int(d.get("width", 0) > d.get("height", 0)) for d in dataset]
    else:
        groups = [0] * len(dataset)
    batch_sampler = ResumableBatchSampler(groups, total // world_size, seed, rank=comm.get_rank(),
                                          world_size=world_size)
    loader = torchdata.DataLoader(
        _SeededMapDataset(dataset, mapper, seed),
        batch_sampler=batch_sampler,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=trivial_batch_collator,
        # its own generator: starting the loader then draws nothing from the global one the model uses
        generator=torch.Generator().manual_seed(seed),
    )
    return _SkipUnreadable(loader)


class ReadCheckedMapper:
    """Wraps a test mapper: an image that cannot be read stops the evaluation with a one-line error naming it."""

    def __init__(self, mapper):
        self.mapper = mapper

    def __call__(self, dataset_dict):
        try:
            return self.mapper(dataset_dict)
        except READ_ERRORS as e:
            raise UserError(f"evaluation stopped: cannot read image {dataset_dict.get('file_name')} "
                            f"({type(e).__name__}: {e})") from None
