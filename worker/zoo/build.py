"""Build the zoo: train every generator briefly, export it, write samples and ``manifest.json``.

``python -m worker.zoo.build [--only NAME ...] [--out DIR] [--steps-scale X]`` (``make zoo``).

Seeded (torch, numpy), two threads, deterministic algorithms, step counts fixed (not time
budgets), so a rebuild on the same machine and library versions gives the same weights. Files go to
``worker/zoo/data/<name>/``; ``manifest.json`` describes them (see docs/zoo.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worker.zoo import data_sources as ds
from worker.zoo.export import export_onnx_variants, export_torchscript, file_record
from worker.zoo.models import N_CLASSES, Z_DIM, ZOO, ZooEntry, build_model
from worker.zoo.registry import MANIFEST_NAME, OUTPUT_NAME, ZOO_NAMES, zoo_dir
from worker.zoo.samples import digit_grid, image_rows_grid, save_png
from worker.zoo.train import TrainResult, make_pair, train_latent_gan, train_supervised

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1.0"
BASE_SEED = 20240501
#: Optimizer steps per model (batch 64 for the digit GANs, 16 crops for the image models).
STEPS: dict[str, int] = {
    "dcgan": 1200,
    "cgan": 1200,
    "stylegan_lite": 1200,
    "resnet_i2i": 600,
    "unet_i2i": 1200,
    "srresnet": 2000,
}
#: Extra options of the supervised image models (``train_supervised`` keyword arguments).
SUPERVISED_OPTIONS: dict[str, dict[str, Any]] = {
    "resnet_i2i": {"lr": 2e-3},  # Adam beta1 0.5 as in CycleGAN / pix2pix
    "unet_i2i": {"lr": 2e-3},
    "srresnet": {"lr": 3e-3, "crop": 32, "beta1": 0.9},  # beta1 0.9 as in SRGAN; small crops, more steps
}
N_HELDOUT = 8
#: Calibration images per image model: 32 at 64x64, 64 at 32x32 (the same bytes).
N_CALIBRATION: dict[str, int] = {"resnet_i2i": 32, "unet_i2i": 32, "srresnet": 64}
MACS_NOTE = (
    "macs = torch.utils.flop_counter.FlopCounterMode total FLOPs / 2 at batch 1 (counts conv, "
    "conv-transpose, matmul/linear; elementwise ops, norms and activations are not counted)"
)


def _setup(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def count_macs(model: nn.Module, args: tuple[Tensor, ...]) -> int:
    """MACs of one forward pass on ``args`` (batch 1): ``FlopCounterMode`` FLOPs / 2."""
    from torch.utils.flop_counter import FlopCounterMode

    # not under no_grad: FlopCounterMode's module tracker needs autograd to be on
    with FlopCounterMode(display=False) as counter:
        model(*args)
    return int(counter.get_total_flops() // 2)


def _l1(a: Tensor, b: Tensor) -> float:
    return round(float((a - b).abs().mean()), 5)


def heldout_baselines(name: str, held_x: Tensor, held_y: Tensor) -> dict[str, float]:
    """Mean L1 to the held-out targets of input-only baselines: the input itself (i2i) or the
    input upsampled x2 by nearest / bilinear / bicubic interpolation (super-resolution)."""
    if name != "srresnet":
        return {"input": _l1(held_x, held_y)}
    out: dict[str, float] = {}
    for mode in ("nearest", "bilinear", "bicubic"):
        kw = {} if mode == "nearest" else {"align_corners": False}
        up = F.interpolate(held_x, scale_factor=2.0, mode=mode, **kw).clamp(-1.0, 1.0)
        out[mode] = _l1(up, held_y)
    return out


def latent_args(entry: ZooEntry, batch: int, gen: torch.Generator) -> dict[str, Tensor]:
    """Sampled latent inputs ``{name: tensor}`` with first dimension ``batch``."""
    out: dict[str, Tensor] = {}
    for name, spec in entry.inputs.items():
        shape = [batch, *spec["shape"][1:]]  # type: ignore[misc]
        if spec["distribution"] == "randint":
            low, high = int(spec["low"]), int(spec["high"])  # type: ignore[call-overload]
            out[name] = torch.randint(low, high, shape, generator=gen)
        else:
            out[name] = torch.randn(shape, generator=gen)
    return out


def _build_one(name: str, seed: int, steps: int, out_root: Path) -> dict[str, Any]:
    """Train, export and describe model ``name``; returns its manifest entry."""
    entry = ZOO[name]
    _setup(seed)
    model = build_model(name)
    out_dir = out_root / name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    extra: dict[str, Any] = {}
    g = torch.Generator().manual_seed(seed + 1)

    if entry.kind == "latent":
        result: TrainResult = train_latent_gan(name, model, steps, seed)
        export_args = tuple(latent_args(entry, 2, g).values())
        feeds = [latent_args(entry, b, g) for b in (1, 3)]
        sample_feed = latent_args(entry, 64, torch.Generator().manual_seed(seed + 2))
        if name == "cgan":
            sample_feed["z"] = torch.randn(100, Z_DIM, generator=torch.Generator().manual_seed(seed + 2))
            sample_feed["label"] = torch.arange(N_CLASSES).repeat_interleave(10)
        with torch.no_grad():
            samples = model(*sample_feed.values())
        save_png(digit_grid(samples, ncol=10 if name == "cgan" else 8), out_dir / "samples.png")
        observed = samples
    else:
        photos = ds.load_photos()
        train_regions = [ds.split_photo(p)[0] for p in photos]
        held_regions = [ds.split_photo(p)[1] for p in photos]
        result = train_supervised(name, model, train_regions, steps, seed, **SUPERVISED_OPTIONS[name])
        held_x, held_y = make_pair(name, ds.heldout_crops(held_regions, N_HELDOUT, 64))
        calib_x, _ = make_pair(name, ds.random_crops(train_regions, N_CALIBRATION[name], 64, g))
        for fname, arr in (
            ("heldout.npy", held_x),
            ("heldout_target.npy", held_y),
            ("calibration.npy", calib_x),
        ):
            np.save(out_dir / fname, arr.numpy().astype(np.float32))
            extra[fname.removesuffix(".npy")] = f"{name}/{fname}"
        export_args = (held_x[:2],)
        feeds = [{"image": held_x[:1]}, {"image": held_x[1:4]}]
        with torch.no_grad():
            pred = model(held_x)
        shown_in = ds.bicubic_up(held_x) if name == "srresnet" else held_x
        save_png(image_rows_grid([shown_in, pred, held_y]), out_dir / "samples.png")
        observed = pred
        extra["heldout_l1"] = {
            "model": _l1(pred, held_y),
            "baselines": heldout_baselines(name, held_x, held_y),
        }

    names = list(entry.inputs)
    ts_path = out_dir / "model.pt"
    method = export_torchscript(model, export_args, ts_path)
    files = [file_record(out_root, ts_path, "torchscript", None, "torchscript", method=method)]
    onnx_files, skipped = export_onnx_variants(model, export_args, names, feeds, out_dir, out_root)
    files += onnx_files
    files.append(file_record(out_root, out_dir / "samples.png", "png", None, "pil"))
    for key in ("heldout", "heldout_target", "calibration"):
        if key in extra:
            files.append(file_record(out_root, out_root / extra[key], "npy", None, "numpy"))

    args1 = tuple(t[:1] for t in feeds[0].values())
    with torch.no_grad():
        out_shape = list(model(*args1).shape)
    nominal = [-1.0, 1.0] if entry.tanh_output else None
    return {
        "family": name,
        "description": entry.description,
        "inputs": {k: dict(v) for k, v in entry.inputs.items()},
        "outputs": [{"name": OUTPUT_NAME, "shape": out_shape, "dtype": "float32"}],
        "ends_in_tanh": entry.tanh_output,
        "output_range": {
            "nominal": nominal,
            "observed": [round(float(observed.min()), 4), round(float(observed.max()), 4)],
            "note": "tanh output" if entry.tanh_output else "linear output; targets are in [-1, 1]",
        },
        "params": sum(p.numel() for p in model.parameters()),
        "macs": count_macs(model, args1),
        "files": files,
        "skipped_exports": skipped,
        "samples": f"{name}/samples.png",
        **extra,
        "training": {
            "seed": seed,
            "steps": result.steps,
            "seconds": result.seconds,
            "batch_size": result.batch_size,
            "method": result.method,
            "data_source": result.data_source,
            "final_losses": result.final_losses,
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Build the zoo (all models, or ``--only``) into ``--out`` and (re)write the manifest."""
    parser = argparse.ArgumentParser(prog="python -m worker.zoo.build", description=__doc__)
    parser.add_argument("--only", nargs="+", choices=ZOO_NAMES, help="rebuild only these models")
    parser.add_argument("--out", type=Path, default=zoo_dir(), help="output directory (default: the zoo)")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="scale every step count (debugging)")
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for noisy in ("torch.onnx", "onnxscript", "torch._export", "torch.export"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if set(ZOO) != set(ZOO_NAMES):
        raise RuntimeError(f"zoo registry {sorted(ZOO)} != ZOO_NAMES {sorted(ZOO_NAMES)}")

    torch.set_num_threads(2)
    torch.set_flush_denormal(True)  # denormals make CPU GAN training several times slower
    torch.use_deterministic_algorithms(True)
    out_root: Path = opts.out
    out_root.mkdir(parents=True, exist_ok=True)
    manifest_path = out_root / MANIFEST_NAME
    old = json.loads(manifest_path.read_text()).get("models", {}) if manifest_path.is_file() else {}
    names = opts.only or list(ZOO_NAMES)
    t0 = time.perf_counter()
    models: dict[str, Any] = {}
    for i, name in enumerate(ZOO_NAMES):
        if name not in names:
            if name in old:
                models[name] = old[name]
            continue
        t = time.perf_counter()
        steps = max(1, round(STEPS[name] * opts.steps_scale))
        models[name] = _build_one(name, BASE_SEED + 1000 * i, steps, out_root)
        log.info("zoo.build %s done in %.1fs", name, time.perf_counter() - t)

    import onnx
    import onnxruntime

    manifest = {
        "schema_version": SCHEMA_VERSION,
        "generated_by": "python -m worker.zoo.build",
        "macs_method": MACS_NOTE,
        "parity_check": "every ONNX file matches the eager model in onnxruntime CPU at batch 1 and 3, "
        "max abs diff < 1e-4 (parity_max_abs_diff per file)",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__,
        },
        "models": models,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    total = sum(p.stat().st_size for p in out_root.rglob("*") if p.is_file())
    log.info(
        "zoo.build wrote %s (%d models, %.1f MB) in %.1fs",
        manifest_path,
        len(models),
        total / 1e6,
        time.perf_counter() - t0,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
