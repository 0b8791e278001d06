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
def _focalnet_logs_reach_caplog():
    """Tools run in-process call Detectron2's ``setup_logger(name="focalnet_det")``, which stops the package's
    records from propagating to the root logger, where caplog listens: let them through again after each test."""
    yield
    logging.getLogger("focalnet_det").propagate = True
