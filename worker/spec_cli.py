"""Command-line flags <-> CompressionSpec (torch-free; shared by ``compress`` and ``submit``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from worker.errors import BadSpecError
from worker.spec import (
    AllocationName,
    Augment,
    CompressionSpec,
    Criterion,
    LossName,
    PruneMethod,
    PruneMode,
    Quantize,
    RecoveryName,
    parse_target,
)


def add_spec_arguments(p: argparse.ArgumentParser) -> None:
    """Add the compression flags (same names for local ``compress`` and remote ``submit``)."""
    g = p.add_argument_group("compression spec")
    g.add_argument("--inputs", metavar="SPEC", help="input spec: JSON text or a JSON file path")
    g.add_argument(
        "--calibration",
        metavar="NAME=FILE",
        action="append",
        default=[],
        help="calibration images for an image input (.npy/.npz/.zip); NAME= may be left out "
        "when the model has one image input",
    )
    g.add_argument("--method", choices=[m.value for m in PruneMethod])
    g.add_argument("--ratio", type=float)
    g.add_argument("--target-macs", type=_int_with_suffix, metavar="N", help="e.g. 120M, 2.5G or 300000")
    g.add_argument("--criterion", choices=[c.value for c in Criterion])
    g.add_argument(
        "--allocation",
        choices=[a.value for a in AllocationName],
        help="channel: per-layer ratios by measured sensitivity (default) or one uniform ratio",
    )
    g.add_argument("--global-ranking", action="store_true", default=None)
    g.add_argument("--iterative-steps", type=int, metavar="N")
    g.add_argument("--ignore", action="append", metavar="PATTERN", help="layer-name pattern never pruned")
    g.add_argument("--blocks", type=int, metavar="N", help="block method: residual blocks to remove")
    g.add_argument(
        "--round-to",
        type=int,
        metavar="N",
        help="channel: kept channel counts multiples of N (default 8; 1 = off)",
    )
    g.add_argument(
        "--target",
        action="append",
        metavar="EXPR",
        help="search the compression level for a result instead of a ratio (repeatable): 'ssim>=0.95', "
        "'psnr>=30', 'latency_ms<=8' (1 thread), 'size_mb<=2', 'speedup>=2'",
    )
    g.add_argument(
        "--mode",
        choices=[m.value for m in PruneMode],
        help="single (one ratio), search (candidates, the pick meets --target) or sweep (search, and every "
        "candidate's ONNX is returned); default: search with --target, else single",
    )
    g.add_argument(
        "--no-quantize-candidates",
        dest="quantize_candidates",
        action="store_false",
        default=None,
        help="with --target: do not try INT8/FP16 copies of the best candidates",
    )
    g.add_argument(
        "--recover",
        choices=[r.value for r in RecoveryName],
        help="after pruning: least_squares (refit each layer to the teacher, default) or none",
    )
    g.add_argument("--recover-samples", type=int, metavar="N", help="calibration inputs for the refit")
    g.add_argument("--steps", type=int, metavar="N", help="distillation steps")
    g.add_argument(
        "--budget-seconds",
        type=float,
        metavar="S",
        help="wall-clock budget of the whole job (import to report); distillation gets what the other stages leave",
    )
    g.add_argument("--loss", metavar="NAME=W,...", help=f"losses, names: {', '.join(LossName)}")
    g.add_argument("--batch-size", type=int)
    g.add_argument(
        "--patch",
        type=int,
        metavar="N",
        help="image models: train on random NxN crops (0: the full input size; default automatic)",
    )
    g.add_argument("--lr", type=float)
    g.add_argument(
        "--augment",
        choices=[a.value for a in Augment],
        help="image inputs: flip (crops and flips) or mix (also blends pairs of images)",
    )
    g.add_argument("--quantize", choices=[q.value for q in Quantize])
    g.add_argument("--opset", type=int)
    g.add_argument("--seed", type=int)
    g.add_argument("--spec", metavar="FILE", help="a whole spec as JSON; flags override its fields")


def _int_with_suffix(text: str) -> int:
    mult = {"k": 1e3, "m": 1e6, "g": 1e9}
    t = text.strip().lower()
    try:
        if t and t[-1] in mult:
            return int(float(t[:-1]) * mult[t[-1]])
        return int(float(t))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from e


def _json_arg(text: str, what: str) -> Any:
    path = Path(text)
    try:
        if not text.lstrip().startswith(("{", "[")) and path.is_file():
            text = path.read_text()
        return json.loads(text)
    except (OSError, json.JSONDecodeError) as e:
        raise BadSpecError(f"{what} is neither valid JSON nor a readable JSON file: {e}") from e


def parse_losses(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in filter(None, (s.strip() for s in text.split(","))):
        name, _, w = part.partition("=")
        if name not in LossName.__members__.values():
            raise BadSpecError(f"unknown loss {name!r}; valid: {', '.join(LossName)}")
        try:
            out[name] = float(w) if w else 1.0
        except ValueError as e:
            raise BadSpecError(f"loss weight for {name!r} is not a number: {w!r}") from e
    if not out:
        raise BadSpecError("--loss needs at least one NAME=WEIGHT")
    return out


def parse_calibration(items: list[str]) -> dict[str, Path]:
    """``["img=a.npy"]`` -> ``{"img": Path("a.npy")}``; a bare path is keyed ``""`` (the only image
    input)."""
    out: dict[str, Path] = {}
    for item in items:
        name, sep, file = item.partition("=")
        if not sep:
            name, file = "", item
        path = Path(file)
        if not path.is_file():
            raise BadSpecError(f"calibration file not found: {file}")
        if name in out:
            raise BadSpecError(f"calibration given twice for input {name or '(default)'!r}")
        out[name] = path
    return out


def spec_from_args(args: argparse.Namespace) -> CompressionSpec:
    """Build and validate the spec; raises BadSpecError with a one-line message."""
    raw: dict[str, Any] = _json_arg(args.spec, "--spec") if getattr(args, "spec", None) else {}
    if not isinstance(raw, dict):
        raise BadSpecError("--spec must be a JSON object")
    if args.inputs:
        raw["inputs"] = _json_arg(args.inputs, "--inputs")
    sections = {
        "prune": {
            "method": args.method,
            "ratio": args.ratio,
            "target_macs": args.target_macs,
            "criterion": args.criterion,
            "allocation": args.allocation,
            "global_ranking": args.global_ranking,
            "iterative_steps": args.iterative_steps,
            "ignore": args.ignore,
            "blocks": args.blocks,
            "round_to": args.round_to,
            "mode": args.mode,
        },
        "recover": {"method": args.recover, "samples": args.recover_samples},
        "distill": {
            "steps": args.steps,
            "budget_seconds": args.budget_seconds,
            "losses": parse_losses(args.loss) if args.loss else None,
            "batch_size": args.batch_size,
            "patch": args.patch,
            "lr": args.lr,
            "augment": args.augment,
        },
        "export": {"opset": args.opset, "quantize": args.quantize},
    }
    for section, fields in sections.items():
        given = {k: v for k, v in fields.items() if v is not None}
        if given:
            raw.setdefault(section, {}).update(given)
    # A MACs target or a block count replaces the default ratio unless a ratio was asked for.
    prune = raw.get("prune", {})
    if (prune.get("target_macs") is not None or prune.get("blocks") is not None) and args.ratio is None:
        prune.setdefault("ratio", None)
    if args.seed is not None:
        raw["seed"] = args.seed
    if args.target:
        try:
            raw.setdefault("target", {}).update(parse_target(args.target))
        except ValueError as e:
            raise BadSpecError(f"--target: {e}") from e
    if args.quantize_candidates is not None:
        if "target" not in raw:
            raise BadSpecError("--no-quantize-candidates needs --target")
        raw["target"]["quantize"] = False
    return validate_spec(raw)


def validate_spec(raw: Any) -> CompressionSpec:
    """Validate a spec from JSON; the error is one line naming the field."""
    try:
        return CompressionSpec.model_validate(raw)
    except ValidationError as e:
        raise BadSpecError(format_validation_error(e)) from e


def format_validation_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "spec"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)
