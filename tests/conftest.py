import logging
import os
import sys

import pytest
import torch

# tests import helpers next to them (reference_focalnet) and the tools as modules
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tools"))


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors on shared cores: one thread is faster than two competing (and spinning) ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _isolated_logging():
    """Tools run in-process configure logging as programs do: Detectron2's (cached) ``setup_logger`` binds handlers
    to this test's captured stdout, which is closed afterwards, and stops propagation to the root logger, where
    caplog listens; logging config calls may disable loggers. Put every named logger back after each test."""
    from detectron2.utils.logger import setup_logger

    loggers = logging.Logger.manager.loggerDict
    before = {name: (lg.handlers[:], lg.propagate, lg.disabled, lg.level)
              for name, lg in loggers.items() if isinstance(lg, logging.Logger)}
    yield
    for name, lg in list(loggers.items()):
        if isinstance(lg, logging.Logger):
            handlers, lg.propagate, lg.disabled, level = before.get(name, ([], True, False, logging.NOTSET))
            lg.handlers[:] = handlers
            lg.setLevel(level)
    setup_logger.cache_clear()  # the next in-process tool sets its handlers up again, on its own stdout
