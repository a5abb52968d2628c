"""Which layers decide the speedup? Per-node ONNX Runtime kernel time, teacher vs engine student.

Builds the engine's default student at ``--ratio`` (a short distillation: only the graph matters
here), profiles teacher and student in ONNX Runtime (1 thread, all graph optimizations, batch 1 of
the held-out inputs, ``--runs`` runs after warm-up, ``enable_profiling``), and prints the nodes by
kernel time with their MACs (``worker.engine.measure.count_macs_onnx``; nodes ONNX Runtime fused or
renamed have no MAC entry). Efficiency on kernel time = time speedup / MAC reduction.

    python -m benchmarks.profile_nodes --model srresnet [--ratio 0.5] [--runs 60]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from benchmarks.common import setup
from benchmarks.evaluate import heldout_feeds, teacher_path
from worker.engine import measure
from worker.spec import CompressionSpec, DistillSpec, PruneSpec
from worker.zoo.registry import model_entry, zoo_dir


def kernel_times(path: Path, feeds: dict[str, np.ndarray], runs: int, tmp: Path) -> dict[str, float]:
    """Node name -> mean kernel microseconds per run."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp / path.stem)
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    one = {i.name: feeds[i.name][:1] for i in sess.get_inputs()}
    for _ in range(10):
        sess.run(None, one)
    # warm-up runs are in the profile too: count them and divide by the total
    for _ in range(runs):
        sess.run(None, one)
    events = json.loads(Path(sess.end_profiling()).read_text())
    total: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            total[e["name"][: -len("_kernel_time")]] += e["dur"]
    return {k: v / (runs + 10) for k, v in total.items()}


def node_macs(path: Path, feeds: dict[str, np.ndarray]) -> tuple[dict[str, int], int]:
    """Profile name -> MACs. ONNX Runtime names a node it rewrote to NCHWc after its output tensor
    (``<output>_nchwc``), so each node is listed under its name and under that alias. Also returns
    the total."""
    model = onnx.load(str(path))
    shapes = {k: [1, *v.shape[1:]] for k, v in feeds.items()}
    by_name = {n.name: n.macs for n in measure.count_macs_onnx(model, shapes).per_node}
    out: dict[str, int] = {}
    for node in model.graph.node:
        if node.name in by_name:
            out[node.name] = by_name[node.name]
            out[f"{node.output[0]}_nchwc"] = by_name[node.name]
    return out, sum(by_name.values())


def _table(label: str, times: dict[str, float], macs: dict[str, int], all_macs: int, top: int) -> None:
    total = sum(times.values())
    print(f"\n{label}: {total:.0f} µs per run, {all_macs / 1e6:.1f} MMACs\n")
    print("| node | µs | share | MACs | GMAC/s |\n|---|---|---|---|---|")
    for name in sorted(times, key=lambda n: -times[n])[:top]:
        mm = macs.get(name)
        rate = f"{mm / times[name] / 1e3:.1f}" if mm else "—"
        print(
            f"| `{name}` | {times[name]:.0f} | {times[name] / total:.0%} | {f'{mm / 1e6:.1f} M' if mm else '—'} | {rate} |"
        )


def main(argv: list[str] | None = None) -> int:
    from worker.engine.pipeline import run_pipeline

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="srresnet")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--allocation", default="sensitivity", help="sensitivity (the default) or uniform")
    ap.add_argument("--top", type=int, default=8)
    args = ap.parse_args(argv)
    setup(1)
    entry = model_entry(args.model)
    calib = {"": zoo_dir() / entry["calibration"]} if "calibration" in entry else None
    feeds = heldout_feeds(args.model)
    with tempfile.TemporaryDirectory(prefix="gc-profile-") as d:
        tmp = Path(d)
        prune = PruneSpec(ratio=args.ratio, allocation=args.allocation)
        spec = CompressionSpec(prune=prune, distill=DistillSpec(steps=1))
        r = run_pipeline(teacher_path(args.model), spec, tmp / "out", calibration=calib)
        paths = {"teacher": teacher_path(args.model), "student": r.student_onnx}
        t = {k: kernel_times(p, feeds, args.runs, tmp) for k, p in paths.items()}
        counted = {k: node_macs(p, feeds) for k, p in paths.items()}
        m = {k: v[0] for k, v in counted.items()}
    for k in paths:
        _table(k, t[k], m[k], counted[k][1], args.top)
    tt, ts = sum(t["teacher"].values()), sum(t["student"].values())
    mt, ms = counted["teacher"][1], counted["student"][1]
    print(
        f"\nkernel-time speedup {tt / ts:.2f}x, MAC reduction {mt / ms:.2f}x, efficiency {tt / ts / (mt / ms):.2f}"
    )
    out = f"{r.imported.output_names[0]}_nchwc"  # the output layer, by the graph output's name
    if all(out in t[k] and out in m[k] for k in paths):
        rt, rs = tt - t["teacher"][out], ts - t["student"][out]
        rmt, rms = mt - m["teacher"][out], ms - m["student"][out]
        print(
            f"output layer: {t['teacher'][out]:.0f} -> {t['student'][out]:.0f} µs "
            f"({t['teacher'][out] / t['student'][out]:.2f}x), MACs {m['teacher'][out] / m['student'][out]:.2f}x fewer; "
            f"everything else: speedup {rt / rs:.2f}x, MAC reduction {rmt / rms:.2f}x, efficiency {rt / rs / (rmt / rms):.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
