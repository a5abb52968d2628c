"""StyleGAN-lite (Karras et al. 2020, StyleGAN2 with non-fused modulation): ``z [N, 64] ->
[N, 1, 32, 32]`` in [-1, 1]; a mapping MLP, a learned constant, modulated/demodulated convolutions."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worker.zoo.models.latent import Z_DIM


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
