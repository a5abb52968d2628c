"""The child of ``measure_peak_memory``: python memory_probe.py MODEL.onnx FEEDS.npz THREADS.

Prints one JSON line: the RSS high-water mark after importing numpy and onnxruntime and loading the
inputs (baseline), after creating the session, and after one run. Run as a script, not as part of
the package, so that nothing else is imported before the baseline.
"""

import json
import resource
import sys


def peak() -> int:
    """VmHWM of this process image; ru_maxrss on Linux keeps the parent's high-water mark across
    fork + exec, which would make the baseline the size of the (big) parent."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def main() -> None:
    import numpy as np
    import onnxruntime as ort

    feeds = dict(np.load(sys.argv[2]))
    base = peak()
    o = ort.SessionOptions()
    o.intra_op_num_threads = int(sys.argv[3])
    o.inter_op_num_threads = 1
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    o.log_severity_level = 3
    s = ort.InferenceSession(sys.argv[1], o, providers=["CPUExecutionProvider"])
    after_session = peak()
    s.run(None, {i.name: feeds[i.name] for i in s.get_inputs()})
    print(json.dumps({"baseline": base, "after_session": after_session, "peak": peak()}))


if __name__ == "__main__":
    main()
