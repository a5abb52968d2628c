"""What each choice of the spec means: the catalogue metadata of the closed sets in ``worker.spec``.

One table per enum (pruning methods, criteria, losses, metrics, quantization modes), keyed by
member: a description, the spec fields that apply to it, and for metrics the unit and which
direction is better. :func:`described` checks a table against its enum when this module is
imported, so a member added to the spec without a description here fails every import (and
``tests/worker/core/test_catalog.py``) instead of shipping without one. ``GET /v1/catalog``
(``app/catalog.py``) is built from these tables and the web UI reads that endpoint, so neither
keeps a text of its own. Torch-free: the API imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import TypeVar

from worker.spec import Criterion, LossName, MetricName, PruneMethod, Quantize


@dataclass(frozen=True, kw_only=True)
class Info:
    """One choice: a description (one or two sentences, shown as is) and the names of the spec
    fields that apply to it (of ``PruneSpec`` for a pruning method, of ``ExportSpec`` for a
    quantization mode; empty when it takes none of its own)."""

    description: str
    parameters: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class MetricInfo(Info):
    """A quality metric: also its unit (as the engine's metric registry and the report state it)
    and whether a higher value means the student is closer to the teacher."""

    unit: str
    higher_is_better: bool


E = TypeVar("E", bound=StrEnum)
InfoT = TypeVar("InfoT", bound=Info)


def described(enum: type[E], table: Mapping[E, InfoT]) -> Mapping[E, InfoT]:
    """``table`` as a read-only mapping in the enum's order; raises ``TypeError`` unless it has
    exactly one entry per member of ``enum``."""
    missing = [m.value for m in enum if m not in table]
    foreign = [str(k) for k in table if not isinstance(k, enum)]
    if missing or foreign:
        raise TypeError(f"catalogue of {enum.__name__}: no description for {missing}, not members: {foreign}")
    return MappingProxyType({m: table[m] for m in enum})


PRUNE_METHODS: Mapping[PruneMethod, Info] = described(
    PruneMethod,
    {
        PruneMethod.CHANNEL: Info(
            description="Structured pruning: removes whole channels, so the graph gets smaller and faster.",
            parameters=(
                "ratio",
                "target_macs",
                "allocation",
                "criterion",
                "global_ranking",
                "iterative_steps",
                "ignore",
                "mode",
                "round_to",
            ),
        ),
        PruneMethod.UNSTRUCTURED: Info(
            description="Global magnitude sparsity: zeroes the smallest weights of every convolution and "
            "linear layer. The compressed file gets smaller; ONNX Runtime does not get faster.",
            parameters=("ratio",),
        ),
        PruneMethod.BLOCK: Info(
            description="Removes whole residual blocks that have an identity skip connection.",
            parameters=("ratio", "blocks"),
        ),
    },
)

CRITERIA: Mapping[Criterion, Info] = described(
    Criterion,
    {
        Criterion.L1: Info(description="L1 norm of each channel's weights."),
        Criterion.L2: Info(description="L2 norm of each channel's weights."),
        Criterion.BN_SCALE: Info(
            description="Absolute scale (gamma) of the normalization layer after the convolution "
            "(L1 norm of the weights where there is none)."
        ),
        Criterion.TAYLOR: Info(
            description="First-order Taylor estimate of the loss change (needs a few gradient steps)."
        ),
        Criterion.RANDOM: Info(description="Random channels (a baseline)."),
    },
)

LOSSES: Mapping[LossName, Info] = described(
    LossName,
    {
        LossName.L1: Info(description="Mean absolute error between student and teacher outputs."),
        LossName.MSE: Info(description="Mean squared error between student and teacher outputs."),
        LossName.SSIM: Info(
            description="1 - SSIM between student and teacher images (L1 for outputs that are not images)."
        ),
        LossName.FEATURE: Info(
            description="Squared distance between intermediate feature maps of student (through a learned "
            "1x1 adapter) and teacher, on a few pruned layers."
        ),
    },
)

METRICS: Mapping[MetricName, MetricInfo] = described(
    MetricName,
    {
        MetricName.PSNR: MetricInfo(
            description="Peak signal-to-noise ratio of the student against the teacher.",
            unit="dB",
            higher_is_better=True,
        ),
        MetricName.SSIM: MetricInfo(
            description="Structural similarity of the student against the teacher.",
            unit="ratio (-1..1)",
            higher_is_better=True,
        ),
        MetricName.MS_SSIM: MetricInfo(
            description="Multi-scale structural similarity (five scales; not computed on small outputs).",
            unit="ratio (0..1)",
            higher_is_better=True,
        ),
        MetricName.L1: MetricInfo(
            description="Mean absolute difference between student and teacher outputs.",
            unit="output units (mean |student - teacher|)",
            higher_is_better=False,
        ),
    },
)

_EXPORT = ("opset",)  # every quantization mode is exported at the spec's opset
QUANTIZE: Mapping[Quantize, Info] = described(
    Quantize,
    {
        Quantize.NONE: Info(description="Float32 weights.", parameters=_EXPORT),
        Quantize.INT8_DYNAMIC: Info(
            description="INT8 weights, activations quantized at run time (ONNX Runtime dynamic).",
            parameters=_EXPORT,
        ),
        Quantize.INT8_STATIC: Info(
            description="INT8 weights and activations calibrated on sample inputs (QDQ).",
            parameters=_EXPORT,
        ),
        Quantize.FP16: Info(
            description="Float16 weights and activations; inputs and outputs stay float32.",
            parameters=_EXPORT,
        ),
    },
)
