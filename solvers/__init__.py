"""Samplers for score-based models, chosen by name: ``sample(sde, score_fn, shape, method)``.

Every method is a declared ``Method`` spec (``solvers.spec``) registered once; ``available()`` lists
them with their family, default steps, options and capabilities."""
from . import adaptive, ddpm, dpm_solver, edm, langevin, ode, pc, restart, unipc  # noqa: F401  (register the methods)
from .api import available, get_sampler, sample
from .common import NonFiniteScoreError
from .ode import encode
from .optimize import optimize_schedule
from .spec import METHODS, Method, register_method

#: The method to use when you do not want to choose: (name, options). UniPC-3 with data prediction on
#: the time-quadratic grid, chosen from the sweep in the README ("Best by default"); its options are
#: the method's own defaults.
RECOMMENDED: tuple[str, dict] = ("unipc", {})

__all__ = ["RECOMMENDED", "optimize_schedule", "sample", "available", "get_sampler", "encode", "METHODS", "Method", "register_method", "NonFiniteScoreError"]
