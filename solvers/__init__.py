"""Samplers for score-based models, chosen by name: ``sample(sde, score_fn, shape, method)``.

Every method is a declared ``Method`` spec (``solvers.spec``) registered once; ``available()`` lists
them with their family, default steps, options and capabilities."""
from . import adaptive, ddpm, dpm_solver, edm, langevin, ode, pc, unipc  # noqa: F401  (register the methods)
from .api import available, get_sampler, sample
from .common import NonFiniteScoreError
from .ode import encode
from .spec import METHODS, Method, register_method

__all__ = ["sample", "available", "get_sampler", "encode", "METHODS", "Method", "register_method", "NonFiniteScoreError"]
