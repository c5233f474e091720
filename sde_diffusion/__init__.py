"""sde-diffusion: score-based generative modelling with SDEs."""
from .mixtures import GaussianMixture
from .parameterization import convert
from .sde_lib import SDE, SDES, CosineVPSDE, LinearSDE, ReverseSDE, SubVPSDE, VESDE, VPSDE, get_sde, sde_from_config

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
