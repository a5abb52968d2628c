"""The shape of ``report.json`` (torch-free; the API, the CLI and clients read it).

Longer than 400 lines because it is one document's schema (its JSON Schema is generated from it
and published); every class is a declaration with the description a reader of the report sees.

Conventions:

- Every figure carries its unit: a :class:`Figure` (``value``, ``unit``, ``how``), a unit in the
  field name (``p50_ms``, ``bytes``), or a ``unit`` field beside it; each section has a
  ``how_measured`` text.
- A figure or section that a run cannot fill is ``null`` / :class:`Absent` with a ``reason``.
- Reductions and speedups are factors teacher / student: ``2.0`` means half the size (or MACs,
  parameters) or twice as fast; ``< 1`` means the student is bigger or slower.
- :class:`Summary` stays flat (plain numbers) for clients and quality gates.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from worker.spec import GATE_METRICS, REPORT_SCHEMA_VERSION, Gates, ModelFormat, ReportSchemaVersion

FACTOR_UNIT = "x (teacher / student)"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Absent(_Strict):
    """A section this run could not fill, and why."""

    absent: Literal[True] = True
    reason: str


class Figure(_Strict):
    """One number with its unit and how it was obtained; ``value`` null means absent (see ``reason``)."""

    value: float | None
    unit: str
    how: str | None = Field(None, description="How it was measured, when the section text does not say.")
    reason: str | None = Field(None, description="Why the value is absent (value is null).")


class ToolVersions(_Strict):
    gancompress: str
    torch: str | None = None
    onnx: str | None = None
    onnxruntime: str | None = None
    torch_pruning: str | None = None
    python: str
    platform: str
    cpu_count: int


class TensorInfo(_Strict):
    name: str
    shape: list[int | str] = Field(description="Dimensions; strings are symbolic (e.g. batch).")
    dtype: str


class CodeIsolation(_Strict):
    converter: Literal["bubblewrap", "process"] = Field(
        description="bubblewrap: namespaces, uid nobody, a read-only system view; process: a separate "
        "process that can read what the worker can read."
    )
    isolated: bool
    detail: str


class InputInfo(_Strict):
    file_name: str
    format: ModelFormat
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0, description="Uploaded file size in bytes.")
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    code_isolation: CodeIsolation | None = Field(
        None,
        description="How the model's code was isolated while it was exported to ONNX (TorchScript "
        "only: importing an ONNX graph runs no code of the model).",
    )


class LayerRow(_Strict):
    name: str
    kind: str = Field(description="Layer type, e.g. Conv2d, ConvTranspose2d, Linear.")
    channels_before: int = Field(ge=0, description="Output channels (features) before pruning.")
    channels_after: int = Field(ge=0, description="Output channels (features) after pruning.")
    pruned: bool
    reason_kept: str | None = Field(None, description="Why the layer was left whole, when it was.")


class KeptLayer(_Strict):
    name: str
    reason: str


class PruningSection(_Strict):
    method: str
    criterion: str | None = None
    ratio_asked: float | None = Field(None, description="The spec's ratio (fraction removed), if any.")
    target_macs: int | None = None
    allocation: str | None = Field(
        None, description="channel: 'uniform' (one ratio) or 'sensitivity' (per-layer ratios, see notes)."
    )
    achieved_ratio: Figure = Field(description="Fraction removed (0..1) of what the method prunes.")
    layers: list[LayerRow] = Field(default_factory=list)
    kept_whole: list[KeptLayer] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    how_measured: str = ""


class CurvePoint(_Strict):
    step: int = Field(ge=0)
    loss: float | None = Field(description="Training loss (weighted sum), null before the first step.")
    heldout_score: float | None = Field(None, description="Held-out fidelity (see heldout_metric).")
    seconds: float | None = Field(None, description="Wall-clock seconds since distillation started.")


class DistillationSection(_Strict):
    steps: int = Field(ge=0, description="Optimizer steps run.")
    steps_asked: int | None = None
    seconds: Figure
    batch_size: int = Field(ge=1)
    losses: dict[str, float] = Field(description="Loss name -> weight.")
    curve: list[CurvePoint] = Field(default_factory=list)
    best_step: int | None = None
    heldout_metric: str = Field("ssim", description="What heldout_score is (higher is better).")
    stopped_by: str | None = Field(None, description="steps | budget | ...")
    quality_after_pruning: dict[str, float] = Field(
        default_factory=dict, description="Held-out metric name -> value right after pruning."
    )
    quality_after_recovery: dict[str, float] = Field(
        default_factory=dict,
        description="Held-out metric name -> value after least-squares recovery (the distillation's start).",
    )
    quality_after_distillation: dict[str, float] = Field(
        default_factory=dict, description="Held-out metric name -> value after distillation."
    )
    notes: list[str] = Field(default_factory=list)
    how_measured: str = ""


class RecoverySection(_Strict):
    method: str
    applied: bool = Field(description="False when the refit scored worse on held-out inputs and was undone.")
    layers_refitted: int = Field(ge=0)
    layers_skipped: dict[str, str] = Field(
        default_factory=dict, description="Layer -> why it was not refitted."
    )
    samples: int = Field(ge=0, description="Calibration inputs the layers were refitted on.")
    rows_per_layer: int = Field(ge=0, description="Sampled output positions per layer (least-squares rows).")
    layers_kept: int | None = Field(
        None,
        ge=0,
        description="Refits kept: the first this many of the refitted layers in forward order (all "
        "of them unless refitting the deeper ones made held-out outputs worse).",
    )
    crop: int | None = Field(
        None,
        description="Side of the random square crops the inputs were cut to when full-size inputs did "
        "not fit recovery's share of the budget; None: the full input size.",
    )
    seconds: Figure
    quality_before: dict[str, float] = Field(description="Held-out metric right after pruning.")
    quality_after: dict[str, float] = Field(description="Held-out metric after the refit.")
    output_mse_before: float | None = Field(
        None, description="Held-out output MSE vs the teacher after pruning."
    )
    output_mse_after: float | None = Field(None, description="The same after the refit.")
    layer_error_before: float = Field(
        description="Sum over refitted layers of relative squared error vs the teacher."
    )
    layer_error_after: float
    stopped_by: str | None = Field(None, description="'deadline' when its share of the budget ran out first.")
    notes: list[str] = Field(default_factory=list)
    how_measured: str = ""


class TimingSection(_Strict):
    budget_seconds: float = Field(description="distill.budget_seconds: the whole job's budget.")
    total_seconds: float = Field(
        description="Engine wall clock, import to report (process start not included)."
    )
    stages: dict[str, float] = Field(description="Stage -> wall-clock seconds, in order.")
    shares: dict[str, str] = Field(default_factory=dict, description="What bounded each stage.")
    how_measured: str = ""


class ExportSection(_Strict):
    opset: int
    quantize: str
    parity_max_abs_diff: Figure = Field(description="Max |ONNX - torch| of the float student.")
    quantized_max_abs_diff: Figure | None = Field(None, description="Max |quantized - float| ONNX student.")
    nodes_before_cleanup: int | None = None
    nodes_after_cleanup: int | None = None
    notes: list[str] = Field(default_factory=list)
    how_measured: str = ""


class ModelSize(_Strict):
    params: Figure
    nonzero_params: Figure
    bytes: Figure
    gzip_bytes: Figure
    macs: Figure


class SizeSection(_Strict):
    teacher: ModelSize
    student: ModelSize
    param_reduction: Figure
    nonzero_param_reduction: Figure
    mac_reduction: Figure
    size_reduction: Figure
    gzip_size_reduction: Figure
    input_shapes: dict[str, list[int]] = Field(
        default_factory=dict, description="Shapes MACs were counted at."
    )
    macs_not_counted_ops: dict[str, int] = Field(
        default_factory=dict, description="Op type -> node count in the student that carries no MACs here."
    )
    notes: list[str] = Field(default_factory=list)
    how_measured: str


class LatencyStatsOut(_Strict):
    unit: Literal["ms"] = "ms"
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    runs: int = Field(ge=1)
    samples_ms: list[float] = Field(default_factory=list, description="Raw timings, for the distribution.")


class LatencyAtThreads(_Strict):
    threads: int = Field(ge=1, description="onnxruntime intra_op_num_threads.")
    teacher: LatencyStatsOut
    student: LatencyStatsOut
    speedup: Figure = Field(description="teacher p50 / student p50.")
    rounds: int
    warmup: int
    stopped_by_budget: bool


class LatencySection(_Strict):
    batch_size: int | None
    input_shapes: dict[str, list[int]] = Field(default_factory=dict)
    per_threads: list[LatencyAtThreads]
    environment: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    how_measured: str


class MemorySection(_Strict):
    teacher: Figure = Field(description="Peak RSS added by one teacher session + one run (bytes).")
    student: Figure = Field(description="Peak RSS added by one student session + one run (bytes).")
    reduction: Figure
    how_measured: str


class MetricSummary(_Strict):
    unit: str
    higher_is_better: bool
    mean: float
    min: float
    max: float
    std: float
    values: list[float] = Field(default_factory=list, description="Per held-out sample.")
    description: str = ""


class QualitySection(_Strict):
    metrics: dict[str, MetricSummary]
    absent: dict[str, str] = Field(default_factory=dict, description="Metric name -> why it is absent.")
    n_samples: int = Field(ge=1)
    seed: int | None = None
    inputs: str = Field(description="What the held-out inputs were (never seen in distillation).")
    data_range: float = Field(description="Width of the output value range (2.0 for [-1, 1]).")
    is_image: bool
    worst_indices: list[int] = Field(default_factory=list)
    worst_by: str | None = None
    notes: list[str] = Field(default_factory=list)
    how_measured: str


class SearchCandidate(_Strict):
    """One evaluated candidate of a target search: its own exported ONNX, measured like the final
    model (MACs and bytes from the graph and file, latency in ONNX Runtime interleaved with the
    teacher, quality on the held-out inputs)."""

    id: str = Field(description="c1, c2, ... in the order they were evaluated.")
    level: float = Field(description="Compression level: the channel ratio it stands for (0 = the teacher).")
    allocation: str = Field(description="How the level's budget was spread over layers.")
    quantize: str = Field(description="none | int8-static | fp16 (a quantized copy of another candidate).")
    from_candidate: str | None = Field(None, description="The candidate a quantized one was made from.")
    macs: int
    params: int
    size_bytes: int = Field(description="Bytes of the candidate's ONNX file.")
    latency_ms: float = Field(description="p50 at 1 thread (ms).")
    latency_ms_all_cores: float | None = Field(None, description="p50 at cpu_count threads (ms).")
    speedup: float = Field(
        description="Teacher p50 / candidate p50 at 1 thread, measured in the same run (x)."
    )
    speedup_all_cores: float | None = None
    latency_runs: int = Field(description="Timed rounds at 1 thread (teacher and candidate each).")
    ssim: float | None = Field(
        None, description="Mean SSIM vs the teacher on the held-out inputs (null: not trained)."
    )
    psnr: float | None = Field(None, description="Mean PSNR vs the teacher on the held-out inputs (dB).")
    recovered: bool = Field(False, description="The least-squares refit was kept for it.")
    distill_steps: int = Field(0, description="Distillation steps it had when it was measured.")
    train_seconds: float = Field(0.0, description="Seconds of distillation it had when it was measured.")
    meets: bool | None = Field(
        description="Every target met (null: quality not measured, cost targets only)."
    )
    misses: list[str] = Field(default_factory=list, description="Targets missed, with the numbers.")
    ssim_projected: float | None = Field(
        None,
        description="SSIM projected for the training the pick gets (a power law fitted to this candidate's own "
        "held-out learning curve, the projected gain counted whole); null: not projected.",
    )
    meets_projected: bool | None = Field(
        None, description="Every target met with ssim_projected in place of ssim (null: not projected)."
    )
    pareto: bool = Field(
        False, description="On the latency-quality front: no other candidate is both faster and better."
    )
    picked: bool = False
    artifact: str | None = Field(None, description="Its ONNX file among the job's artifacts (mode sweep).")
    seconds: float = Field(
        description="Wall-clock seconds evaluating it cost (prune, refit, train, export, measure)."
    )


class SearchSection(_Strict):
    mode: str = Field(description="search | sweep")
    targets: dict[str, float] = Field(description="The targets (TargetSpec fields) the search aimed at.")
    objective: str = Field(description="What ranks candidates that meet the targets: latency or quality.")
    candidates: list[SearchCandidate]
    pick: str = Field(description="The id of the candidate the job distilled on and shipped.")
    met: bool = Field(description="The pick met every target when it was measured.")
    why: str = Field(description="Why this candidate, in one or two sentences.")
    final_note: str = Field(
        description="How the shipped model relates to the pick's candidate row (it was distilled further)."
    )
    seconds: float = Field(description="Wall-clock seconds of the whole search.")
    how_measured: str


class GateResult(_Strict):
    gate: str = Field(description="min_ssim | min_psnr | min_speedup")
    metric: str
    threshold: float
    value: float | None
    passed: bool
    reason: str | None = None


class GateResults(_Strict):
    passed: bool = Field(description="True when every set gate passed (true when none is set).")
    results: list[GateResult] = Field(default_factory=list)


class Summary(_Strict):
    """Flat headline numbers. ``None`` where not measured (see the sections for why)."""

    ssim: float | None = Field(None, description="Mean SSIM student vs teacher (ratio, 1 = identical).")
    psnr: float | None = Field(None, description="Mean PSNR student vs teacher (dB, capped at 100).")
    l1: float | None = Field(None, description="Mean |student - teacher| (output units).")
    speedup: float | None = Field(None, description="p50 latency teacher / student at 1 thread (x).")
    speedup_all_cores: float | None = Field(None, description="Same, at cpu_count threads (x).")
    mac_reduction: float | None = Field(None, description="MACs teacher / student (x).")
    param_reduction: float | None = Field(None, description="Parameters teacher / student (x).")
    size_reduction: float | None = Field(None, description="File bytes teacher / student (x).")
    gzip_size_reduction: float | None = Field(None, description="gzip-9 bytes teacher / student (x).")
    gates_passed: bool
    target_met: bool | None = Field(
        None,
        description="Target search: the shipped model meets every target, by this report's own "
        "measurements (null: no target was set).",
    )
    target_misses: list[str] = Field(
        default_factory=list, description="Targets the shipped model misses, with the numbers."
    )
    collapse: str | None = Field(
        None, description="Set when the result is not usable: what went wrong and what would help."
    )


class Report(_Strict):
    schema_version: ReportSchemaVersion = REPORT_SCHEMA_VERSION
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    tool: ToolVersions
    input: InputInfo
    spec: dict[str, Any] = Field(description="The CompressionSpec as submitted (after defaults).")
    pruning: PruningSection | Absent
    recovery: RecoverySection | Absent
    distillation: DistillationSection | Absent
    export: ExportSection | Absent
    size: SizeSection | Absent
    latency: LatencySection | Absent
    memory: MemorySection | Absent
    quality: QualitySection | Absent
    search: SearchSection | None = Field(
        None, description="Target search / sweep (prune.mode); null for one compression."
    )
    gates: GateResults
    summary: Summary
    timing: TimingSection | None = None
    warnings: list[str] = Field(default_factory=list)


def report_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of report.json, as pydantic generates it (serialization mode)."""
    return Report.model_json_schema(mode="serialization")


def evaluate_gates(gates: Gates, summary: Summary | Mapping[str, Any]) -> GateResults:
    """Check each set gate of ``gates`` (``min_ssim``, ``min_psnr``, ``min_speedup``) against the
    summary figure named in ``GATE_METRICS``: passed when ``value >= threshold``. A gate whose
    figure is missing (None or NaN) fails with a reason. No gate set: passed."""
    values = summary.model_dump() if isinstance(summary, Summary) else dict(summary)
    results: list[GateResult] = []
    for gate, metric in GATE_METRICS.items():
        threshold = getattr(gates, gate)
        if threshold is None:
            continue
        value = values.get(metric)
        if value is None or value != value:  # None or NaN
            results.append(
                GateResult(
                    gate=gate,
                    metric=metric,
                    threshold=threshold,
                    value=None,
                    passed=False,
                    reason=f"{metric} was not measured in this run",
                )
            )
            continue
        results.append(
            GateResult(
                gate=gate, metric=metric, threshold=threshold, value=float(value), passed=value >= threshold
            )
        )
    return GateResults(passed=all(r.passed for r in results), results=results)
