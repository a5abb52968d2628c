"""The pix2pix U-Net generator (Isola et al. 2017), zoo name ``unet_i2i``:
``image [N, 3, 64, 64] -> [N, 3, 64, 64]``; skip connections by concatenation."""

from __future__ import annotations

import torch
from torch import Tensor, nn


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
