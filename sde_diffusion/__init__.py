"""sde-diffusion: score-based generative modelling with SDEs."""
from sde_diffusion.core.mixtures import GaussianMixture
from sde_diffusion.core.parameterization import convert
from sde_diffusion.core.sde_lib import (
    SDE,
    SDES,
    VESDE,
    VPSDE,
    CosineVPSDE,
    LinearSDE,
    ReverseSDE,
    SubVPSDE,
    get_sde,
    sde_from_config,
)

__all__ = [
    "SDE",
    "LinearSDE",
    "ReverseSDE",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "CosineVPSDE",
    "SDES",
    "get_sde",
    "sde_from_config",
    "GaussianMixture",
    "convert",
]
