"""Tiny generators exported the way people export them: a fixed batch of 1, dynamic N/H/W axes,
StyleGAN2's fused modulated convolution (``groups = batch``), a batch-squeezing attention."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tests.worker.engine import tiny


class _SRBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.b = nn.Sequential(
            nn.Conv2d(c, c, 3, 1, 1),
            nn.BatchNorm2d(c),
            nn.PReLU(c),
            nn.Conv2d(c, c, 3, 1, 1),
            nn.BatchNorm2d(c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b(x)


class DCGAN(tiny.TinyDCGAN):
    """The tiny DCGAN with ``view(z.shape[0], 32, 4, 4)``: a Reshape [1, 32, 4, 4] once exported at
    batch 1 (the batch baked into a shape constant)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(z.shape[0], 32, 4, 4))


class SRGAN(nn.Module):
    """SRGAN-style x2: Conv/PReLU head, residual blocks, Conv -> PixelShuffle(2) (DepthToSpace)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(3, 16, 9, 1, 4), nn.PReLU())
        self.body = nn.Sequential(_SRBlock(16), _SRBlock(16))
        self.up = nn.Sequential(nn.Conv2d(16, 64, 3, 1, 1), nn.PixelShuffle(2), nn.PReLU())
        self.tail = nn.Conv2d(16, 3, 9, 1, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        return torch.tanh(self.tail(self.up(h + self.body(h))))


class UNet(nn.Module):
    """Two stride-2 levels with a concatenated skip: H and W must be multiples of 4."""

    def __init__(self) -> None:
        super().__init__()
        self.d1 = nn.Sequential(nn.Conv2d(3, 8, 4, 2, 1), nn.LeakyReLU(0.2))
        self.d2 = nn.Sequential(
            nn.Conv2d(8, 16, 4, 2, 1), nn.InstanceNorm2d(16, affine=True), nn.LeakyReLU(0.2)
        )
        self.u1 = nn.Sequential(
            nn.ConvTranspose2d(16, 8, 4, 2, 1), nn.InstanceNorm2d(8, affine=True), nn.ReLU()
        )
        self.u2 = nn.Sequential(nn.ConvTranspose2d(16, 3, 4, 2, 1), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.d1(x)
        return self.u2(torch.cat([self.u1(self.d2(a)), a], 1))


class SelfAttentionI2I(nn.Module):
    """Attention written for one image (``x.view(C, H*W)``): a fixed batch of 1 that no rewrite
    of the graph's shape constants can make batch-general."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, 1, 1)
        self.c2 = nn.Conv2d(8, 8, 3, 1, 1)
        self.c3 = nn.Conv2d(8, 3, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c2(torch.relu(self.c1(x))))
        f = h.view(8, -1)
        att = torch.softmax(f.t() @ f / 8.0, dim=-1)
        return torch.tanh(self.c3(h + (f @ att).view(1, 8, x.shape[2], x.shape[3])))


class FusedModConv(nn.Module):
    """StyleGAN2's fused modulated conv (as in NVlabs' stylegan2-ada): modulate and demodulate
    the weight per sample, fold the batch into channels, one conv with ``groups = batch``."""

    def __init__(self, cin: int, cout: int, wdim: int, k: int = 3, demod: bool = True, up: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, cout, cin, k, k) / (cin * k * k) ** 0.5)
        self.bias = nn.Parameter(torch.randn(cout) * 0.1)
        self.affine = nn.Linear(wdim, cin)
        self.cin, self.k, self.demod, self.up = cin, k, demod, up

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        n = w.shape[0]
        wt = self.weight * self.affine(w).view(n, 1, self.cin, 1, 1)
        if self.demod:
            wt = wt * torch.rsqrt(wt.pow(2).sum(dim=[2, 3, 4]) + 1e-8).view(n, -1, 1, 1, 1)
        if self.up:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        h, wd = x.shape[2], x.shape[3]
        x = x.expand(n, -1, -1, -1).reshape(1, -1, h, wd)
        y = F.conv2d(x, wt.reshape(-1, self.cin, self.k, self.k), padding=self.k // 2, groups=n)
        return y.reshape(n, -1, h, wd) + self.bias.view(1, -1, 1, 1)


class StyleGAN2(nn.Module):
    """z [N, 16] -> mapping MLP -> learned 4x4 constant -> 3 fused modulated convs (2 upsampling)
    -> to_rgb (modulated 1x1, no demodulation) -> [N, 3, 16, 16]."""

    def __init__(self, zdim: int = 16, c: int = 16) -> None:
        super().__init__()
        self.mapping = nn.Sequential(
            nn.Linear(zdim, zdim), nn.LeakyReLU(0.2), nn.Linear(zdim, zdim), nn.LeakyReLU(0.2)
        )
        self.const = nn.Parameter(torch.randn(1, c, 4, 4))
        self.c1 = FusedModConv(c, c, zdim)
        self.c2 = FusedModConv(c, c, zdim, up=True)
        self.c3 = FusedModConv(c, c, zdim, up=True)
        self.rgb = FusedModConv(c, 3, zdim, k=1, demod=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        w = self.mapping(z)
        x = F.leaky_relu(self.c1(self.const, w), 0.2)
        x = F.leaky_relu(self.c2(x, w), 0.2)
        x = F.leaky_relu(self.c3(x, w), 0.2)
        return torch.tanh(self.rgb(x, w))


MODELS: dict[str, type[nn.Module]] = {
    "dcgan": DCGAN,
    "srgan": SRGAN,
    "cyclegan": tiny.TinyResNetI2I,
    "unet": UNet,
    "attention": SelfAttentionI2I,
    "stylegan2": StyleGAN2,
}
INPUTS: dict[str, tuple[str, list[int]]] = {
    "dcgan": ("z", [16]),
    "srgan": ("image", [3, 16, 16]),
    "cyclegan": ("image", [3, 16, 16]),
    "unet": ("image", [3, 16, 16]),
    "attention": ("image", [3, 8, 8]),
    "stylegan2": ("z", [16]),
}


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = MODELS[name]()
    with torch.no_grad():  # non-trivial BN statistics, so a wrong fold shows
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def example(name: str, batch: int, seed: int = 0, size: tuple[int, int] | None = None) -> torch.Tensor:
    _, shape = INPUTS[name]
    if size is not None:
        shape = [shape[0], *size]
    g = torch.Generator().manual_seed(seed)
    return torch.rand((batch, *shape), generator=g) * 2 - 1


def export_onnx(name: str, path: Path, axes: str = "fixed", opset: int = 17) -> Path:
    """``axes``: "fixed" (batch 1, no dynamic_axes: the most common export) or "nhw" (dynamic
    batch, height and width on input and output)."""
    inp, _ = INPUTS[name]
    dyn = {0: "N", 2: "H", 3: "W"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            build(name),
            (example(name, 1),),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[inp],
            output_names=[f"{inp}_out"],
            dynamic_axes={inp: dyn, f"{inp}_out": dyn} if axes == "nhw" else None,
        )
    return path


def export_torchscript(name: str, path: Path, how: str = "script") -> Path:
    model = build(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.script(model) if how == "script" else torch.jit.trace(model, (example(name, 1),))
    ts.save(str(path))
    return path
