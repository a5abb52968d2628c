"""DCGAN (Radford et al. 2016) and its class-conditional variant (Mirza & Osindero 2014, DCGAN body):
``z [N, 64] (, label [N] int64) -> [N, 1, 32, 32]`` in [-1, 1]; a ``Linear -> reshape`` projection
and, for ``cgan``, an embedding."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from worker.zoo.models.latent import N_CLASSES, Z_DIM


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
