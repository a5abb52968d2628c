"""Reference GAN generator architectures of the zoo, written from the papers, and their registry.

Every generator maps named inputs to one output ``image_out`` and is small enough to train on two
CPU cores in a minute or two. Layer choices favour what the engine must handle in real uploads
(``Linear -> reshape`` projections, embeddings, modulated convolutions, reflection padding,
instance/batch norm, U-Net concatenations, ``PixelShuffle``, ``PReLU``).

- ``dcgan`` (Radford et al. 2016): ``z [N, 64] -> [N, 1, 32, 32]`` in [-1, 1].
- ``cgan`` (Mirza & Osindero 2014, DCGAN body): ``z [N, 64], label [N] int64 -> [N, 1, 32, 32]``.
- ``stylegan_lite`` (Karras et al. 2020, StyleGAN2, non-fused modulation): ``z [N, 64] -> [N, 1, 32, 32]``.
- ``resnet_i2i`` (Zhu et al. 2017, CycleGAN ResNet generator): ``image [N, 3, 64, 64] -> [N, 3, 64, 64]``.
- ``unet_i2i`` (Isola et al. 2017, pix2pix U-Net): ``image [N, 3, 64, 64] -> [N, 3, 64, 64]``.
- ``srresnet`` (Ledig et al. 2017, SRResNet/SRGAN generator, x2, no output tanh):
  ``image [N, 3, 32, 32] -> [N, 3, 64, 64]``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Z_DIM = 64
N_CLASSES = 10


# --------------------------------------------------------------------------------------------- DCGAN


class DCGANGenerator(nn.Module):
    """Unconditional DCGAN generator.

    ``z [N, z_dim]`` -> Linear -> reshape ``[N, 4*ngf, 4, 4]`` -> 3 x (BatchNorm, ReLU,
    ConvTranspose 4x4 stride 2) -> Tanh -> ``[N, 1, 32, 32]`` in [-1, 1].
    """

    def __init__(self, z_dim: int = Z_DIM, ngf: int = 16, out_channels: int = 1) -> None:
        super().__init__()
        self.c0 = 4 * ngf
        self.project = nn.Linear(z_dim, self.c0 * 4 * 4)
        self.body = _dcgan_body(self.c0, ngf, out_channels)

    def forward(self, z: Tensor) -> Tensor:
        """``z [N, z_dim]`` float32 -> ``[N, 1, 32, 32]``."""
        x = self.project(z).reshape(-1, self.c0, 4, 4)
        return self.body(x)


def _dcgan_body(c0: int, ngf: int, out_channels: int) -> nn.Sequential:
    """``[N, c0, 4, 4] -> [N, out_channels, 32, 32]``: BN/ReLU/ConvTranspose x3, Tanh."""
    return nn.Sequential(
        nn.BatchNorm2d(c0),
        nn.ReLU(inplace=True),
        nn.ConvTranspose2d(c0, 2 * ngf, 4, 2, 1, bias=False),  # 8x8
        nn.BatchNorm2d(2 * ngf),
        nn.ReLU(inplace=True),
        nn.ConvTranspose2d(2 * ngf, ngf, 4, 2, 1, bias=False),  # 16x16
        nn.BatchNorm2d(ngf),
        nn.ReLU(inplace=True),
        nn.ConvTranspose2d(ngf, out_channels, 4, 2, 1),  # 32x32
        nn.Tanh(),
    )


class CGANGenerator(nn.Module):
    """Class-conditional DCGAN generator.

    ``z [N, z_dim]`` and ``label [N]`` (int64 in ``0..n_classes-1``) -> ``Embedding(label)``
    ``[N, emb_dim]`` concatenated with ``z`` -> Linear -> reshape -> DCGAN body -> ``[N, 1, 32, 32]``.
    """

    def __init__(
        self, z_dim: int = Z_DIM, n_classes: int = N_CLASSES, emb_dim: int = 16, ngf: int = 16
    ) -> None:
        super().__init__()
        self.c0 = 4 * ngf
        self.embed = nn.Embedding(n_classes, emb_dim)
        self.project = nn.Linear(z_dim + emb_dim, self.c0 * 4 * 4)
        self.body = _dcgan_body(self.c0, ngf, 1)

    def forward(self, z: Tensor, label: Tensor) -> Tensor:
        """``z [N, z_dim]`` float32, ``label [N]`` int64 -> ``[N, 1, 32, 32]``."""
        h = torch.cat([z, self.embed(label)], dim=1)
        x = self.project(h).reshape(-1, self.c0, 4, 4)
        return self.body(x)


# ------------------------------------------------------------------------------------- StyleGAN-lite


class PixelNorm(nn.Module):
    """``x / sqrt(mean(x^2, dim=1) + eps)`` for ``x [N, C]``."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated 3x3 convolution, the "non-fused" way.

    ``x [N, Cin, H, W]``, ``w [N, w_dim]`` -> ``[N, Cout, H, W]``:

    1. style ``s = affine(w)`` ``[N, Cin]`` (bias initialised to 1);
    2. ``y = conv2d(x * s[:, :, None, None], weight)`` with the fixed weight ``[Cout, Cin, k, k]``;
    3. if ``demodulate``: ``y * rsqrt(sum_{i,k,k}(weight[o,i]^2 * s[i]^2) + eps)`` per ``[N, Cout]``.

    Mathematically identical to the fused grouped-convolution form, and exports to ONNX as a plain
    ``Conv`` with a constant weight (plus ``Mul``/``MatMul`` for the scales).
    """

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, kernel: int = 3, demodulate: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(
            torch.randn(out_ch, in_ch, kernel, kernel) / (in_ch * kernel * kernel) ** 0.5
        )
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.affine = nn.Linear(w_dim, in_ch)
        nn.init.normal_(self.affine.weight, 0.0, 1.0 / w_dim**0.5)
        nn.init.ones_(self.affine.bias)
        self.demodulate = demodulate
        self.padding = kernel // 2

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        """``x [N, Cin, H, W]``, ``w [N, w_dim]`` -> ``[N, Cout, H, W]``."""
        s = self.affine(w)  # [N, Cin]
        y = F.conv2d(x * s[:, :, None, None], self.weight, None, 1, self.padding)
        if self.demodulate:
            w2 = self.weight.pow(2).sum(dim=(2, 3))  # [Cout, Cin]
            d = torch.rsqrt(torch.matmul(s.pow(2), w2.t()) + 1e-8)  # [N, Cout]
            y = y * d[:, :, None, None]
        return y + self.bias[None, :, None, None]


class StyleBlock(nn.Module):
    """Optional nearest x2 upsample, modulated conv, LeakyReLU: ``[N, Cin, H, W] -> [N, Cout, H', W']``."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, upsample: bool) -> None:
        super().__init__()
        self.upsample = upsample
        self.conv = ModulatedConv2d(in_ch, out_ch, w_dim)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.act(self.conv(x, w))


class StyleGANLiteGenerator(nn.Module):
    """Style-based generator (StyleGAN2 without noise inputs, path length or mixing).

    ``z [N, z_dim]`` -> pixel-norm -> mapping MLP (``n_mlp`` x Linear + LeakyReLU) -> ``w [N, w_dim]``;
    a learned constant ``[1, C, 4, 4]`` repeated over the batch goes through modulated 3x3 convs
    (4x4, then upsample+conv, conv at 8, 16 and 32) and a modulated (not demodulated) 1x1 toRGB,
    Tanh -> ``[N, 1, 32, 32]`` in [-1, 1].
    """

    def __init__(
        self,
        z_dim: int = Z_DIM,
        w_dim: int = 64,
        n_mlp: int = 3,
        channels: tuple[int, ...] = (64, 32, 32, 16),
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [PixelNorm()]
        for i in range(n_mlp):
            layers += [nn.Linear(z_dim if i == 0 else w_dim, w_dim), nn.LeakyReLU(0.2)]
        self.mapping = nn.Sequential(*layers)
        for m in self.mapping.modules():
            if isinstance(m, nn.Linear):  # variance-preserving, so styles vary with z from the start
                nn.init.kaiming_normal_(m.weight, a=0.2)
                nn.init.zeros_(m.bias)
        self.const = nn.Parameter(torch.randn(1, channels[0], 4, 4))
        blocks: list[nn.Module] = [StyleBlock(channels[0], channels[0], w_dim, upsample=False)]
        for c_in, c_out in itertools.pairwise(channels):
            blocks += [StyleBlock(c_in, c_out, w_dim, upsample=True), StyleBlock(c_out, c_out, w_dim, False)]
        self.blocks = nn.ModuleList(blocks)
        self.to_rgb = ModulatedConv2d(channels[-1], 1, w_dim, kernel=1, demodulate=False)

    def forward(self, z: Tensor) -> Tensor:
        """``z [N, z_dim]`` float32 -> ``[N, 1, 32, 32]``."""
        w = self.mapping(z)
        x = self.const.expand(z.shape[0], -1, -1, -1)
        for block in self.blocks:
            x = block(x, w)
        return torch.tanh(self.to_rgb(x, w))


# ---------------------------------------------------------------------------------- CycleGAN ResNet


class ResidualBlock(nn.Module):
    """CycleGAN residual block: ``x + [ReflectionPad, Conv3x3, IN, ReLU, ReflectionPad, Conv3x3, IN](x)``."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(ch, ch, 3),
            nn.InstanceNorm2d(ch, affine=True),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(ch, ch, 3),
            nn.InstanceNorm2d(ch, affine=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``[N, C, H, W] -> [N, C, H, W]``."""
        return x + self.block(x)


class ResnetI2IGenerator(nn.Module):
    """CycleGAN-style ResNet generator: ``image [N, 3, H, W] -> [N, 3, H, W]`` in [-1, 1] (H, W % 4 == 0).

    ReflectionPad(3), Conv7x7, IN, ReLU; 2 x (Conv3x3 stride 2, IN, ReLU); ``n_blocks`` residual
    blocks at ``4*ngf`` channels; 2 x (ConvTranspose3x3 stride 2, IN, ReLU); ReflectionPad(3),
    Conv7x7, Tanh.
    """

    def __init__(self, ngf: int = 12, n_blocks: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(3, ngf, 7),
            nn.InstanceNorm2d(ngf, affine=True),
            nn.ReLU(inplace=True),
        ]
        ch = ngf
        for _ in range(2):
            layers += [
                nn.Conv2d(ch, 2 * ch, 3, 2, 1),
                nn.InstanceNorm2d(2 * ch, affine=True),
                nn.ReLU(inplace=True),
            ]
            ch *= 2
        layers += [ResidualBlock(ch) for _ in range(n_blocks)]
        for _ in range(2):
            layers += [
                nn.ConvTranspose2d(ch, ch // 2, 3, 2, 1, output_padding=1),
                nn.InstanceNorm2d(ch // 2, affine=True),
                nn.ReLU(inplace=True),
            ]
            ch //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, 3, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, image: Tensor) -> Tensor:
        """``image [N, 3, H, W]`` in [-1, 1] -> ``[N, 3, H, W]`` in [-1, 1]."""
        return self.model(image)


# ---------------------------------------------------------------------------------- pix2pix U-Net


class UNetI2IGenerator(nn.Module):
    """pix2pix-style U-Net: ``image [N, 3, H, W] -> [N, 3, H, W]`` in [-1, 1] (H, W % 2**depth == 0).

    Down ``i``: Conv4x4 stride 2 (+ BatchNorm except the first and the innermost) + LeakyReLU(0.2).
    Up ``i``: ConvTranspose4x4 stride 2 + BatchNorm + ReLU, then ``torch.cat`` with the mirror
    down activation; the outermost up is ConvTranspose + Tanh.
    """

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 64)) -> None:
        super().__init__()
        downs: list[nn.Module] = []
        c_in = 3
        for i, c in enumerate(channels):
            norm = 0 < i < len(channels) - 1
            downs.append(
                nn.Sequential(
                    nn.Conv2d(c_in, c, 4, 2, 1, bias=not norm),
                    nn.BatchNorm2d(c) if norm else nn.Identity(),
                    nn.LeakyReLU(0.2, inplace=True),
                )
            )
            c_in = c
        self.downs = nn.ModuleList(downs)
        ups: list[nn.Module] = []
        # up j takes the innermost activation (j == 0) or cat(previous up, skip) and mirrors down[-2-j].
        rev = list(reversed(channels))
        for j in range(len(channels) - 1):
            c_up_in = rev[0] if j == 0 else 2 * rev[j]
            c_out = rev[j + 1]
            ups.append(
                nn.Sequential(
                    nn.ConvTranspose2d(c_up_in, c_out, 4, 2, 1, bias=False),
                    nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True),
                )
            )
        self.ups = nn.ModuleList(ups)
        self.out = nn.Sequential(nn.ConvTranspose2d(2 * channels[0], 3, 4, 2, 1), nn.Tanh())

    def forward(self, image: Tensor) -> Tensor:
        """``image [N, 3, H, W]`` in [-1, 1] -> ``[N, 3, H, W]`` in [-1, 1]."""
        skips: list[Tensor] = []
        x = image
        for down in self.downs:
            x = down(x)
            skips.append(x)
        skips = skips[:-1]
        n = len(skips)
        for j, up in enumerate(self.ups):
            x = torch.cat([up(x), skips[n - 1 - j]], dim=1)
        return self.out(x)


# ---------------------------------------------------------------------------------------- SRResNet


class SRResidualBlock(nn.Module):
    """SRResNet block: ``x + BN(Conv3x3(PReLU(BN(Conv3x3(x)))))``, ``[N, C, H, W] -> [N, C, H, W]``."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(ch, ch, 3, 1, 1, bias=False),
            nn.BatchNorm2d(ch),
            nn.PReLU(),
            nn.Conv2d(ch, ch, 3, 1, 1, bias=False),
            nn.BatchNorm2d(ch),
        )
        nn.init.zeros_(self.block[-1].weight)  # zero-gamma: every block starts as the identity

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


@torch.no_grad()
def _icnr_(weight: Tensor, r: int) -> None:
    """ICNR init (Aitken et al. 2017) of a conv ``weight [C*r*r, Cin, k, k]`` feeding ``PixelShuffle(r)``.

    The ``r*r`` sub-pixel kernels of every output channel start equal, so the shuffle starts as a
    nearest-neighbour upsampling (no checkerboard) and training starts closer to a smooth image.
    """
    base = torch.empty(weight.shape[0] // (r * r), *weight.shape[1:])
    nn.init.kaiming_normal_(base, a=0.25)
    weight.copy_(base.repeat_interleave(r * r, dim=0))


class SRResNetGenerator(nn.Module):
    """SRGAN generator (SRResNet): ``image [N, 3, H, W] -> [N, 3, scale*H, scale*W]``, no output tanh.

    Conv9x9 + PReLU; ``n_blocks`` residual blocks; Conv3x3 + BN and a long skip from the first
    activation; ``log2(scale)`` x (Conv3x3 to 4C, PixelShuffle(2), PReLU); Conv9x9 to 3 channels.
    Trained on targets in [-1, 1]; the output is linear (may overshoot [-1, 1] slightly).
    """

    def __init__(self, ch: int = 32, n_blocks: int = 4, scale: int = 2) -> None:
        super().__init__()
        if scale not in (2, 4):
            raise ValueError(f"scale must be 2 or 4, not {scale}")
        self.head = nn.Sequential(nn.Conv2d(3, ch, 9, 1, 4), nn.PReLU())
        self.blocks = nn.Sequential(*[SRResidualBlock(ch) for _ in range(n_blocks)])
        self.trunk_out = nn.Sequential(nn.Conv2d(ch, ch, 3, 1, 1, bias=False), nn.BatchNorm2d(ch))
        ups: list[nn.Module] = []
        for _ in range(scale // 2):
            conv = nn.Conv2d(ch, 4 * ch, 3, 1, 1)
            _icnr_(conv.weight, 2)
            ups += [conv, nn.PixelShuffle(2), nn.PReLU()]
        self.upsample = nn.Sequential(*ups)
        self.tail = nn.Conv2d(ch, 3, 9, 1, 4)

    def forward(self, image: Tensor) -> Tensor:
        """``image [N, 3, H, W]`` in [-1, 1] -> ``[N, 3, scale*H, scale*W]`` (about [-1, 1])."""
        h = self.head(image)
        x = h + self.trunk_out(self.blocks(h))
        return self.tail(self.upsample(x))


# ---------------------------------------------------------------------------------------- registry


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
