"""Model inputs for distillation and evaluation: latents, labels and calibration images.

Latents and labels are sampled data-free from their distribution; image inputs come from a
user-supplied calibration set (``.npy``/``.npz`` array or ``.zip`` of PNG/JPEG). A fixed part of
every calibration set (and a fixed-seed latent stream) is held out: it is never trained on and is
what model selection and the quality report use.
"""

from __future__ import annotations

import contextlib
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from worker.errors import BadCalibrationError
from worker.spec import Distribution, InputSpec

HELDOUT_FRACTION = 0.2
MIX_SHARE = 0.5  # augment "mix": share of training images blended with another
MIN_HELDOUT = 4
MAX_IMAGES = 4096
_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_DTYPES = {"float32": torch.float32, "int64": torch.int64, "int32": torch.int32}


def sample_input(spec: InputSpec, batch: int, gen: torch.Generator) -> torch.Tensor:
    """Sample one data-free input of shape ``[batch, *spec.shape[1:]]``."""
    shape = (batch, *spec.shape[1:])
    if spec.distribution == Distribution.NORMAL:
        return torch.randn(shape, generator=gen)
    if spec.distribution == Distribution.UNIFORM:
        return torch.rand(shape, generator=gen) * (spec.high - spec.low) + spec.low
    if spec.distribution == Distribution.RANDINT:
        return torch.randint(int(spec.low), int(spec.high), shape, generator=gen, dtype=_DTYPES[spec.dtype])
    raise BadCalibrationError("image inputs need calibration data")


def example_batch(inputs: dict[str, InputSpec], batch: int, seed: int) -> dict[str, torch.Tensor]:
    """A batch for tracing and parity checks. Image inputs get smooth random images in [-1, 1]
    (no calibration data needed to check that a graph converts faithfully)."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, spec in inputs.items():
        if spec.distribution == Distribution.CALIBRATION:
            n, c, h, w = batch, *spec.shape[1:]
            coarse = torch.rand((n, c, max(1, h // 4), max(1, w // 4)), generator=gen) * 2 - 1
            out[name] = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")
        else:
            out[name] = sample_input(spec, batch, gen)
    return out


def load_calibration(path: Path, spec: InputSpec, name: str = "") -> np.ndarray:
    """Read a calibration set as float32 ``[N, C, H, W]``.

    ``.npy``/``.npz``: float arrays are taken as already preprocessed (the model's input range);
    uint8 arrays are scaled to [-1, 1]. NHWC is transposed. ``.zip``: every PNG/JPEG image is
    converted to the model's channel count and scaled to [-1, 1]. Images larger than the model's
    input are randomly cropped during training; smaller ones are an error.
    """
    c, h, w = spec.shape[1:]
    what = f"calibration for input {name!r}" if name else "calibration"
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BadCalibrationError(f"{what}: cannot read {path.name}: {e}") from e
    if _is_image_zip(data):
        arr = _images_from_zip(data, c, what)
    else:
        try:
            loaded = np.load(io.BytesIO(data), allow_pickle=False)
        except Exception as e:
            raise BadCalibrationError(
                f"{what}: {path.name} is not a .npy/.npz array or .zip of images"
            ) from e
        if isinstance(loaded, np.lib.npyio.NpzFile):
            keys = list(loaded.keys())
            if not keys:
                raise BadCalibrationError(f"{what}: the .npz file is empty")
            arr = loaded[name] if name in keys else loaded[keys[0]]
        else:
            arr = loaded
        arr = _normalise_array(np.asarray(arr), c, what)
    if arr.shape[0] < MIN_HELDOUT + 1:
        raise BadCalibrationError(f"{what}: needs at least {MIN_HELDOUT + 1} images, got {arr.shape[0]}")
    if arr.shape[2] < h or arr.shape[3] < w:
        raise BadCalibrationError(
            f"{what}: images are {arr.shape[2]}x{arr.shape[3]}, smaller than the model input {h}x{w}"
        )
    if not np.isfinite(arr).all():
        raise BadCalibrationError(f"{what}: contains NaN or infinite values")
    return arr[:MAX_IMAGES]


def _is_image_zip(data: bytes) -> bool:
    """A zip that is not an ``.npz`` (whose members are all ``.npy``)."""
    if data[:4] != b"PK\x03\x04":
        return False
    try:
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    except zipfile.BadZipFile:
        return True  # reported as an unreadable zip
    return not names or not all(n.endswith(".npy") for n in names)


def _normalise_array(arr: np.ndarray, c: int, what: str) -> np.ndarray:
    if arr.ndim == 3:
        arr = arr[:, None] if c == 1 else arr
    if arr.ndim != 4:
        raise BadCalibrationError(f"{what}: expected a 4-d array [N, C, H, W], got shape {list(arr.shape)}")
    if arr.shape[1] != c and arr.shape[3] == c:
        arr = arr.transpose(0, 3, 1, 2)
    if arr.shape[1] != c:
        raise BadCalibrationError(f"{what}: images have {arr.shape[1]} channels, the model takes {c}")
    if arr.dtype == np.uint8:
        return (arr.astype(np.float32) / 127.5 - 1.0).copy()
    if not np.issubdtype(arr.dtype, np.floating):
        raise BadCalibrationError(f"{what}: dtype {arr.dtype} is neither float nor uint8")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _images_from_zip(data: bytes, c: int, what: str) -> np.ndarray:
    from PIL import Image

    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise BadCalibrationError(f"{what}: not a readable zip file") from e
    images: list[np.ndarray] = []
    size: tuple[int, int] | None = None
    for info in sorted(zf.infolist(), key=lambda i: i.filename):
        if info.is_dir() or not info.filename.lower().endswith(_IMAGE_EXT) or len(images) >= MAX_IMAGES:
            continue
        if info.file_size > 64 * 2**20:
            raise BadCalibrationError(f"{what}: {info.filename} is larger than 64 MiB")
        try:
            with Image.open(io.BytesIO(zf.read(info))) as im:
                im = im.convert("L" if c == 1 else "RGB")
                if size is None:
                    size = im.size
                elif im.size != size:  # one size per set: centre-crop to the first image's size
                    im = _center_crop(im, size)
                a = np.asarray(im, dtype=np.uint8)
        except Exception as e:
            raise BadCalibrationError(f"{what}: {info.filename} is not a readable image") from e
        images.append(a[None] if c == 1 else a.transpose(2, 0, 1))
    if not images:
        raise BadCalibrationError(f"{what}: the zip holds no PNG/JPEG images")
    if c not in (1, 3):
        raise BadCalibrationError(f"{what}: image files give 1 or 3 channels; the model takes {c}")
    return np.stack(images).astype(np.float32) / 127.5 - 1.0


def _center_crop(im: object, size: tuple[int, int]) -> object:
    from PIL import Image, ImageOps

    assert isinstance(im, Image.Image)
    return ImageOps.fit(im, size)


def mix_share(augment: str) -> float:
    """The sampler's ``mix`` for a ``DistillSpec.augment`` value."""
    return MIX_SHARE if augment == "mix" else 0.0


class InputSampler:
    """Training batches and a fixed held-out set for all inputs of a model.

    Calibration arrays are split once: the last ``HELDOUT_FRACTION`` (at least ``MIN_HELDOUT``)
    images are held out. Training crops are random (fully convolutional models see more variety);
    held-out crops are centred. Latents for held-out come from a generator seeded apart from
    training.
    """

    def __init__(
        self,
        inputs: dict[str, InputSpec],
        calibration: dict[str, np.ndarray] | None = None,
        seed: int = 0,
        mix: float = 0.0,
    ) -> None:
        self.inputs = inputs
        self.mix = mix  # share of training images blended with another training image
        self.patch: int | None = None  # train on square crops of this side instead of the input size
        self.gen = torch.Generator().manual_seed(seed)
        self.heldout_seed = seed + 1_000_003
        self.train_images: dict[str, torch.Tensor] = {}
        self.heldout_images: dict[str, torch.Tensor] = {}
        for name, spec in inputs.items():
            if spec.distribution != Distribution.CALIBRATION:
                continue
            arr = (calibration or {}).get(name)
            if arr is None:
                raise BadCalibrationError(
                    f"input {name!r} is an image input: supply calibration images for it "
                    "(.npy/.npz/.zip), or give it another distribution in the input spec"
                )
            n_held = max(MIN_HELDOUT, round(arr.shape[0] * HELDOUT_FRACTION))
            t = torch.from_numpy(arr)
            self.train_images[name] = t[:-n_held]
            self.heldout_images[name] = self._center(t[-n_held:], spec)

    @staticmethod
    def _center(t: torch.Tensor, spec: InputSpec) -> torch.Tensor:
        h, w = spec.shape[2], spec.shape[3]
        top, left = (t.shape[2] - h) // 2, (t.shape[3] - w) // 2
        return t[:, :, top : top + h, left : left + w].contiguous()

    def _crop(self, t: torch.Tensor, spec: InputSpec, batch: int) -> torch.Tensor:
        h, w = spec.shape[2], spec.shape[3]
        if self.patch is not None:
            h, w = min(h, self.patch), min(w, self.patch)
        idx = torch.randint(0, t.shape[0], (batch,), generator=self.gen)
        if t.shape[2] == h and t.shape[3] == w:  # nothing to crop: one gather and one select
            out = t[idx]
            flip = (torch.rand(batch, generator=self.gen) < 0.5).view(-1, 1, 1, 1)
            out = torch.where(flip, out.flip(-1), out)
        else:
            out = torch.empty((batch, t.shape[1], h, w))
            for i, j in enumerate(idx.tolist()):
                top = int(torch.randint(0, t.shape[2] - h + 1, (1,), generator=self.gen))
                left = int(torch.randint(0, t.shape[3] - w + 1, (1,), generator=self.gen))
                img = t[j, :, top : top + h, left : left + w]
                out[i] = img.flip(-1) if torch.rand(1, generator=self.gen).item() < 0.5 else img
        if self.mix > 0:
            blend = torch.rand(batch, generator=self.gen) < self.mix
            lam = (0.5 + 0.5 * torch.rand(batch, generator=self.gen)).view(-1, 1, 1, 1)
            partner = out[torch.randperm(batch, generator=self.gen)]
            out = torch.where(blend.view(-1, 1, 1, 1), lam * out + (1 - lam) * partner, out)
        return out

    @contextlib.contextmanager
    def crops(self, patch: int | None) -> Iterator[None]:
        """Training batches on random ``patch`` x ``patch`` crops inside the block (None: the full
        input size); the previous setting afterwards."""
        old, self.patch = self.patch, patch
        try:
            yield
        finally:
            self.patch = old

    def train_batch(self, batch: int) -> dict[str, torch.Tensor]:
        return {
            name: (
                self._crop(self.train_images[name], spec, batch)
                if spec.distribution == Distribution.CALIBRATION
                else sample_input(spec, batch, self.gen)
            )
            for name, spec in self.inputs.items()
        }

    def heldout(self, n: int) -> dict[str, torch.Tensor]:
        """The fixed held-out set: ``n`` samples, or all held-out images when there are fewer
        (never repeated: a repeat adds cost, not information)."""
        gen = torch.Generator().manual_seed(self.heldout_seed)
        if self.heldout_images:
            n = min(n, min(t.shape[0] for t in self.heldout_images.values()))
        out: dict[str, torch.Tensor] = {}
        for name, spec in self.inputs.items():
            if spec.distribution == Distribution.CALIBRATION:
                out[name] = self.heldout_images[name][:n]
            else:
                out[name] = sample_input(spec, n, gen)
        return out
