"""Size, parameters, MACs, latency and session memory of ONNX models (torch-free).

Everything here reads or runs ONNX files with ``onnx`` and ``onnxruntime`` only, so the same
numbers come out whatever produced the model: ``macs`` (parameters, file sizes, MACs from the
graph), ``latency`` (teacher and student interleaved in one process, fixed threads) and ``memory``
(RSS high-water mark of one session, in a child process running ``memory_probe.py``).
"""

from worker.engine.measure.latency import (
    LatencyResult,
    LatencyStats,
    ThreadLatency,
    default_threads,
    environment_info,
    make_session,
    measure_latency,
)
from worker.engine.measure.macs import (
    COUNTED_OPS,
    MACS_HOW,
    FileSizes,
    MacCount,
    ModelFigures,
    NodeMacs,
    count_macs_onnx,
    count_nonzero_params_onnx,
    count_params_onnx,
    file_sizes,
    measure_model,
)
from worker.engine.measure.memory import MEMORY_HOW, MemoryResult, measure_peak_memory

__all__ = [
    "COUNTED_OPS",
    "MACS_HOW",
    "MEMORY_HOW",
    "FileSizes",
    "LatencyResult",
    "LatencyStats",
    "MacCount",
    "MemoryResult",
    "ModelFigures",
    "NodeMacs",
    "ThreadLatency",
    "count_macs_onnx",
    "count_nonzero_params_onnx",
    "count_params_onnx",
    "default_threads",
    "environment_info",
    "file_sizes",
    "make_session",
    "measure_latency",
    "measure_model",
    "measure_peak_memory",
]
