"""Size, parameters, MACs, latency and session memory of ONNX models (torch-free).

Everything here reads or runs ONNX files with ``onnx`` and ``onnxruntime`` only, so the same
numbers come out whatever produced the model. The contracts:

- :func:`count_params_onnx` / :func:`count_nonzero_params_onnx`: elements of weight initializers.
- :func:`count_macs_onnx`: multiply-accumulates of Conv / ConvTranspose / Gemm / MatMul (and their
  quantized forms) from the graph with inferred shapes, per node, plus the ops not counted.
- :func:`file_sizes`: bytes on disk and gzip-9 bytes of the file.
- :func:`measure_latency`: teacher and student in the same process, interleaved, fixed threads.
- :func:`measure_peak_memory`: RSS high-water mark of one session in a short-lived child process.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort
from onnx import TensorProto, numpy_helper

logger = logging.getLogger(__name__)

# Weight dtypes: floating point, and 8/4-bit integers (quantized weights). int64/int32 initializers
# are shapes, axes and indices, not parameters.
_WEIGHT_DTYPES: frozenset[int] = frozenset(
    {
        TensorProto.FLOAT,
        TensorProto.FLOAT16,
        TensorProto.DOUBLE,
        TensorProto.BFLOAT16,
        TensorProto.INT8,
        TensorProto.UINT8,
        TensorProto.INT4,
        TensorProto.UINT4,
    }
)

# op type -> (index of the weight input, how to count). See _node_macs.
COUNTED_OPS: frozenset[str] = frozenset(
    {
        "Conv",
        "ConvInteger",
        "QLinearConv",
        "ConvTranspose",
        "Gemm",
        "MatMul",
        "MatMulInteger",
        "QLinearMatMul",
    }
)

Feeds = Mapping[str, np.ndarray]
FeedsFn = Callable[[int], Feeds]


# ----------------------------------------------------------------------------- parameters, sizes


def _weight_initializers(model: onnx.ModelProto) -> list[TensorProto]:
    return [t for t in model.graph.initializer if t.data_type in _WEIGHT_DTYPES]


def count_params_onnx(model: onnx.ModelProto) -> int:
    """Number of parameters: the elements of all floating-point and 8/4-bit integer initializers.

    Integer initializers of 32/64 bits (shapes, axes, indices) are not parameters. In a quantized
    model the int8 weights count, and so do its scales and zero points (a few per layer).
    """
    return sum(math.prod(t.dims) for t in _weight_initializers(model))


def count_nonzero_params_onnx(model: onnx.ModelProto) -> int:
    """Number of parameters (as :func:`count_params_onnx`) whose stored value is not exactly 0."""
    total = 0
    for t in _weight_initializers(model):
        total += int(np.count_nonzero(numpy_helper.to_array(t)))
    return total


class FileSizes(TypedDict):
    bytes: int
    gzip_bytes: int


def file_sizes(path: Path | str) -> FileSizes:
    """Size of the file on disk and of its gzip (zlib level 9, gzip container) compression.

    The gzip size is what unstructured sparsity improves: zeros compress, they do not run faster.
    """
    p = Path(path)
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: gzip container, mtime 0
    gz = 0
    with p.open("rb") as f:
        while chunk := f.read(1 << 20):
            gz += len(comp.compress(chunk))
    gz += len(comp.flush())
    return FileSizes(bytes=p.stat().st_size, gzip_bytes=gz)


# ----------------------------------------------------------------------------- MACs


@dataclass
class NodeMacs:
    name: str
    op_type: str
    macs: int


@dataclass
class MacCount:
    """MACs of one model at the given input shapes.

    ``total`` sums ``per_node``. ``not_counted`` maps every op type that carries no MAC formula here
    (activations, norms, elementwise, reshapes, control flow) to its node count; ``unresolved``
    names counted-type nodes whose shapes could not be determined (then ``complete`` is false and
    ``total`` is a lower bound).
    """

    total: int
    per_node: list[NodeMacs]
    not_counted: dict[str, int]
    unresolved: list[str] = field(default_factory=list)
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    how: str = ""

    @property
    def complete(self) -> bool:
        return not self.unresolved

    def by_op_type(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for n in self.per_node:
            out[n.op_type] += n.macs
        return dict(out)


MACS_HOW = (
    "Counted from the ONNX graph after onnx.shape_inference (data_prop=True; onnxruntime for shapes "
    "still unknown) at the stated input shapes. One MAC = one multiply-accumulate. "
    "Conv: N*Cout*Hout*Wout*(Cin/groups)*kH*kW; ConvTranspose: N*Cin*Hin*Win*(Cout/groups)*kH*kW "
    "(no stride^2 over-count); Gemm/MatMul: M*K*N per batch element. Bias adds, activations, "
    "normalizations and resampling are not counted."
)


def _static_shape(vi: onnx.ValueInfoProto) -> list[int] | None:
    t = vi.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    dims = []
    for d in t.tensor_type.shape.dim:
        if not d.HasField("dim_value") or d.dim_value < 0:
            return None
        dims.append(int(d.dim_value))
    return dims


def _with_input_shapes(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    if m.functions:
        m = onnx.inliner.inline_local_functions(m)
    init_names = {t.name for t in m.graph.initializer}
    known = {i.name for i in m.graph.input if i.name not in init_names}
    unknown = set(input_shapes) - known
    if unknown:
        raise ValueError(f"input_shapes names {sorted(unknown)} are not graph inputs; valid: {sorted(known)}")
    for inp in m.graph.input:
        if inp.name in input_shapes:
            shape = inp.type.tensor_type.shape
            del shape.dim[:]
            for v in input_shapes[inp.name]:
                shape.dim.add().dim_value = int(v)
    # Stale or symbolic shapes recorded at export time would clash with the new input shapes.
    del m.graph.value_info[:]
    for out in m.graph.output:
        if out.type.HasField("tensor_type"):
            out.type.tensor_type.ClearField("shape")
    return m


_NP_OF_ONNX: dict[int, Any] = {
    TensorProto.FLOAT: np.float32,
    TensorProto.FLOAT16: np.float16,
    TensorProto.DOUBLE: np.float64,
    TensorProto.INT64: np.int64,
    TensorProto.INT32: np.int32,
    TensorProto.INT8: np.int8,
    TensorProto.UINT8: np.uint8,
    TensorProto.BOOL: np.bool_,
}


def _zero_feeds(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    init_names = {t.name for t in model.graph.initializer}
    feeds = {}
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        shape = input_shapes.get(inp.name) or _static_shape(inp)
        if shape is None:
            raise ValueError(f"no shape for input {inp.name!r}: pass it in input_shapes")
        dtype = _NP_OF_ONNX.get(inp.type.tensor_type.elem_type, np.float32)
        feeds[inp.name] = np.zeros(list(shape), dtype=dtype)
    return feeds


def _shapes_from_ort(
    model: onnx.ModelProto, names: Sequence[str], input_shapes: Mapping[str, Sequence[int]]
) -> dict[str, list[int]]:
    """Run the model once on zeros with ``names`` added as graph outputs; return their shapes."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    for n in names:
        if n not in existing:
            m.graph.output.append(onnx.ValueInfoProto(name=n))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    outs = sess.run(list(names), _zero_feeds(m, input_shapes))
    return {n: list(np.shape(v)) for n, v in zip(names, outs, strict=True)}


def _attr(node: onnx.NodeProto, name: str, default: int = 0) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(onnx.helper.get_attribute_value(a))
    return default


def _needed(node: onnx.NodeProto) -> list[str]:
    """Tensor names whose shapes the MAC formula of ``node`` needs."""
    op, i, o = node.op_type, list(node.input), list(node.output)
    if op in ("Conv", "ConvInteger"):
        return [i[1], o[0]]
    if op == "QLinearConv":
        return [i[3], o[0]]
    if op == "ConvTranspose":
        return [i[0], i[1]]
    if op == "Gemm":
        return [i[0], i[1]]
    if op in ("MatMul", "MatMulInteger"):
        return [i[0], o[0]]
    if op == "QLinearMatMul":
        return [i[0], o[0]]
    return []


def _node_macs(node: onnx.NodeProto, s: Mapping[str, list[int]]) -> int:
    op, i, o = node.op_type, list(node.input), list(node.output)
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        w = s[i[3] if op == "QLinearConv" else i[1]]  # [Cout, Cin/groups, k...]
        y = s[o[0]]  # [N, Cout, out...]
        return math.prod(y) * math.prod(w[1:])
    if op == "ConvTranspose":
        x, w = s[i[0]], s[i[1]]  # x [N, Cin, in...], w [Cin, Cout/groups, k...]
        return math.prod(x) * math.prod(w[1:])
    if op == "Gemm":
        a, b = s[i[0]], s[i[1]]
        m_, k = (a[1], a[0]) if _attr(node, "transA") else (a[0], a[1])
        n_ = b[0] if _attr(node, "transB") else b[1]
        return m_ * k * n_
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul"):
        a, y = s[i[0]], s[o[0]]
        return math.prod(y) * a[-1]  # every output element is a K-long dot product
    raise AssertionError(op)


def count_macs_onnx(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]) -> MacCount:
    """Count multiply-accumulates of ``model`` at ``input_shapes`` (input name -> full shape,
    batch included; inputs with fully static shapes may be left out).

    Shapes come from ``onnx.shape_inference.infer_shapes(data_prop=True)``; a shape that
    stays unknown is read by running the graph once on zeros in onnxruntime with that tensor added
    as an output. Nodes inside control-flow subgraphs are not visited (their op, e.g. ``If``, is
    listed in ``not_counted``).
    """
    m = _with_input_shapes(model, input_shapes)
    try:
        m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception as e:  # inference is best effort; onnxruntime fills the gaps below
        logger.warning("macs.shape_inference_failed error=%s", e)
    shapes: dict[str, list[int]] = {}
    for vi in [*m.graph.input, *m.graph.value_info, *m.graph.output]:
        sh = _static_shape(vi)
        if sh is not None:
            shapes[vi.name] = sh
    for t in m.graph.initializer:
        shapes[t.name] = list(t.dims)
    for n in m.graph.node:
        if n.op_type == "Constant" and n.output and n.attribute and n.attribute[0].name == "value":
            shapes[n.output[0]] = list(n.attribute[0].t.dims)

    counted = [n for n in m.graph.node if n.op_type in COUNTED_OPS and n.domain in ("", "ai.onnx")]
    missing = sorted({t for n in counted for t in _needed(n) if t not in shapes})
    if missing:
        logger.info("macs.ort_shape_fallback tensors=%d", len(missing))
        try:
            shapes.update(_shapes_from_ort(m, missing, input_shapes))
        except Exception as e:
            logger.warning("macs.ort_shape_fallback_failed error=%s", e)

    per_node: list[NodeMacs] = []
    unresolved: list[str] = []
    for idx, n in enumerate(counted):
        name = n.name or f"{n.op_type}_{idx}"
        if any(t not in shapes for t in _needed(n)):
            unresolved.append(name)
            continue
        per_node.append(NodeMacs(name=name, op_type=n.op_type, macs=int(_node_macs(n, shapes))))
    counted_ids = {id(n) for n in counted}
    not_counted = Counter(
        n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
        for n in m.graph.node
        if id(n) not in counted_ids
    )
    return MacCount(
        total=sum(n.macs for n in per_node),
        per_node=per_node,
        not_counted=dict(sorted(not_counted.items())),
        unresolved=unresolved,
        input_shapes={k: [int(v) for v in s] for k, s in input_shapes.items()},
        how=MACS_HOW,
    )


@dataclass
class ModelFigures:
    """Static figures of one ONNX file (see the functions that fill each field)."""

    path: str
    params: int
    nonzero_params: int
    bytes: int
    gzip_bytes: int
    macs: MacCount | None
    macs_error: str | None = None


def measure_model(path: Path | str, input_shapes: Mapping[str, Sequence[int]]) -> ModelFigures:
    """Parameters, non-zero parameters, file sizes and MACs of the ONNX file at ``path``.

    A MAC-count failure does not fail the measurement: ``macs`` is None and ``macs_error`` says why.
    """
    model = onnx.load(str(path))
    sizes = file_sizes(path)
    macs: MacCount | None = None
    err: str | None = None
    try:
        macs = count_macs_onnx(model, input_shapes)
    except Exception as e:
        logger.warning("macs.failed path=%s error=%s", path, e)
        err = f"{type(e).__name__}: {e}"
    return ModelFigures(
        path=str(path),
        params=count_params_onnx(model),
        nonzero_params=count_nonzero_params_onnx(model),
        bytes=sizes["bytes"],
        gzip_bytes=sizes["gzip_bytes"],
        macs=macs,
        macs_error=err,
    )


# ----------------------------------------------------------------------------- environment


def _cpu_model() -> str:
    proc = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return proc or platform.machine()


def environment_info() -> dict[str, str]:
    """Versions and machine facts that latency and memory numbers depend on."""
    return {
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "onnx": onnx.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": str(os.cpu_count() or 1),
        "ort_providers": "CPUExecutionProvider",
    }


# ----------------------------------------------------------------------------- latency


@dataclass
class LatencyStats:
    """Latency of one model at one thread count, in milliseconds over ``runs`` timed runs."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    runs: int
    samples_ms: list[float]

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> LatencyStats:
        a = np.asarray(samples_ms, dtype=np.float64)
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        return cls(
            p50_ms=float(p50),
            p90_ms=float(p90),
            p99_ms=float(p99),
            mean_ms=float(a.mean()),
            min_ms=float(a.min()),
            max_ms=float(a.max()),
            std_ms=float(a.std(ddof=1)) if a.size > 1 else 0.0,
            runs=int(a.size),
            samples_ms=[float(x) for x in a],
        )


@dataclass
class ThreadLatency:
    threads: int
    teacher: LatencyStats
    student: LatencyStats
    speedup: float  # teacher p50 / student p50
    rounds: int
    warmup: int
    stopped_by_budget: bool


@dataclass
class LatencyResult:
    per_threads: list[ThreadLatency]
    batch_size: int | None
    input_shapes: dict[str, list[int]]
    environment: dict[str, str]
    how: str

    def at(self, threads: int) -> ThreadLatency:
        for t in self.per_threads:
            if t.threads == threads:
                return t
        raise KeyError(f"no latency at {threads} threads; measured: {[t.threads for t in self.per_threads]}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_session(path: Path | str, threads: int) -> ort.InferenceSession:
    """A CPU onnxruntime session: ``intra_op_num_threads=threads``, ``inter_op_num_threads=1``,
    sequential execution, all graph optimizations."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _select(sess: ort.InferenceSession, feeds: Feeds) -> dict[str, np.ndarray]:
    names = [i.name for i in sess.get_inputs()]
    missing = [n for n in names if n not in feeds]
    if missing:
        raise ValueError(f"feeds lack inputs {missing}; given: {sorted(feeds)}")
    return {n: feeds[n] for n in names}


def _timed(sess: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> float:
    t0 = time.perf_counter_ns()
    sess.run(None, feeds)
    return (time.perf_counter_ns() - t0) / 1e6


def default_threads() -> list[int]:
    """``[1, os.cpu_count()]`` without duplicates."""
    return sorted({1, os.cpu_count() or 1})


def measure_latency(
    teacher_path: Path | str,
    student_path: Path | str,
    feeds: Feeds | FeedsFn,
    threads: Sequence[int] | None = None,
    warmup: int = 10,
    runs: int = 100,
    budget_seconds: float = 60.0,
    min_runs: int = 5,
) -> LatencyResult:
    """Latency of teacher and student ONNX models on CPU, measured against each other.

    ``feeds`` is either one input dict (name -> array, batch first) used for every run, or a
    function ``round_index -> feeds`` called once per round; in each round both models get the
    same arrays. For each thread count ``t`` in ``threads`` (default ``[1, cpu_count]``): both
    sessions are created in this process (see :func:`make_session`), each runs ``warmup`` untimed
    runs, then ``runs`` rounds each time one teacher and one student ``session.run`` with
    ``time.perf_counter_ns``, the order alternating every round. ``budget_seconds`` bounds the
    whole measurement: each thread count gets an equal share of what is left, warm-up included;
    at least ``min_runs`` rounds run whatever the budget (``stopped_by_budget`` says when the budget
    cut the rounds short). Teacher and student always have the same number of runs.
    """
    threads = list(dict.fromkeys(threads or default_threads()))
    if any(t < 1 for t in threads):
        raise ValueError(f"thread counts must be >= 1, got {threads}")
    feeds_fn: FeedsFn = feeds if callable(feeds) else (lambda _i, _f=feeds: _f)  # type: ignore[misc]
    first = feeds_fn(0)
    arrays = list(first.values())
    batch = int(np.shape(arrays[0])[0]) if arrays and np.ndim(arrays[0]) else None
    deadline = time.monotonic() + budget_seconds
    results: list[ThreadLatency] = []
    for ti, t in enumerate(threads):
        share = max(0.0, deadline - time.monotonic()) / (len(threads) - ti)
        t_end = time.monotonic() + share
        sessions = {"teacher": make_session(teacher_path, t), "student": make_session(student_path, t)}
        w_done = 0
        for w in range(max(1, warmup)):
            if w >= 1 and time.monotonic() > t_end - share / 2:  # warm-up never takes over half
                break
            f = feeds_fn(w)
            for s in sessions.values():
                s.run(None, _select(s, f))
            w_done += 1
        samples: dict[str, list[float]] = {"teacher": [], "student": []}
        stopped = False
        r = 0
        while r < runs:
            if r >= min_runs and time.monotonic() > t_end:
                stopped = True
                break
            f = feeds_fn(r)
            order = ("teacher", "student") if r % 2 == 0 else ("student", "teacher")
            for name in order:
                s = sessions[name]
                samples[name].append(_timed(s, _select(s, f)))
            r += 1
        te, st = LatencyStats.from_samples(samples["teacher"]), LatencyStats.from_samples(samples["student"])
        results.append(
            ThreadLatency(
                threads=t,
                teacher=te,
                student=st,
                speedup=te.p50_ms / st.p50_ms if st.p50_ms > 0 else float("inf"),
                rounds=r,
                warmup=w_done,
                stopped_by_budget=stopped,
            )
        )
        logger.info(
            "latency.measured threads=%d rounds=%d teacher_p50_ms=%.3f student_p50_ms=%.3f",
            t,
            r,
            te.p50_ms,
            st.p50_ms,
        )
        del sessions
    how = (
        f"onnxruntime {ort.__version__} CPUExecutionProvider, teacher and student sessions in one "
        "process, intra_op_num_threads=T, inter_op_num_threads=1, sequential execution, all graph "
        f"optimizations; {results[0].warmup if results else warmup} untimed warm-up runs per model, then "
        "rounds of one teacher and one student run in alternating order, each timed with "
        "time.perf_counter_ns around session.run (outputs copied to numpy included); "
        f"batch size {batch}. Speedup = teacher p50 / student p50."
    )
    return LatencyResult(
        per_threads=results,
        batch_size=batch,
        input_shapes={k: list(np.shape(v)) for k, v in first.items()},
        environment=environment_info(),
        how=how,
    )


# ----------------------------------------------------------------------------- peak memory

_CHILD_SRC = r"""
import json, resource, sys
def peak():
    # VmHWM belongs to this process image; ru_maxrss on Linux keeps the parent's high-water mark
    # across fork + exec, which would make the baseline the size of the (big) parent.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024
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
"""

MEMORY_HOW = (
    "In a fresh child Python process: import numpy and onnxruntime and load the inputs, read the RSS "
    "high-water mark (VmHWM of /proc/self/status; getrusage ru_maxrss where /proc is absent) as the "
    "baseline; create the CPU session "
    "(threads={threads}, all graph optimizations) and run it once; session bytes = high-water mark "
    "after the run minus the baseline. Covers weights, the optimized graph and activation arenas."
)


@dataclass
class MemoryResult:
    """Peak resident memory of one onnxruntime session (bytes)."""

    session_bytes: int  # peak minus baseline: what the session and one run added
    peak_bytes: int  # child high-water mark after creating the session and running once
    baseline_bytes: int  # child high-water mark after imports and loading the inputs
    after_create_bytes: int
    threads: int
    how: str


def measure_peak_memory(
    model_path: Path | str, feeds: Feeds, threads: int = 1, timeout_s: float = 300.0
) -> MemoryResult:
    """RSS high-water mark that creating a session for ``model_path`` and running it once on
    ``feeds`` adds, measured in a short-lived child process (see ``MEMORY_HOW``).

    Raises ``RuntimeError`` when the child fails (its stderr tail is in the message).
    """
    with tempfile.TemporaryDirectory(prefix="gc-mem-") as tmp:
        npz = Path(tmp) / "feeds.npz"
        np.savez(npz, **{k: np.asarray(v) for k, v in feeds.items()})
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD_SRC, str(model_path), str(npz), str(threads)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=tmp,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed (rc {proc.returncode}): {proc.stderr[-2000:]}")
    d = json.loads(proc.stdout.strip().splitlines()[-1])
    res = MemoryResult(
        session_bytes=int(d["peak"] - d["baseline"]),
        peak_bytes=int(d["peak"]),
        baseline_bytes=int(d["baseline"]),
        after_create_bytes=int(d["after_session"]),
        threads=threads,
        how=MEMORY_HOW.format(threads=threads),
    )
    logger.info("memory.measured path=%s session_bytes=%d", model_path, res.session_bytes)
    return res
