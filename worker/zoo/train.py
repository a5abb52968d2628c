"""Brief, seeded training of the zoo generators on two CPU cores.

- Latent models (``dcgan``, ``cgan``, ``stylegan_lite``): adversarial training against a small
  DCGAN discriminator (label-conditioned by one-hot channels for ``cgan``), non-saturating loss,
  Adam(2e-4, betas (0.5, 0.999)), batch 64, on sklearn digits.
- Image models (``resnet_i2i``, ``unet_i2i``, ``srresnet``): supervised L1 on random crops of the
  skimage photos' training regions, Adam with cosine decay, no GAN term.

After adversarial training, BatchNorm running statistics are re-estimated as exact averages over
fresh batches (momentum ``None``), so eval-mode samples match what the discriminator saw. The
supervised models keep their running averages (their learning rate has decayed to ~0 by then).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worker.zoo import data_sources as ds
from worker.zoo.models import N_CLASSES, Z_DIM

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What the manifest records about one training run."""

    steps: int
    seconds: float
    batch_size: int
    method: str
    data_source: str
    final_losses: dict[str, float] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)


class MinibatchStd(nn.Module):
    """Appends the across-batch std (mean over features) as a channel: ``[N, C, H, W] -> [N, C+1, H, W]``."""

    def forward(self, x: Tensor) -> Tensor:
        s = x.std(dim=0).mean().expand(x.shape[0], 1, *x.shape[2:])
        return torch.cat([x, s], dim=1)


class DigitDiscriminator(nn.Module):
    """DCGAN discriminator ``[N, 1 + extra, 32, 32] -> logits [N]`` (extra: one-hot label channels).

    With ``minibatch_std`` a :class:`MinibatchStd` channel precedes the last conv (StyleGAN's
    defence against mode collapse).
    """

    def __init__(self, in_ch: int = 1, ndf: int = 32, minibatch_std: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_ch, ndf, 4, 2, 1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, 2 * ndf, 4, 2, 1, bias=False),
            nn.BatchNorm2d(2 * ndf),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(2 * ndf, 4 * ndf, 4, 2, 1, bias=False),
            nn.BatchNorm2d(4 * ndf),
            nn.LeakyReLU(0.2, inplace=True),
            *([MinibatchStd()] if minibatch_std else []),
            nn.Conv2d(4 * ndf + int(minibatch_std), 1, 4, 1, 0),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).flatten()


def _label_maps(label: Tensor, size: int = 32) -> Tensor:
    """``label [N]`` int64 -> one-hot maps ``[N, 10, size, size]``."""
    return F.one_hot(label, N_CLASSES).float()[:, :, None, None].expand(-1, -1, size, size)


def _dcgan_init(m: nn.Module) -> None:
    """DCGAN init: conv weights N(0, 0.02), BatchNorm gamma N(1, 0.02), beta 0."""
    if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: list[tuple[Tensor, ...]]) -> None:
    """Reset BatchNorm running stats and set them to exact averages over ``batches`` (train mode)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for args in batches:
        model(*args)
    for bn in bns:
        bn.momentum = 0.1
    model.eval()


def train_latent_gan(name: str, gen: nn.Module, steps: int, seed: int, batch: int = 64) -> TrainResult:
    """Adversarially train a digit generator (``dcgan``, ``cgan`` or ``stylegan_lite``) in place.

    ``gen(z)`` or ``gen(z, label)`` -> ``[N, 1, 32, 32]``; ends in eval mode.
    """
    conditional = name == "cgan"
    g = torch.Generator().manual_seed(seed)
    real_x, real_y = ds.load_digits_32()
    disc = DigitDiscriminator(1 + (N_CLASSES if conditional else 0), minibatch_std=name == "stylegan_lite")
    disc.apply(_dcgan_init)
    if name != "stylegan_lite":
        gen.apply(_dcgan_init)
    opt_g = torch.optim.Adam(gen.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
    gen.train()
    disc.train()

    def d_in(x: Tensor, y: Tensor) -> Tensor:
        return torch.cat([x, _label_maps(y)], 1) if conditional else x

    def g_args(n: int) -> tuple[Tensor, ...]:
        z = torch.randn(n, Z_DIM, generator=g)
        return (z, torch.randint(N_CLASSES, (n,), generator=g)) if conditional else (z,)

    t0 = time.perf_counter()
    loss_d = loss_g = torch.zeros(())
    for step in range(steps):
        idx = torch.randint(len(real_x), (batch,), generator=g)
        xr, yr = real_x[idx], real_y[idx]
        args = g_args(batch)
        yf = args[1] if conditional else yr
        fake = gen(*args)
        loss_d = F.softplus(-disc(d_in(xr, yr))).mean() + F.softplus(disc(d_in(fake.detach(), yf))).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = F.softplus(-disc(d_in(fake, yf))).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        if step % 500 == 0 or step == steps - 1:
            log.info("zoo.train %s step=%d loss_d=%.3f loss_g=%.3f", name, step, loss_d.item(), loss_g.item())
    recalibrate_batchnorm(gen, [g_args(256) for _ in range(8)])
    return TrainResult(
        steps=steps,
        seconds=round(time.perf_counter() - t0, 1),
        batch_size=batch,
        method="adversarial, non-saturating loss, DCGAN discriminator"
        + (" with one-hot label channels" if conditional else "")
        + (" and a minibatch-std channel" if name == "stylegan_lite" else "")
        + ", Adam(2e-4, betas=(0.5, 0.999))",
        data_source=ds.DIGITS_SOURCE,
        final_losses={"d": round(loss_d.item(), 4), "g": round(loss_g.item(), 4)},
    )


def make_pair(name: str, hr: Tensor) -> tuple[Tensor, Tensor]:
    """``(input, target)`` for an image family from clean crops ``hr [N, 3, H, W]`` in [-1, 1].

    ``resnet_i2i``: photo -> graded style; ``unet_i2i``: gray -> photo; ``srresnet``: bicubic /2 -> photo.
    """
    if name == "resnet_i2i":
        return hr, ds.graded_style(hr)
    if name == "unet_i2i":
        return ds.to_gray3(hr), hr
    if name == "srresnet":
        return ds.bicubic_down(hr), hr
    raise KeyError(f"{name!r} is not an image-to-image zoo family")


def train_supervised(
    name: str,
    gen: nn.Module,
    regions: list[Tensor],
    steps: int,
    seed: int,
    batch: int = 16,
    lr: float = 2e-3,
    crop: int = 64,
    beta1: float = 0.5,
) -> TrainResult:
    """L1-train an image generator on random ``crop x crop`` (target-size) crops of ``regions``, in place.

    ``regions`` are ``[3, H, W]`` images in [-1, 1]; inputs/targets come from :func:`make_pair`.
    """
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(gen.parameters(), lr=lr, betas=(beta1, 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    gen.train()
    t0 = time.perf_counter()
    loss = torch.zeros(())
    for step in range(steps):
        x, y = make_pair(name, ds.random_crops(regions, batch, crop, g))
        loss = F.l1_loss(gen(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0 or step == steps - 1:
            log.info("zoo.train %s step=%d l1=%.4f", name, step, loss.item())
    gen.eval()  # BatchNorm keeps its running averages: the lr has decayed to ~0 by the end
    return TrainResult(
        steps=steps,
        seconds=round(time.perf_counter() - t0, 1),
        batch_size=batch,
        method=f"supervised L1 on random {crop}x{crop} target crops (+ flips), "
        f"Adam({lr}, betas=({beta1}, 0.999)), "
        "cosine decay, no adversarial term",
        data_source=ds.PHOTOS_SOURCE,
        final_losses={"l1": round(loss.item(), 4)},
    )
