"""The torch-free contract between the API, the CLI, the worker and the engine.

Everything a user can ask for is validated here, at submit time, so that a bad spec is a
``422`` (HTTP) or a one-line error (CLI) and never a job that fails half an hour later.
Every closed set of names is a ``StrEnum``; each engine registry must implement every member
(tests assert it), and each member a user chooses (pruning method, criterion, loss, metric,
quantization mode) is described in ``worker/core/catalog.py``, which refuses an incomplete table.

Longer than 400 lines because it is one contract: the spec sections, their enums and the progress
events are read together (by the API's schema, the catalogue and the CLI flags); split, each part
would import the others.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ReportSchemaVersion = Literal["1.2"]
REPORT_SCHEMA_VERSION: ReportSchemaVersion = "1.2"  # 1.2: the ``search`` section (target search)
# Beyond this per-layer ratio Torch-Pruning skips groups that would keep too few channels, so
# MACs stop falling (measured on the zoo); channel pruning is capped here.
MAX_CHANNEL_RATIO = 0.8


class PruneMethod(StrEnum):
    """How the generator is pruned."""

    CHANNEL = "channel"  # structured: removes channels, the graph gets smaller and faster
    UNSTRUCTURED = "unstructured"  # global magnitude sparsity: smaller compressed file only
    BLOCK = "block"  # removes whole residual blocks that have an identity skip


class Criterion(StrEnum):
    """Channel importance criterion for ``channel`` pruning."""

    L1 = "l1"
    L2 = "l2"
    BN_SCALE = "bn_scale"
    TAYLOR = "taylor"
    RANDOM = "random"


class AllocationName(StrEnum):
    """How ``channel`` pruning spreads its budget over layers."""

    UNIFORM = "uniform"  # the same ratio for every prunable layer
    SENSITIVITY = "sensitivity"  # per-layer ratios for the same MACs, least output distortion
    LATENCY = "latency"  # per-layer ratios for the same measured time, least output distortion


class PruneMode(StrEnum):
    """One compression, or a search over compression levels (``channel`` pruning)."""

    SINGLE = "single"  # one compression at ``ratio`` / ``target_macs``
    SEARCH = "search"  # candidates at several levels; the pick meets ``target`` (and is distilled on)
    SWEEP = "sweep"  # like search, and every candidate's ONNX file is returned too


class Augment(StrEnum):
    """Training-input variety for image inputs (held-out images are never augmented)."""

    FLIP = "flip"  # random crops (when images are larger than the input) and horizontal flips
    MIX = "mix"  # flip, and half the images blended with another (lambda ~ U(0.5, 1))


class RecoveryName(StrEnum):
    """Closed-form repair of the pruned student before any gradient step."""

    LEAST_SQUARES = "least_squares"  # refit each layer to the teacher's outputs (ridge least squares)
    NONE = "none"  # start distillation from the pruned weights


class LossName(StrEnum):
    """Distillation losses (student output vs teacher output, or features)."""

    L1 = "l1"
    MSE = "mse"
    SSIM = "ssim"
    FEATURE = "feature"


class MetricName(StrEnum):
    """Quality metrics of the student against the teacher on the same held-out inputs."""

    PSNR = "psnr"
    SSIM = "ssim"
    MS_SSIM = "ms_ssim"
    L1 = "l1"


class Quantize(StrEnum):
    NONE = "none"
    INT8_DYNAMIC = "int8-dynamic"
    INT8_STATIC = "int8-static"
    FP16 = "fp16"


class Distribution(StrEnum):
    """How an input is sampled during distillation and evaluation."""

    NORMAL = "normal"
    UNIFORM = "uniform"
    RANDINT = "randint"
    CALIBRATION = "calibration"  # images from a user-supplied calibration set


class Stage(StrEnum):
    QUEUED = "queued"
    IMPORT = "import"
    SEARCH = "search"  # target search / sweep: candidates at several compression levels
    PRUNE = "prune"
    RECOVER = "recover"
    DISTILL = "distill"
    EXPORT = "export"
    MEASURE = "measure"
    QUALITY = "quality"
    REPORT = "report"
    DONE = "done"


class ModelFormat(StrEnum):
    TORCHSCRIPT = "torchscript"
    ONNX = "onnx"


def default_distribution(
    shape: list[int | str | None], dtype: str, indexes_table: bool
) -> Distribution | None:
    """How an input without a user spec is sampled (one rule for the API and the engine).

    float ``[N, C, H, W]`` with H, W > 1 (or unknown): an image, calibration data needed;
    other float inputs (incl. DCGAN-style ``[N, C, 1, 1]`` latents): normal; integer inputs that
    index an embedding table: randint over its rows; anything else: None (a spec is needed).
    """
    if dtype == "float32":
        spatial = shape[2:] if len(shape) == 4 else []
        is_image = len(shape) == 4 and not all(isinstance(d, int) and d == 1 for d in spatial)
        return Distribution.CALIBRATION if is_image else Distribution.NORMAL
    if dtype in ("int64", "int32") and indexes_table:
        return Distribution.RANDINT
    return None


MAX_DIM = 8192  # the largest input dimension a spec (or a graph without a spec) may have


class _Strict(BaseModel):
    # NaN or Infinity never means anything in a spec (an Infinity gate would vanish as null)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class InputSpec(_Strict):
    """One model input. The batch dimension is the first entry of ``shape`` (any value; it is
    replaced by the batch size the engine uses)."""

    shape: list[Annotated[int, Field(ge=1, le=MAX_DIM)]] = Field(
        min_length=1, max_length=6, description="Shape including the batch dimension, e.g. [1, 64]."
    )
    dtype: Literal["float32", "int64", "int32"] = Field("float32", description="Element type.")
    distribution: Distribution = Field(
        Distribution.NORMAL, description="normal | uniform | randint | calibration (images)."
    )
    low: float = Field(0.0, description="Lower bound for uniform / randint (inclusive).")
    high: float = Field(1.0, description="Upper bound for uniform / randint (exclusive for randint).")

    @model_validator(mode="after")
    def _check(self) -> InputSpec:
        if self.high <= self.low and self.distribution in (Distribution.UNIFORM, Distribution.RANDINT):
            raise ValueError(f"high ({self.high}) must be greater than low ({self.low})")
        if self.dtype != "float32" and self.distribution != Distribution.RANDINT:
            raise ValueError(f"integer input (dtype {self.dtype}) needs distribution 'randint'")
        if self.distribution == Distribution.RANDINT and self.dtype == "float32":
            raise ValueError("distribution 'randint' needs an integer dtype (int64 or int32)")
        if self.distribution == Distribution.CALIBRATION and len(self.shape) != 4:
            raise ValueError("a calibration (image) input must have a 4-d shape [N, C, H, W]")
        return self


class PruneSpec(_Strict):
    method: PruneMethod = Field(PruneMethod.CHANNEL, description="channel | unstructured | block.")
    ratio: float | None = Field(
        0.5,
        gt=0.0,
        lt=1.0,
        description="channel: fraction of channels removed per layer; unstructured: sparsity; "
        "block: fraction of removable blocks removed.",
    )
    target_macs: int | None = Field(
        None, ge=1, description="channel only: prune until MACs are within 5% of this (overrides ratio)."
    )
    criterion: Criterion = Field(Criterion.L1, description="Channel importance criterion.")
    allocation: AllocationName = Field(
        AllocationName.SENSITIVITY,
        description="channel only: 'uniform' prunes every layer at the ratio; 'sensitivity' keeps the MACs "
        "that leaves (or target_macs) but chooses per-layer ratios by measured output distortion; "
        "'latency' does the same for the teacher's time measured per layer in ONNX Runtime.",
    )
    global_ranking: bool = Field(False, description="Rank channels across layers instead of per layer.")
    iterative_steps: int = Field(1, ge=1, le=32, description="Prune in N rounds with distillation between.")
    ignore: list[str] = Field(
        default_factory=list, description="Layer-name patterns (fnmatch) that are never pruned."
    )
    blocks: int | None = Field(None, ge=1, description="block only: number of residual blocks to remove.")
    round_to: int = Field(
        8,
        ge=1,
        le=64,
        description="channel: keep channel counts multiples of this (nearest; 1 = exactly as the ratio "
        "says). CPU convolution kernels run multiples of 8/16 faster per MAC.",
    )
    mode: PruneMode | None = Field(
        None,
        description="single: one compression at ratio; search: candidates at several compression levels, "
        "the pick is the fastest (or best) that meets `target`; sweep: search, and every candidate's ONNX "
        "is returned (candidate-N.onnx). null: search when a target is set, else single.",
    )

    @model_validator(mode="after")
    def _check(self) -> PruneSpec:
        if self.target_macs is not None and self.method != PruneMethod.CHANNEL:
            raise ValueError("target_macs applies to method 'channel' only")
        if self.blocks is not None and self.method != PruneMethod.BLOCK:
            raise ValueError("blocks applies to method 'block' only")
        if self.method == PruneMethod.CHANNEL and self.ratio is not None and self.ratio > MAX_CHANNEL_RATIO:
            raise ValueError(f"channel pruning ratio must be at most {MAX_CHANNEL_RATIO}")
        if self.ratio is None and self.target_macs is None and self.blocks is None:
            raise ValueError("give ratio, target_macs (channel) or blocks (block)")
        return self


class DistillSpec(_Strict):
    steps: int = Field(
        1_000_000,
        ge=0,
        le=1_000_000,
        description="Maximum optimizer steps; by default the budget decides (a 300-step cap cost 3.3 dB on dcgan).",
    )
    budget_seconds: float = Field(
        120.0,
        gt=0,
        le=7 * 24 * 3600,
        description="Wall-clock budget of the whole job, import to report: pruning analysis, recovery and "
        "measurement take bounded shares, distillation gets the rest (or stops at `steps`).",
    )
    losses: dict[LossName, Annotated[float, Field(ge=0.0)]] = Field(
        default_factory=lambda: {LossName.L1: 1.0},
        description="Loss name -> weight (default L1: in the benchmark it matched or beat L1 + 0.5 SSIM at "
        "equal steps on latent models and ran 1.1-1.6x more steps per second).",
    )
    batch_size: int = Field(8, ge=1, le=512)
    lr: float = Field(1e-3, gt=0, le=1.0, description="Adam learning rate (cosine-decayed).")
    patch: int | None = Field(
        None,
        ge=0,
        le=8192,
        description="Image models: train on random square crops of this side (a fully convolutional "
        "student learns the same map from smaller inputs, more steps per second); held-out scoring stays "
        "at the full size. null: automatic; 0: always the full input size.",
    )
    augment: Augment = Field(
        Augment.MIX,
        description="Image inputs: 'flip' (random crops and flips) or 'mix' (also blends pairs of calibration "
        "images: more distinct inputs from a small set).",
    )

    @model_validator(mode="after")
    def _check(self) -> DistillSpec:
        if self.losses and not any(w > 0 for w in self.losses.values()):
            raise ValueError("at least one loss needs a positive weight")
        return self


class RecoverSpec(_Strict):
    method: RecoveryName = Field(
        RecoveryName.LEAST_SQUARES,
        description="least_squares: after pruning, refit every conv/linear layer in forward order to the "
        "teacher's outputs on calibration inputs (seconds; kept only if held-out quality improves); none: skip.",
    )
    samples: int | None = Field(
        None,
        ge=2,
        le=4096,
        description="Calibration inputs to refit on (default: 32 images, 256 latents, fewer when the "
        "budget is short).",
    )


class ExportSpec(_Strict):
    opset: int = Field(17, ge=13, le=21, description="ONNX opset of the exported student.")
    quantize: Quantize = Field(Quantize.NONE, description="none | int8-dynamic | int8-static | fp16.")


class TargetSpec(_Strict):
    """What the compressed model must achieve; the job searches the compression level for it.

    Quality targets (``min_ssim``, ``min_psnr``, on held-out inputs against the original) are
    met by the fastest candidate (1-thread latency); with cost targets only (``max_latency_ms``,
    ``max_size_mb``, ``min_speedup``) the pick is the best-quality candidate that meets them.
    When no candidate meets every target the job still succeeds with the closest one and says so
    (``search.met = false``); gates and ``--fail-if`` decide an exit code."""

    min_ssim: float | None = Field(None, ge=-1.0, le=1.0, description="SSIM vs the original, at least.")
    min_psnr: float | None = Field(None, ge=0.0, le=100.0, description="PSNR vs the original (dB), at least.")
    max_latency_ms: float | None = Field(
        None, gt=0.0, description="p50 latency at 1 thread on the worker's CPU (ONNX Runtime, ms), at most."
    )
    max_size_mb: float | None = Field(None, gt=0.0, description="model.onnx size (MB = 10^6 bytes), at most.")
    min_speedup: float | None = Field(
        None, gt=0.0, description="1-thread p50 latency original / compressed (x), at least."
    )
    quantize: bool = Field(
        True,
        description="Also try INT8 (static, QDQ, calibrated) and FP16 versions of the best candidates, "
        "measured like any other (they are often slower or worse for small convolutions on CPU).",
    )

    def quality_targets(self) -> dict[str, float]:
        return {k: v for k, v in (("min_ssim", self.min_ssim), ("min_psnr", self.min_psnr)) if v is not None}

    def cost_targets(self) -> dict[str, float]:
        pairs = (
            ("max_latency_ms", self.max_latency_ms),
            ("max_size_mb", self.max_size_mb),
            ("min_speedup", self.min_speedup),
        )
        return {k: v for k, v in pairs if v is not None}

    @model_validator(mode="after")
    def _check(self) -> TargetSpec:
        if not self.quality_targets() and not self.cost_targets():
            raise ValueError(
                "a target needs at least one of min_ssim, min_psnr, max_latency_ms, max_size_mb, min_speedup"
            )
        return self


# CLI / web form: ``ssim>=0.95`` -> ``min_ssim``; the same names as the report's summary
TARGET_EXPRESSIONS: dict[str, tuple[str, str]] = {
    "ssim": (">=", "min_ssim"),
    "psnr": (">=", "min_psnr"),
    "latency_ms": ("<=", "max_latency_ms"),
    "size_mb": ("<=", "max_size_mb"),
    "speedup": (">=", "min_speedup"),
}


def parse_target(exprs: list[str]) -> dict[str, float]:
    """``["ssim>=0.95", "latency_ms<=8"]`` -> ``{"min_ssim": 0.95, "max_latency_ms": 8.0}``.
    Raises ``ValueError`` naming the valid forms."""
    forms = ", ".join(f"'{m}{op}N'" for m, (op, _) in TARGET_EXPRESSIONS.items())
    out: dict[str, float] = {}
    for raw in exprs:
        expr = raw.replace(" ", "")
        for metric, (op, field) in TARGET_EXPRESSIONS.items():
            if expr.startswith(metric + op):
                try:
                    value = float(expr[len(metric + op) :])
                except ValueError:
                    break
                if value != value or value in (float("inf"), float("-inf")):
                    break
                if field in out:
                    raise ValueError(f"target {raw!r}: {metric} is given twice")
                out[field] = value
                break
        else:
            raise ValueError(f"target {raw!r}: expected one of {forms}")
        if field not in out:
            raise ValueError(f"target {raw!r}: expected one of {forms}")
    return out


class Gates(_Strict):
    """Quality gates: a job that misses one still succeeds, with ``gates.passed = false``."""

    min_ssim: float | None = Field(None, ge=-1.0, le=1.0)
    min_psnr: float | None = Field(None, ge=0.0)
    min_speedup: float | None = Field(None, gt=0.0)


class CompressionSpec(_Strict):
    """Everything one compression needs besides the model and calibration files."""

    inputs: dict[str, InputSpec] | None = Field(
        None, description="Input name -> spec. Required for TorchScript; read from the graph for ONNX."
    )
    prune: PruneSpec = Field(default_factory=PruneSpec)
    recover: RecoverSpec = Field(default_factory=RecoverSpec)
    distill: DistillSpec = Field(default_factory=DistillSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)
    gates: Gates = Field(default_factory=Gates)
    target: TargetSpec | None = Field(
        None,
        description="Ask for a result instead of a ratio: the job searches the compression level and "
        "returns the fastest model meeting the quality targets, or the best one meeting the cost targets.",
    )
    seed: int = Field(0, ge=0, le=2**31 - 1)

    @model_validator(mode="after")
    def _check(self) -> CompressionSpec:
        mode = self.prune.mode
        searching = self.target is not None or mode in (PruneMode.SEARCH, PruneMode.SWEEP)
        if mode == PruneMode.SINGLE and self.target is not None:
            raise ValueError("a target needs prune.mode 'search' or 'sweep' (or leave mode unset)")
        if mode == PruneMode.SEARCH and self.target is None:
            raise ValueError("prune.mode 'search' needs a target (e.g. target.min_ssim)")
        if searching and self.prune.method != PruneMethod.CHANNEL:
            raise ValueError(
                "a target or sweep searches channel-pruning levels: it needs prune.method 'channel'"
            )
        if searching and self.prune.target_macs is not None:
            raise ValueError("a target or sweep chooses the compression level itself: leave out target_macs")
        if searching and self.prune.iterative_steps > 1:
            raise ValueError(
                "a target or sweep prunes each candidate in one step: leave iterative_steps at 1"
            )
        return self

    @property
    def mode(self) -> PruneMode:
        """The prune mode in effect (``prune.mode`` null resolved)."""
        if self.prune.mode is not None:
            return self.prune.mode
        return PruneMode.SEARCH if self.target is not None else PruneMode.SINGLE


# Share of a typical job's wall time per stage (distillation dominates; measured on the zoo).
STAGE_WEIGHTS: tuple[tuple[Stage, float], ...] = (
    (Stage.QUEUED, 0.0),
    (Stage.IMPORT, 0.05),
    (Stage.SEARCH, 0.0),  # a search job: its candidates come before the pick's distillation (see fraction)
    (Stage.PRUNE, 0.10),
    (Stage.RECOVER, 0.05),
    (Stage.DISTILL, 0.60),
    (Stage.EXPORT, 0.05),
    (Stage.MEASURE, 0.10),
    (Stage.QUALITY, 0.03),
    (Stage.REPORT, 0.02),
)


MAX_CANDIDATES = 32  # candidates one search evaluates at most (and the most a progress event carries)


class CandidatePoint(_Strict):
    """One evaluated candidate of a target search, as progress events carry it (the live front);
    the report's ``search.candidates`` has the full record."""

    id: str = Field(max_length=16)
    level: float = Field(ge=0.0, le=1.0, description="Channel ratio the compression level stands for.")
    quantize: Quantize = Quantize.NONE
    macs: int = Field(ge=0)
    size_bytes: int = Field(ge=0)
    latency_ms: float | None = Field(None, ge=0.0, description="p50 at 1 thread (ms).")
    ssim: float | None = None
    psnr: float | None = None
    meets: bool | None = Field(None, description="Every target met (None: quality not measured).")


class Progress(BaseModel):
    """One progress event from the engine."""

    stage: Stage
    step: int = 0
    total: int = 0
    loss: float | None = None
    eta_seconds: float | None = None
    elapsed_seconds: float | None = Field(
        None, description="Seconds since the job started (its budget's clock)."
    )
    message: str | None = None
    candidates: list[CandidatePoint] | None = Field(None, max_length=MAX_CANDIDATES)

    @property
    def stage_fraction(self) -> float:
        """How far the current stage is (0..1)."""
        return min(1.0, self.step / self.total) if self.total else 0.0

    @property
    def fraction(self) -> float:
        """How far the whole job is (0..1): elapsed / (elapsed + ETA) where the engine knows both
        (the ETA is the whole job's), else stages weighted by their usual share of the time."""
        if self.elapsed_seconds is not None and self.eta_seconds is not None and self.stage != Stage.DONE:
            total = self.elapsed_seconds + self.eta_seconds
            return min(1.0, self.elapsed_seconds / total) if total > 0 else 0.0
        start = 0.0
        for stage, weight in STAGE_WEIGHTS:
            if stage == self.stage:
                return min(1.0, start + weight * self.stage_fraction)
            start += weight
        return 1.0 if self.stage == Stage.DONE else 0.0


JOB_FILES: tuple[str, ...] = ("model.onnx", "report.json", "report.html", "samples.png", "log.txt")
# prune.mode "sweep": every candidate's ONNX (the report's search.candidates[].artifact names it)
CANDIDATE_FILES: tuple[str, ...] = tuple(f"candidate-{i}.onnx" for i in range(1, MAX_CANDIDATES + 1))
ARTIFACT_NAMES: tuple[str, ...] = JOB_FILES + CANDIDATE_FILES
GATE_METRICS: dict[str, Literal["ssim", "psnr", "speedup"]] = {
    "min_ssim": "ssim",
    "min_psnr": "psnr",
    "min_speedup": "speedup",
}
