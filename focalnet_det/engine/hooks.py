"""Hooks that make a resumed run the run that was interrupted."""
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..data.build import seed_all, stream_seed

__all__ = ["SeedEveryIteration"]


class SeedEveryIteration(HookBase):
    """Seeds Python, NumPy and torch before every iteration from (``SEED``, rank, iteration), so that the model's
    randomness (drop path, dropout, point sampling in the losses) depends on where training is, not on what ran
    before: a run resumed from a checkpoint at iteration ``i`` draws what the uninterrupted run drew."""

    def __init__(self, seed):
        self.seed = seed

    def before_step(self):
        seed_all(stream_seed(self.seed, comm.get_rank(), self.trainer.iter))
