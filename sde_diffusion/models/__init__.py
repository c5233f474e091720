"""Score networks: a registry by name, the residual MLP, the DDPM++-style U-Net, and
``get_score_fn``, which turns any of them into the ``score_fn(x, t)`` samplers and losses take."""
from .embeddings import EMBEDDINGS, GaussianFourierEmbedding, SinusoidalEmbedding, TimeEmbedding
from .mlp import ScoreMLP
from .unet import UNet
from .utils import MODELS, ScoreNetwork, create_model, get_score_fn

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
