"""Samplers for score-based models, chosen by name: ``sample(sde, score_fn, shape, method)``."""
from . import classic  # noqa: F401  (registers the methods)
from .api import available, get_sampler, sample
from .registry import METHODS, register_method

__all__ = ["sample", "available", "get_sampler", "METHODS", "register_method"]
