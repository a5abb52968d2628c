"""The CycleGAN ResNet generator (Zhu et al. 2017), zoo name ``resnet_i2i``:
``image [N, 3, 64, 64] -> [N, 3, 64, 64]``; reflection padding, instance norm, residual blocks."""

from __future__ import annotations

from torch import Tensor, nn


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
