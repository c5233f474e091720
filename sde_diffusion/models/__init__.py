"""Score networks: a registry by name, the residual MLP, the DDPM++-style U-Net, and
``get_score_fn``, which turns any of them into the ``score_fn(x, t)`` samplers and losses take."""
from sde_diffusion.models.embeddings import EMBEDDINGS, GaussianFourierEmbedding, SinusoidalEmbedding, TimeEmbedding
from sde_diffusion.models.mlp import ScoreMLP
from sde_diffusion.models.unet import UNet
from sde_diffusion.models.utils import MODELS, ScoreNetwork, create_model, get_score_fn

__all__ = [
    "MODELS",
    "EMBEDDINGS",
    "ScoreNetwork",
    "ScoreMLP",
    "UNet",
    "GaussianFourierEmbedding",
    "SinusoidalEmbedding",
    "TimeEmbedding",
    "create_model",
    "get_score_fn",
]
