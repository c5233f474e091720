"""CIFAR-10 with the VP SDE (β from 0.1 to 20) after score_sde's DDPM++ (continuous) settings
(``get_cifar10_config``): the U-Net with nf 128, ch_mult (1, 2, 2, 2), 4 residual blocks per level,
attention at 16×16, dropout 0.1; batch 128, Adam lr 2e-4. Set ``data.path`` to CIFAR-10's
python-version directory (``cifar-10-batches-py``), or train on a folder of 32×32 images with
``data.dataset=folder``. On a GPU, ``training.precision=bf16``, ``training.channels_last=True`` and
``training.compile=True`` are the fast settings."""
from sde_diffusion.app.config import get_cifar10_config


def get_config():
    return get_cifar10_config("vp")
