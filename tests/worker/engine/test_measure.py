"""Tests of worker.engine.measure: parameter counts, MACs (hand-computed and vs torch), file sizes,
the latency harness and session peak memory."""

from __future__ import annotations

import gzip
import io
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from worker.engine.measure import (
    MacCount,
    count_macs_onnx,
    count_nonzero_params_onnx,
    count_params_onnx,
    file_sizes,
    measure_latency,
    measure_model,
    measure_peak_memory,
)

RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, inits=(), opset: int = 17) -> onnx.ModelProto:
    g = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _f32(name: str, shape: list[int | str] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _init(name: str, shape: tuple[int, ...], zeros: float = 0.0) -> TensorProto:
    a = RNG.standard_normal(shape).astype(np.float32)
    if zeros:
        a[RNG.random(shape) < zeros] = 0.0
    return numpy_helper.from_array(a, name)


def _conv_model(cin: int, cout: int, hw: int) -> onnx.ModelProto:
    return _model(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        [_f32("x", [1, cin, hw, hw])],
        [_f32("y", None)],
        [_init("w", (cout, cin, 3, 3))],
    )


# ----------------------------------------------------------------------------- MACs by hand


def test_conv_stride_padding_groups() -> None:
    # x [2, 8, 15, 17], w [16, 8/2, 3, 3], stride 2, pad 1 -> y [2, 16, 8, 9]
    m = _model(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1], group=2)],
        [_f32("x", ["n", 8, 15, 17])],
        [_f32("y", None)],
        [_init("w", (16, 4, 3, 3)), _init("b", (16,))],
    )
    r = count_macs_onnx(m, {"x": [2, 8, 15, 17]})
    assert r.total == 2 * 16 * 8 * 9 * 4 * 3 * 3
    assert [(n.op_type, n.macs) for n in r.per_node] == [("Conv", r.total)]
    assert r.complete and r.not_counted == {}


def test_conv_transpose_stride2_has_no_stride_squared_overcount() -> None:
    # MACs = N * Cin * Hin * Win * Cout/groups * kH * kW
    m = _model(
        [helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1])],
        [_f32("x", [1, 8, 5, 6])],
        [_f32("y", None)],
        [_init("w", (8, 3, 4, 4))],
    )
    assert count_macs_onnx(m, {}).total == 1 * 8 * 5 * 6 * 3 * 4 * 4


def test_conv_transpose_groups() -> None:
    m = _model(
        [helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], group=4)],
        [_f32("x", [2, 8, 4, 4])],
        [_f32("y", None)],
        [_init("w", (8, 2, 3, 3))],  # Cout = 2 * 4 = 8, Cout/groups = 2
    )
    assert count_macs_onnx(m, {}).total == 2 * 8 * 4 * 4 * 2 * 3 * 3


def test_linear_gemm_and_batched_matmul() -> None:
    m = _model(
        [
            helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1),  # Linear(32 -> 10)
            helper.make_node("Reshape", ["h", "s"], ["h3"]),
            helper.make_node("MatMul", ["h3", "w2"], ["y"]),  # [4, 5, 2] x [2, 7]
        ],
        [_f32("x", [4, 32])],
        [_f32("y", None)],
        [
            _init("w", (10, 32)),
            _init("b", (10,)),
            numpy_helper.from_array(np.array([4, 5, 2], dtype=np.int64), "s"),
            _init("w2", (2, 7)),
        ],
    )
    r = count_macs_onnx(m, {"x": [4, 32]})
    assert r.by_op_type() == {"Gemm": 4 * 32 * 10, "MatMul": 4 * 5 * 7 * 2}
    assert r.not_counted == {"Reshape": 1}


def test_unknown_shape_falls_back_to_onnxruntime() -> None:
    # The reshape target goes through float arithmetic, which shape inference does not propagate.
    m = _model(
        [
            helper.make_node("Shape", ["x"], ["sh"]),
            helper.make_node("Cast", ["sh"], ["shf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["shf", "one"], ["shf2"]),
            helper.make_node("Cast", ["shf2"], ["shi"], to=TensorProto.INT64),
            helper.make_node("Reshape", ["x", "shi"], ["x2"]),
            helper.make_node("MatMul", ["x2", "w"], ["y"]),
        ],
        [_f32("x", ["n", 6])],
        [_f32("y", None)],
        [numpy_helper.from_array(np.ones(2, np.float32), "one"), _init("w", (6, 3))],
    )
    r = count_macs_onnx(m, {"x": [5, 6]})
    assert r.complete
    assert r.total == 5 * 6 * 3


def test_input_shapes_names_are_checked() -> None:
    with pytest.raises(ValueError, match="valid"):
        count_macs_onnx(_conv_model(2, 2, 4), {"nope": [1]})


def test_macs_match_torch_flop_counter() -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, groups=4),
        torch.nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1, groups=2),
        torch.nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1, output_padding=1),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 16 * 16, 10),
    ).eval()
    x = torch.randn(2, 3, 8, 8)
    with FlopCounterMode(display=False) as fc:
        net(x)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (x,), buf, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}}, opset_version=17
        )
    m = onnx.load_from_string(buf.getvalue())
    r = count_macs_onnx(m, {"x": [2, 3, 8, 8]})
    assert r.total == fc.get_total_flops() // 2
    assert r.complete
    assert count_params_onnx(m) == sum(p.numel() for p in net.parameters())


# ----------------------------------------------------------------------------- params and sizes


def test_param_counts_skip_int_initializers_and_count_nonzeros(tmp_path: Path) -> None:
    w = np.arange(12, dtype=np.float32).reshape(3, 4)  # one zero
    m = _model(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Reshape", ["h", "s"], ["y"])],
        [_f32("x", [2, 3])],
        [_f32("y", None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([8], np.int64), "s")],
    )
    assert count_params_onnx(m) == 12
    assert count_nonzero_params_onnx(m) == 11
    p = tmp_path / "m.onnx"
    onnx.save(m, str(p))
    fig = measure_model(p, {"x": [2, 3]})
    assert (fig.params, fig.nonzero_params, fig.bytes) == (12, 11, p.stat().st_size)
    assert isinstance(fig.macs, MacCount) and fig.macs.total == 2 * 3 * 4


def test_file_sizes_gzip9(tmp_path: Path) -> None:
    data = bytes(200_000) + RNG.bytes(1000)
    p = tmp_path / "f.bin"
    p.write_bytes(data)
    s = file_sizes(p)
    assert s["bytes"] == len(data)
    assert s["gzip_bytes"] == len(gzip.compress(data, compresslevel=9, mtime=0))
    assert s["gzip_bytes"] < 3000


# ----------------------------------------------------------------------------- latency, memory


@pytest.fixture(scope="module")
def conv_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("lat")
    light = d / "light.onnx"
    heavy = d / "heavy.onnx"
    # heavy: 4x the input and 4x the output channels -> 16x the MACs of light (same input name)
    onnx.save(_conv_model(16, 16, 32), str(light))
    onnx.save(
        _model(
            [
                helper.make_node("Tile", ["x", "reps"], ["x4"]),
                helper.make_node("Conv", ["x4", "w"], ["y"], pads=[1, 1, 1, 1]),
            ],
            [_f32("x", [1, 16, 32, 32])],
            [_f32("y", None)],
            [numpy_helper.from_array(np.array([1, 4, 1, 1], np.int64), "reps"), _init("w", (64, 64, 3, 3))],
        ),
        str(heavy),
    )
    return light, heavy


def test_latency_heavier_model_is_slower_and_result_is_complete(conv_pair: tuple[Path, Path]) -> None:
    light, heavy = conv_pair
    feeds = {"x": RNG.standard_normal((1, 16, 32, 32)).astype(np.float32)}
    r = measure_latency(heavy, light, feeds, threads=[1], warmup=2, runs=15, budget_seconds=30)
    assert r.batch_size == 1 and r.input_shapes == {"x": [1, 16, 32, 32]}
    assert {"onnxruntime", "numpy", "cpu_count", "processor"} <= set(r.environment)
    assert "perf_counter_ns" in r.how
    (t1,) = r.per_threads
    assert t1.threads == 1 and t1.rounds == 15 and not t1.stopped_by_budget
    assert t1.teacher.runs == t1.student.runs == 15  # interleaved: same count each
    assert len(t1.teacher.samples_ms) == len(t1.student.samples_ms) == 15
    for s in (t1.teacher, t1.student):
        assert 0 < s.min_ms <= s.p50_ms <= s.p90_ms <= s.p99_ms <= s.max_ms
        assert s.std_ms >= 0 and s.min_ms <= s.mean_ms <= s.max_ms
    # 16x the MACs: the measured p50 ratio must be well above 1 (generous margin for noisy CI)
    assert t1.speedup > 3.0
    assert t1.speedup == pytest.approx(t1.teacher.p50_ms / t1.student.p50_ms)
    assert r.at(1) is t1


def test_latency_budget_feeds_fn_and_default_threads(conv_pair: tuple[Path, Path]) -> None:
    light, _ = conv_pair
    calls: list[int] = []

    def feeds_fn(i: int) -> dict[str, np.ndarray]:
        calls.append(i)
        return {"x": np.full((1, 16, 32, 32), i, np.float32)}

    r = measure_latency(light, light, feeds_fn, warmup=3, runs=1000, budget_seconds=0.0, min_runs=4)
    assert [t.threads for t in r.per_threads] == sorted({1, os.cpu_count() or 1})
    for t in r.per_threads:
        assert t.rounds == 4 and t.stopped_by_budget
        assert t.teacher.runs == t.student.runs == 4
    assert calls.count(0) >= 2  # batch-size probe + round 0


def test_latency_feeds_must_cover_inputs(conv_pair: tuple[Path, Path]) -> None:
    light, _ = conv_pair
    with pytest.raises(ValueError, match="lack inputs"):
        measure_latency(light, light, {"other": np.zeros(1, np.float32)}, threads=[1], warmup=1, runs=1)


def test_peak_memory_grows_with_initializer_size(tmp_path: Path) -> None:
    def add_model(n: int) -> Path:
        p = tmp_path / f"add{n}.onnx"
        m = _model(
            [helper.make_node("Add", ["x", "w"], ["y"])],
            [_f32("x", [1])],
            [_f32("y", None)],
            [numpy_helper.from_array(np.ones(n, np.float32), "w")],
        )
        onnx.save(m, str(p))
        return p

    feeds = {"x": np.ones(1, np.float32)}
    small = measure_peak_memory(add_model(16), feeds)
    big = measure_peak_memory(add_model(4_000_000), feeds)  # 16 MB of weights (+16 MB output)
    assert big.session_bytes > small.session_bytes + 12_000_000
    assert big.peak_bytes >= big.after_create_bytes >= big.baseline_bytes > 0
    assert "high-water mark" in big.how and small.threads == 1
