"""One evaluator for every compressed model in the benchmark, outside the engine's code path.

It only reads the exported ONNX files and runs them in ONNX Runtime on the zoo's held-out inputs:
the held-out image set for image-to-image models, a fixed-seed latent batch (``LATENT_N`` samples,
seed ``LATENT_SEED``; labels drawn by the zoo's ``example_inputs``) for latent models. None of these
inputs is ever trained on (training uses the calibration set or fresh latents from other seeds).
PSNR/SSIM come from ``worker.engine.quality`` (tested against scikit-image), MACs/params/bytes from
``worker.engine.measure`` (ONNX graph count), latency from ``measure.measure_latency`` (teacher and
student interleaved after warm-up, fixed thread counts).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from worker.engine import measure
from worker.engine.quality import psnr, ssim
from worker.zoo.registry import example_inputs, image_set, model_entry, model_path

log = logging.getLogger(__name__)

LATENT_N = 64
LATENT_SEED = 12345
THREADS = (1, 2)


def teacher_path(name: str) -> Path:
    """The original generator every student is compared with: the zoo's opset-17 ONNX file."""
    return model_path(name, fmt="onnx", opset=17)


def heldout_feeds(name: str) -> dict[str, np.ndarray]:
    """Held-out inputs ``{input: [N, ...]}``: all held-out images, or ``LATENT_N`` seeded latents."""
    entry = model_entry(name)
    feeds = example_inputs(name, batch=LATENT_N, seed=LATENT_SEED)
    for inp, spec in entry["inputs"].items():
        if spec["distribution"] == "calibration":
            images = image_set(name, "heldout")
            feeds = {inp: np.ascontiguousarray(images, dtype=np.float32)}
    return feeds


def _session(path: Path | str, threads: int = 2) -> ort.InferenceSession:
    return measure.make_session(path, threads)


def run_onnx(path: Path | str, feeds: dict[str, np.ndarray], chunk: int = 16) -> np.ndarray:
    """First output of ``path`` on ``feeds`` (batch first), run ``chunk`` samples at a time."""
    sess = _session(path)
    names = [i.name for i in sess.get_inputs()]
    n = len(next(iter(feeds.values())))
    outs = [sess.run(None, {k: feeds[k][i : i + chunk] for k in names})[0] for i in range(0, n, chunk)]
    return np.concatenate(outs)


def data_range_of(out: np.ndarray) -> float:
    """Width of the output range: 2 for tanh-like [-1, 1], 1 for [0, 1], else the observed width."""
    lo, hi = float(out.min()), float(out.max())
    if lo >= -1.0 - 1e-4 and hi <= 1.0 + 1e-4:
        return 1.0 if lo >= -1e-4 else 2.0
    return max(hi - lo, 1e-6)


@dataclass
class Evaluation:
    """Student vs teacher on the held-out inputs; ratios are teacher / student."""

    psnr_db: float
    ssim: float
    teacher_macs: int
    student_macs: int
    mac_reduction: float
    teacher_params: int
    student_params: int
    param_reduction: float
    teacher_bytes: int
    student_bytes: int
    speedup_1t: float
    speedup_2t: float
    teacher_p50_ms_1t: float
    student_p50_ms_1t: float
    teacher_p50_ms_2t: float
    student_p50_ms_2t: float
    efficiency: float  # speedup at 1 thread / MAC reduction
    latency_rounds: int
    n_samples: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def quality(name: str, student: Path) -> tuple[float, float, int]:
    """(mean PSNR dB, mean SSIM, samples) of ``student`` vs the zoo teacher on the held-out inputs."""
    import torch

    feeds = heldout_feeds(name)
    t_out = run_onnx(teacher_path(name), feeds)
    s_out = run_onnx(student, feeds)
    if s_out.shape != t_out.shape:
        raise ValueError(f"student output {s_out.shape} != teacher output {t_out.shape}")
    dr = data_range_of(t_out)
    ts, tt = torch.from_numpy(s_out).float(), torch.from_numpy(t_out).float()
    p = float(psnr(ts, tt, dr).mean())
    s = float(ssim(ts, tt, data_range=dr, reduction="mean")) if ts.dim() == 4 else float("nan")
    return p, s, int(t_out.shape[0])


def evaluate_student(name: str, student: Path, latency_budget_s: float = 8.0) -> Evaluation:
    """Quality, size, MACs and latency of ``student`` (ONNX) against the zoo teacher of ``name``."""
    teacher = teacher_path(name)
    feeds = heldout_feeds(name)
    p, s, n = quality(name, student)
    one = {k: v[:1] for k, v in feeds.items()}
    shapes = {k: list(v.shape) for k, v in one.items()}
    ft, fs = measure.measure_model(teacher, shapes), measure.measure_model(student, shapes)
    tm = ft.macs.total if ft.macs else 0
    sm = fs.macs.total if fs.macs else 0
    lat = measure.measure_latency(
        teacher, student, one, threads=list(THREADS), budget_seconds=latency_budget_s
    )
    l1, l2 = lat.at(1), lat.at(2)
    mac_red = tm / sm if sm else float("nan")
    return Evaluation(
        psnr_db=p,
        ssim=s,
        teacher_macs=tm,
        student_macs=sm,
        mac_reduction=mac_red,
        teacher_params=ft.params,
        student_params=fs.params,
        param_reduction=ft.params / fs.params if fs.params else float("nan"),
        teacher_bytes=ft.bytes,
        student_bytes=fs.bytes,
        speedup_1t=l1.speedup,
        speedup_2t=l2.speedup,
        teacher_p50_ms_1t=l1.teacher.p50_ms,
        student_p50_ms_1t=l1.student.p50_ms,
        teacher_p50_ms_2t=l2.teacher.p50_ms,
        student_p50_ms_2t=l2.student.p50_ms,
        efficiency=l1.speedup / mac_red if mac_red else float("nan"),
        latency_rounds=l1.rounds,
        n_samples=n,
    )
