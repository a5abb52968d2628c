"""Tiny generators of each family, exported to ONNX / TorchScript for engine unit tests."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class TinyDCGAN(nn.Module):
    """z [N, 16] -> Linear -> view [N, 32, 4, 4] -> ConvT/BN/ReLU x2 -> Tanh [N, 1, 16, 16]."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 32 * 4 * 4)
        self.net = nn.Sequential(
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.ConvTranspose2d(32, 16, 4, 2, 1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.ConvTranspose2d(16, 1, 4, 2, 1),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(-1, 32, 4, 4))


class TinyCGAN(nn.Module):
    """z [N, 8], label [N] int64 in [0, 5) -> [N, 1, 8, 8]."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(5, 8)
        self.fc = nn.Linear(16, 16 * 4 * 4)
        self.net = nn.Sequential(
            nn.ReLU(), nn.ConvTranspose2d(16, 8, 4, 2, 1), nn.ReLU(), nn.Conv2d(8, 1, 3, 1, 1), nn.Tanh()
        )

    def forward(self, z: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        h = torch.cat([z, self.emb(label)], dim=1)
        return self.net(self.fc(h).view(-1, 16, 4, 4))


class _Res(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.b = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(c, c, 3),
            nn.InstanceNorm2d(c, affine=True),
            nn.ReLU(),
            nn.ReflectionPad2d(1),
            nn.Conv2d(c, c, 3),
            nn.InstanceNorm2d(c, affine=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b(x)


class TinyResNetI2I(nn.Module):
    """image [N, 3, 16, 16] -> [N, 3, 16, 16], CycleGAN-style with 2 residual blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.n = nn.Sequential(
            nn.ReflectionPad2d(3),
            nn.Conv2d(3, 8, 7),
            nn.InstanceNorm2d(8, affine=True),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, 2, 1),
            nn.InstanceNorm2d(16, affine=True),
            nn.ReLU(),
            _Res(16),
            _Res(16),
            nn.ConvTranspose2d(16, 8, 3, 2, 1, output_padding=1),
            nn.InstanceNorm2d(8, affine=True),
            nn.ReLU(),
            nn.ReflectionPad2d(3),
            nn.Conv2d(8, 3, 7),
            nn.Tanh(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.n(x)


class TinySR(nn.Module):
    """image [N, 3, 8, 8] -> [N, 3, 16, 16]: PReLU, residual blocks, Conv -> PixelShuffle(2)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(3, 16, 5, 1, 2), nn.PReLU(16))
        self.body = nn.Sequential(_SRB(16), _SRB(16))
        self.up = nn.Sequential(nn.Conv2d(16, 64, 3, 1, 1), nn.PixelShuffle(2), nn.PReLU(16))
        self.tail = nn.Conv2d(16, 3, 5, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        return self.tail(self.up(h + self.body(h)))


class _SRB(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.b = nn.Sequential(
            nn.Conv2d(c, c, 3, 1, 1), nn.BatchNorm2d(c), nn.PReLU(c), nn.Conv2d(c, c, 3, 1, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b(x)


class _ModConv(nn.Module):
    """StyleGAN2 modulated conv, non-fused: scale input by style, conv, demodulate, add bias."""

    def __init__(self, cin: int, cout: int, wdim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) / (cin * 9) ** 0.5)
        self.bias = nn.Parameter(torch.randn(cout) * 0.1)
        self.affine = nn.Linear(wdim, cin)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        s = self.affine(w)
        y = nn.functional.conv2d(x * s[:, :, None, None], self.weight, None, 1, 1)
        d = torch.rsqrt(torch.matmul(s.pow(2), self.weight.pow(2).sum(dim=(2, 3)).t()) + 1e-8)
        return y * d[:, :, None, None] + self.bias[None, :, None, None]


class TinyStyle(nn.Module):
    """z [N, 16] -> mapping -> two modulated convs on a learned 4x4 constant -> [N, 1, 8, 8]."""

    def __init__(self) -> None:
        super().__init__()
        self.mapping = nn.Sequential(
            nn.Linear(16, 16), nn.LeakyReLU(0.2), nn.Linear(16, 16), nn.LeakyReLU(0.2)
        )
        self.const = nn.Parameter(torch.randn(1, 16, 4, 4))
        self.c1 = _ModConv(16, 16, 16)
        self.c2 = _ModConv(16, 16, 16)
        self.rgb = nn.Conv2d(16, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        w = self.mapping(z)
        x = self.const.expand(z.shape[0], -1, -1, -1)
        x = nn.functional.leaky_relu(self.c1(x, w), 0.2)
        x = nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
        x = nn.functional.leaky_relu(self.c2(x, w), 0.2)
        return torch.tanh(self.rgb(x))


FAMILIES: dict[str, tuple[type[nn.Module], dict[str, tuple[list[int], torch.dtype]]]] = {
    "dcgan": (TinyDCGAN, {"z": ([1, 16], torch.float32)}),
    "cgan": (TinyCGAN, {"z": ([1, 8], torch.float32), "label": ([1], torch.int64)}),
    "resnet": (TinyResNetI2I, {"image": ([1, 3, 16, 16], torch.float32)}),
    "sr": (TinySR, {"image": ([1, 3, 8, 8], torch.float32)}),
    "style": (TinyStyle, {"z": ([1, 16], torch.float32)}),
}


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = FAMILIES[name][0]()
    with torch.no_grad():  # non-trivial BN statistics, so fused and unfused graphs differ if wrong
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def example(name: str, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for shape, dtype in FAMILIES[name][1].values():
        if dtype == torch.int64:
            out.append(torch.randint(0, 5, (batch, *shape[1:]), generator=g))
        else:
            out.append(torch.rand((batch, *shape[1:]), generator=g) * 2 - 1)
    return tuple(out)


def export(name: str, path: Path, fmt: str = "onnx", opset: int = 17, dynamo: bool = False) -> Path:
    model = build(name)
    args = example(name)
    names = list(FAMILIES[name][1])
    if fmt == "torchscript":
        torch.jit.trace(model, args).save(str(path))
        return path
    if dynamo:
        batch = torch.export.Dim("batch", min=1, max=1024)
        torch.onnx.export(
            model,
            args,
            str(path),
            dynamo=True,
            opset_version=opset,
            input_names=names,
            output_names=["out"],
            dynamic_shapes=tuple({0: batch} for _ in names),
            external_data=False,
        )
    else:
        torch.onnx.export(
            model,
            args,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=names,
            output_names=["out"],
            dynamic_axes={n: {0: "b"} for n in [*names, "out"]},
        )
    return path
