"""Training steps/s and sampling NFE/s of the toolkit's U-Net against a diffusers ``UNet2DModel`` with
the DDPM CIFAR-10 layout, at equal batch, in one run.

    python -m benchmarks.bench_models [--batch 8] [--repeats 5] [--threads 2] [--device cpu]
                                      [--precision fp32|bf16] [--channels-last] [--compile]

Networks (32×32 RGB):
  ours DDPM++          ``cifar10_model_group()``: score_sde's DDPM++ CIFAR-10 network (nf 128,
                       ch_mult (1, 2, 2, 2), 4 residual blocks per level, attention at 16×16)
  ours DDPM layout     the same U-Net with DDPM's 2 residual blocks per level
  diffusers DDPM       ``UNet2DModel`` as google/ddpm-cifar10-32 (128, 256, 256, 256 channels,
                       2 layers per block, attention at 16×16)

A training step is one DSM loss (times, noise, forward, loss), backward and Adam step; the toolkit's
networks through ``losses.get_loss_fn``, the diffusers one through the ε-prediction loss of its own
training script. A sampling NFE is one score evaluation of the batch under ``torch.no_grad``, through
``models.get_score_fn`` and ``interop.from_diffusers``. The networks take turns in every repeat (so
that a change in machine load hits all of them) and the fastest repeat is reported (the least
disturbed by other processes, as ``timeit`` does), after one warm-up. "per Mparam" multiplies a rate by the parameter count: the work rate per parameter, whose
ratio to diffusers' is the last column (> 1: faster per parameter).
"""
from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch
from torch import nn

from sde_diffusion.app.config import cifar10_model_group, get_default_config
from sde_diffusion.core.sde_lib import get_sde
from sde_diffusion.interop import from_diffusers
from sde_diffusion.models import create_model, get_score_fn
from sde_diffusion.training import losses
from sde_diffusion.training.precision import autocast

#: google/ddpm-cifar10-32's UNet2DModel configuration.
DDPM_CIFAR10 = dict(
    sample_size=32, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, norm_eps=1e-6, dropout=0.1,
)

Step = Callable[[], None]


class Contender:
    """A network with its training step and its sampling NFE (each a closure on fixed inputs)."""

    def __init__(self, name: str, model: nn.Module, train_loss: Callable[[torch.Tensor], torch.Tensor],
                 score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], batch: torch.Tensor, args: argparse.Namespace) -> None:
        self.name, self.model, self.params = name, model, sum(p.numel() for p in model.parameters())
        self.optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
        self.train_loss, self.score_fn, self.batch, self.args = train_loss, score_fn, batch, args
        self.t = torch.full((batch.shape[0],), 0.5, device=batch.device)
        self.train_times: list[float] = []
        self.sample_times: list[float] = []

    def train_step(self) -> None:
        self.model.train()
        with autocast(self.args.precision, self.batch.device):
            loss = self.train_loss(self.batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def nfe(self) -> None:
        self.model.eval()
        with torch.no_grad(), autocast(self.args.precision, self.batch.device):
            self.score_fn(self.batch, self.t)


def timed(fn: Step, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def prepare(model: nn.Module, args: argparse.Namespace, device: torch.device) -> nn.Module:
    model = model.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def contenders(args: argparse.Namespace, device: torch.device) -> list[Contender]:
    import diffusers

    torch.manual_seed(0)
    batch = torch.rand(args.batch, 3, 32, 32, device=device) * 2 - 1
    if args.channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    sde = get_sde("vp")
    training = get_default_config().training
    training.loss = "dsm"
    dsm = losses.get_loss_fn(sde, training)
    out = []
    for name, layout in (("ours DDPM++", {}), ("ours DDPM layout", {"num_res_blocks": 2})):
        model = prepare(create_model(cifar10_model_group(**layout)), args, device)
        network = torch.compile(model) if args.compile else model
        out.append(Contender(name, model, lambda x, m=network: dsm(m, x), get_score_fn(sde, network), batch, args))

    unet = prepare(diffusers.UNet2DModel(**DDPM_CIFAR10), args, device)
    network = torch.compile(unet) if args.compile else unet
    chain = diffusers.DDPMScheduler(num_train_timesteps=1000)
    _, score_fn = from_diffusers(unet, chain)
    score_fn.model = network
    unet.requires_grad_(True)  # from_diffusers freezes the weights for sampling; this one also trains
    abar = chain.alphas_cumprod.to(device)

    def eps_loss(x: torch.Tensor) -> torch.Tensor:
        k = torch.randint(0, 1000, (x.shape[0],), device=device)
        noise = torch.randn_like(x)
        a = abar[k].sqrt()[:, None, None, None]
        x_t = a * x + (1 - a**2).sqrt() * noise
        return ((network(x_t, k).sample - noise) ** 2).mean()

    out.append(Contender("diffusers DDPM", unet, eps_loss, score_fn, batch, args))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    runs = contenders(args, device)
    for c in runs:  # warm-up (and compilation)
        c.train_step()
        c.nfe()
    for _ in range(args.repeats):
        for c in runs:
            c.train_times.append(timed(c.train_step, device))
            c.sample_times.append(timed(c.nfe, device))
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()}, {args.threads} threads"
    print(f"# bench_models: batch {args.batch}, 32x32x3, {args.precision}, channels_last={args.channels_last}, "
          f"compile={args.compile}, {device} ({hardware}), torch {torch.__version__}, best of {args.repeats}")
    print("| network | params (M) | train steps/s | NFE/s | train steps/s per Mparam | NFE/s per Mparam | ratio to diffusers per Mparam (train, NFE) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    peer = runs[-1]
    peer_train = peer.params / 1e6 / min(peer.train_times)
    peer_nfe = peer.params / 1e6 / min(peer.sample_times)
    for c in runs:
        train_rate, nfe_rate = 1 / min(c.train_times), 1 / min(c.sample_times)
        mp = c.params / 1e6
        print(f"| {c.name} | {mp:.1f} | {train_rate:.3f} | {nfe_rate:.2f} | {train_rate * mp:.2f} | {nfe_rate * mp:.1f} |"
              f" {train_rate * mp / peer_train:.2f}, {nfe_rate * mp / peer_nfe:.2f} |")


if __name__ == "__main__":
    main()
