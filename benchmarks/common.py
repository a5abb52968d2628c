"""Set-up shared by the benchmark scripts."""

from __future__ import annotations

import logging
import warnings

import torch


def setup(threads: int = 1) -> None:
    """INFO logging for the benchmark, quiet engine/library loggers and warnings, and a fixed
    number of torch threads (one per process is the steady choice on a shared 2-core box)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for noisy in ("worker", "onnx2torch", "torch_pruning"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
