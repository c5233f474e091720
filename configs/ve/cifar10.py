"""CIFAR-10 with the VE SDE (σ from 0.01 to 50): the network, data and training settings of
``configs/vp/cifar10.py`` (score_sde's DDPM++ continuous, ``get_cifar10_config``)."""
from sde_diffusion.app.config import get_cifar10_config


def get_config():
    return get_cifar10_config("ve")
