"""What can be asked for: pruning methods, criteria, losses, metrics and quantization modes, each with
a description and the JSON schema of its parameters (built from the spec, so it never drifts)."""

from __future__ import annotations

from typing import Any

from worker.spec import (
    GATE_METRICS,
    CompressionSpec,
    Criterion,
    DistillSpec,
    ExportSpec,
    Gates,
    LossName,
    MetricName,
    PruneMethod,
    PruneSpec,
    Quantize,
)

METHODS: dict[PruneMethod, tuple[str, tuple[str, ...]]] = {
    PruneMethod.CHANNEL: (
        "Structured pruning: removes whole channels, so the graph gets smaller and faster.",
        ("ratio", "target_macs", "allocation", "criterion", "global_ranking", "iterative_steps", "ignore"),
    ),
    PruneMethod.UNSTRUCTURED: (
        "Global magnitude sparsity: zeroes weights. The compressed file gets smaller; ONNX Runtime "
        "does not get faster.",
        ("ratio", "iterative_steps", "ignore"),
    ),
    PruneMethod.BLOCK: (
        "Removes whole residual blocks that have an identity skip connection.",
        ("ratio", "blocks", "ignore"),
    ),
}
CRITERIA: dict[Criterion, str] = {
    Criterion.L1: "L1 norm of each channel's weights.",
    Criterion.L2: "L2 norm of each channel's weights.",
    Criterion.BN_SCALE: "Absolute scale (gamma) of the normalization layer after the convolution.",
    Criterion.TAYLOR: "First-order Taylor estimate of the loss change (needs a few gradient steps).",
    Criterion.RANDOM: "Random channels (a baseline).",
}
LOSSES: dict[LossName, str] = {
    LossName.L1: "Mean absolute error between student and teacher outputs.",
    LossName.MSE: "Mean squared error between student and teacher outputs.",
    LossName.SSIM: "1 - SSIM between student and teacher images.",
    LossName.FEATURE: "Distance between intermediate feature maps of student and teacher.",
}
METRICS: dict[MetricName, tuple[str, bool]] = {
    MetricName.PSNR: ("Peak signal-to-noise ratio of the student against the teacher (dB).", True),
    MetricName.SSIM: ("Structural similarity of the student against the teacher (-1..1).", True),
    MetricName.MS_SSIM: ("Multi-scale structural similarity (-1..1).", True),
    MetricName.L1: ("Mean absolute difference between student and teacher outputs.", False),
}
QUANTIZE: dict[Quantize, str] = {
    Quantize.NONE: "Float32 weights.",
    Quantize.INT8_DYNAMIC: "INT8 weights, activations quantized at run time (ONNX Runtime dynamic).",
    Quantize.INT8_STATIC: "INT8 weights and activations calibrated on sample inputs (QDQ).",
    Quantize.FP16: "Float16 weights and activations.",
}


def _subschema(model: type[Any], fields: tuple[str, ...]) -> dict[str, Any]:
    full = model.model_json_schema()
    props = {k: v for k, v in full["properties"].items() if k in fields}
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if "$defs" in full:
        out["$defs"] = full["$defs"]
    return out


def catalog() -> dict[str, Any]:
    """The catalog document served by ``GET /v1/catalog``."""
    gates = Gates.model_json_schema()["properties"]
    gate_for: dict[str, str] = {metric: gate for gate, metric in GATE_METRICS.items()}
    return {
        "prune_methods": [
            {"name": str(m), "description": d, "parameters": _subschema(PruneSpec, f)}
            for m, (d, f) in METHODS.items()
        ],
        "criteria": [{"name": str(c), "description": d, "parameters": None} for c, d in CRITERIA.items()],
        "losses": [
            {
                "name": str(n),
                "description": d,
                "parameters": {"type": "number", "minimum": 0, "description": "Weight of this loss."},
            }
            for n, d in LOSSES.items()
        ],
        "metrics": [
            {
                "name": str(n),
                "description": d,
                "higher_is_better": hib,
                "gate": gate_for.get(str(n)),
                "parameters": gates.get(gate_for.get(str(n), ""), None),
            }
            for n, (d, hib) in METRICS.items()
        ],
        "quantization": [
            {"name": str(q), "description": d, "parameters": _subschema(ExportSpec, ("opset",))}
            for q, d in QUANTIZE.items()
        ],
        "distill": DistillSpec.model_json_schema(),
        "spec": CompressionSpec.model_json_schema(),
    }
