"""Reference GAN generator architectures of the zoo, written from the papers, and their registry
(every public name is importable from here, as before the split by family).

Every generator maps named inputs to one output ``image_out`` and is small enough to train on two
CPU cores in a minute or two. Layer choices favour what the engine must handle in real uploads
(``Linear -> reshape`` projections, embeddings, modulated convolutions, reflection padding,
instance/batch norm, U-Net concatenations, ``PixelShuffle``, ``PReLU``).

One module per family:

- ``dcgan`` (Radford et al. 2016; :mod:`.dcgan`): ``z [N, 64] -> [N, 1, 32, 32]`` in [-1, 1].
- ``cgan`` (Mirza & Osindero 2014, DCGAN body; :mod:`.dcgan`):
  ``z [N, 64], label [N] int64 -> [N, 1, 32, 32]``.
- ``stylegan_lite`` (Karras et al. 2020, StyleGAN2, non-fused modulation; :mod:`.stylegan`):
  ``z [N, 64] -> [N, 1, 32, 32]``.
- ``resnet_i2i`` (Zhu et al. 2017, CycleGAN ResNet generator; :mod:`.cyclegan`):
  ``image [N, 3, 64, 64] -> [N, 3, 64, 64]``.
- ``unet_i2i`` (Isola et al. 2017, pix2pix U-Net; :mod:`.pix2pix`):
  ``image [N, 3, 64, 64] -> [N, 3, 64, 64]``.
- ``srresnet`` (Ledig et al. 2017, SRResNet/SRGAN generator, x2, no output tanh; :mod:`.srresnet`):
  ``image [N, 3, 32, 32] -> [N, 3, 64, 64]``.

The latent size and class count of the digit models are in :mod:`.latent`; the registry
(:class:`ZooEntry`, :data:`ZOO`, :func:`build_model`) is here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from worker.zoo.models.cyclegan import ResidualBlock, ResnetI2IGenerator
from worker.zoo.models.dcgan import CGANGenerator, DCGANGenerator
from worker.zoo.models.latent import N_CLASSES, Z_DIM
from worker.zoo.models.pix2pix import UNetI2IGenerator
from worker.zoo.models.srresnet import SRResidualBlock, SRResNetGenerator
from worker.zoo.models.stylegan import ModulatedConv2d, PixelNorm, StyleBlock, StyleGANLiteGenerator

__all__ = [
    "N_CLASSES",
    "ZOO",
    "ZOO_NAMES",
    "Z_DIM",
    "CGANGenerator",
    "DCGANGenerator",
    "ModulatedConv2d",
    "PixelNorm",
    "ResidualBlock",
    "ResnetI2IGenerator",
    "SRResNetGenerator",
    "SRResidualBlock",
    "StyleBlock",
    "StyleGANLiteGenerator",
    "UNetI2IGenerator",
    "ZooEntry",
    "build_model",
    "register",
]


@dataclass(frozen=True)
class ZooEntry:
    """One zoo family: its constructor and its I/O contract (batch dimension 1 in shapes).

    ``inputs`` maps each input name to an ``InputSpec``-compatible dict (see ``worker.spec``).
    """

    name: str
    factory: Callable[[], nn.Module]
    description: str
    inputs: dict[str, dict[str, object]]
    output_shape: tuple[int, ...]
    tanh_output: bool
    kind: str  # "latent" (sampled inputs) or "image" (calibration images)


def _normal(dim: int) -> dict[str, object]:
    return {"shape": [1, dim], "dtype": "float32", "distribution": "normal", "low": 0.0, "high": 1.0}


def _image(size: int) -> dict[str, object]:
    return {
        "shape": [1, 3, size, size],
        "dtype": "float32",
        "distribution": "calibration",
        "low": -1.0,
        "high": 1.0,
    }


ZOO: dict[str, ZooEntry] = {}


def register(entry: ZooEntry) -> ZooEntry:
    """Add ``entry`` to :data:`ZOO`; refuses duplicate names."""
    if entry.name in ZOO:
        raise ValueError(f"zoo family {entry.name!r} is already registered")
    ZOO[entry.name] = entry
    return entry


register(
    ZooEntry(
        "dcgan",
        DCGANGenerator,
        "Unconditional DCGAN generator, 32x32 grayscale digits (sklearn digits).",
        {"z": _normal(Z_DIM)},
        (1, 1, 32, 32),
        True,
        "latent",
    )
)
register(
    ZooEntry(
        "cgan",
        CGANGenerator,
        "Class-conditional DCGAN generator (label embedding concatenated with z), 32x32 digits.",
        {
            "z": _normal(Z_DIM),
            "label": {"shape": [1], "dtype": "int64", "distribution": "randint", "low": 0.0, "high": 10.0},
        },
        (1, 1, 32, 32),
        True,
        "latent",
    )
)
register(
    ZooEntry(
        "stylegan_lite",
        StyleGANLiteGenerator,
        "Style-based generator: mapping MLP, constant input, non-fused modulated/demodulated convs, "
        "32x32 digits.",
        {"z": _normal(Z_DIM)},
        (1, 1, 32, 32),
        True,
        "latent",
    )
)
register(
    ZooEntry(
        "resnet_i2i",
        ResnetI2IGenerator,
        "CycleGAN-style ResNet generator (4 residual blocks): photo -> auto-toned, sharpened, "
        "warm-graded photo, 64x64.",
        {"image": _image(64)},
        (1, 3, 64, 64),
        True,
        "image",
    )
)
register(
    ZooEntry(
        "unet_i2i",
        UNetI2IGenerator,
        "pix2pix-style U-Net with skip concatenations: grayscale photo -> colour photo, 64x64.",
        {"image": _image(64)},
        (1, 3, 64, 64),
        True,
        "image",
    )
)
register(
    ZooEntry(
        "srresnet",
        SRResNetGenerator,
        "SRResNet/SRGAN generator, x2 super-resolution 32x32 -> 64x64 (PixelShuffle, PReLU, no tanh).",
        {"image": _image(32)},
        (1, 3, 64, 64),
        False,
        "image",
    )
)

ZOO_NAMES: tuple[str, ...] = tuple(ZOO)


def build_model(name: str) -> nn.Module:
    """A freshly initialised (untrained) generator of family ``name``, in eval mode."""
    if name not in ZOO:
        raise KeyError(f"unknown zoo model {name!r}; valid: {', '.join(ZOO_NAMES)}")
    return ZOO[name].factory().eval()
