"""The SRResNet/SRGAN generator (Ledig et al. 2017, x2, no output tanh): ``image [N, 3, 32, 32] ->
[N, 3, 64, 64]``; PReLU, batch-norm residual blocks, ``PixelShuffle`` with ICNR init."""

from __future__ import annotations

import torch
from torch import Tensor, nn


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
