"""Samplers for score-based models, chosen by name: ``sample(sde, score_fn, shape, method)``."""
from . import adaptive, classic, ddpm, dpm_solver, edm, langevin, ode, pc, unipc  # noqa: F401  (register the classic methods)  # noqa: F401  (register the fast solvers)
from .api import available, get_sampler, sample
from .ode import encode
from .registry import METHODS, register_method

__all__ = ["sample", "available", "get_sampler", "encode", "METHODS", "register_method"]
