"""The document of ``GET /v1/catalog``: pruning methods, criteria, losses, metrics and quantization
modes, each with its description and the JSON schema of the parameters that apply to it.

Nothing here is written by hand: the descriptions, units, better-directions and applicable fields
come from the catalogue tables of the shared layer (``worker/core/catalog.py``, checked complete
against the spec's enums), the schemas from the spec's pydantic models."""

from __future__ import annotations

from typing import Any

from worker.core.catalog import CRITERIA, LOSSES, METRICS, PRUNE_METHODS, QUANTIZE
from worker.spec import GATE_METRICS, CompressionSpec, DistillSpec, ExportSpec, Gates, PruneSpec

LOSS_WEIGHT: dict[str, Any] = {"type": "number", "minimum": 0, "description": "Weight of this loss."}


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
            {"name": str(m), "description": i.description, "parameters": _subschema(PruneSpec, i.parameters)}
            for m, i in PRUNE_METHODS.items()
        ],
        "criteria": [
            {"name": str(c), "description": i.description, "parameters": None} for c, i in CRITERIA.items()
        ],
        "losses": [
            {"name": str(n), "description": i.description, "parameters": dict(LOSS_WEIGHT)}
            for n, i in LOSSES.items()
        ],
        "metrics": [
            {
                "name": str(n),
                "description": f"{i.description} Unit: {i.unit}.",
                "higher_is_better": i.higher_is_better,
                "gate": gate_for.get(str(n)),
                "parameters": gates.get(gate_for.get(str(n), ""), None),
            }
            for n, i in METRICS.items()
        ],
        "quantization": [
            {"name": str(q), "description": i.description, "parameters": _subschema(ExportSpec, i.parameters)}
            for q, i in QUANTIZE.items()
        ],
        "distill": DistillSpec.model_json_schema(),
        "spec": CompressionSpec.model_json_schema(),
    }
