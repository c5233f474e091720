"""Forward+backward time of the score networks per training batch (CPU or GPU).

    python -m benchmarks.bench_models [--threads 1] [--batch 128] [--repeats 10] [--device cpu]

Times one DSM training step (``losses.get_loss_fn`` → backward → Adam step) for the digits U-Net
configurations and the 2-D MLP; prints parameter counts and the median of ``--repeats`` steps after
two warm-up steps.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from ml_collections import ConfigDict

from sde_diffusion.core.sde_lib import get_sde
from sde_diffusion.models import create_model
from sde_diffusion.training.losses import get_loss_fn

CONFIGS = {
    "unet nf32 (1,2) rb1": dict(name="unet", image_size=8, nf=32, ch_mult=(1, 2), num_res_blocks=1, dropout=0.1),
    "unet nf32 (1,2) rb2": dict(name="unet", image_size=8, nf=32, ch_mult=(1, 2), num_res_blocks=2, dropout=0.1),
    "unet nf64 (1,2) rb1": dict(name="unet", image_size=8, nf=64, ch_mult=(1, 2), num_res_blocks=1, dropout=0.1),
    "unet nf64 (1,2) rb2": dict(name="unet", image_size=8, nf=64, ch_mult=(1, 2), num_res_blocks=2, dropout=0.1),
    "unet 32x32 nf64 (1,2,2,2) rb2 attn16": dict(
        name="unet", image_size=32, num_channels=3, nf=64, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,)
    ),
    "mlp 2-D hidden256 x3": dict(name="mlp", dim=2, hidden=256, num_blocks=3),
}


def step_time(model_config: dict, batch: int, repeats: int, device: str) -> tuple[int, float]:
    model = create_model(ConfigDict(model_config)).to(device)
    shape = (batch, 2) if model_config["name"] == "mlp" else (batch, model.num_channels, model.image_size, model.image_size)
    x = torch.randn(shape, device=device)
    loss_fn = get_loss_fn(get_sde("vp"), ConfigDict(dict(loss="dsm", weighting="sigma2", reduce="mean", eps=1e-5)))
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    times = []
    for i in range(repeats + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model, x).backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return sum(p.numel() for p in model.parameters()), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", default=None, help="substring of the configuration names to run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for name, cfg in CONFIGS.items():
        if args.only and args.only not in name:
            continue
        batch = args.batch if cfg.get("image_size", 8) == 8 else min(args.batch, 32)
        n_params, t = step_time(cfg, batch, args.repeats, args.device)
        print(f"{name:40s} params {n_params / 1e6:6.2f} M  batch {batch:4d}  step {1000 * t:8.1f} ms")


if __name__ == "__main__":
    main()
