"""The model registry, ``create_model`` and ``get_score_fn``: one convention for every SDE.

A network is a module ``forward(x_in, c_noise)`` (``forward(x_in, c_noise, labels)`` when
class-conditional) that declares what it predicts
(``parameterization``: ``noise`` ε̂, ``score`` ŝ or ``data`` x̂_0) and the data scale ``sigma_data``.
``get_score_fn`` wraps it as the ``score_fn(x, t)`` every sampler and loss takes. With
α = α(t), σ = σ(t) of the SDE's kernel x_t = α x_0 + σ ε:

    input        x_in    = c_in x,   c_in = 1 / √(α² σ_data² + σ²)
    noise level  c_noise = log(σ / α) = -λ(t)
    output       score   = PARAMETERIZATIONS[parameterization].to_score(F(x_in, c_noise), x, α, σ)

* c_in makes the network input unit-variance for data of RMS σ_data under every SDE (Karras et al.
  2022, "EDM", Table 1, with the VP/sub-VP scaling α folded in): VE inputs of scale σ_max = 50 and VP
  inputs of scale 1 look alike to the network.
* c_noise depends on t only through the signal-to-noise ratio, so the network is conditioned on the
  noise level, not on the SDE's clock: the same code (and the same conditioning range) serves VP,
  sub-VP, cosine VP and VE, and two SDEs with equal α/σ at some t give the network the same input.
* ``noise`` is score_sde's VE "scale by sigma" (score = -ε̂/σ) and its VP ε-model alike, so no
  per-SDE branch remains; ``data`` is Tweedie inverted, score = (α x̂_0 - x)/σ².
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn

from sde_diffusion.core.parameterization import PARAMETERIZATIONS
from sde_diffusion.core.registry import Registry
from sde_diffusion.core.sde_lib import LinearSDE
from sde_diffusion.core.types import ScoreFn
from sde_diffusion.core.utils import append_dims, batch_time

MODELS: Registry[type[ScoreNetwork]] = Registry("model")


class ScoreNetwork(nn.Module):
    """Base class of the networks: ``forward(x_in, c_noise)`` maps the preconditioned input and the
    ``(B,)`` noise levels to an output of x_in's shape, of kind ``parameterization``; the base class
    stores and validates the two fields ``get_score_fn`` reads."""

    def __init__(self, parameterization: str = "noise", sigma_data: float = 0.5) -> None:
        super().__init__()
        PARAMETERIZATIONS.get(parameterization)  # unknown names raise ValueError listing the known
        if not (isinstance(sigma_data, (int, float)) and math.isfinite(sigma_data) and sigma_data > 0):
            raise ValueError(f"sigma_data must be a positive number, got {sigma_data!r}")
        self.parameterization = parameterization
        self.sigma_data = float(sigma_data)


def check_dropout(dropout: float) -> None:
    if not (isinstance(dropout, (int, float)) and math.isfinite(dropout) and 0.0 <= dropout < 1.0):
        raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")


def create_model(model_config: Any) -> ScoreNetwork:
    """Build the network named ``model_config.name`` from the remaining fields, e.g.
    ``{'name': 'unet', 'nf': 64, 'ch_mult': (1, 2), 'parameterization': 'noise', 'sigma_data': 0.5}``."""
    params = dict(model_config.items()) if hasattr(model_config, "items") else dict(vars(model_config))
    name = params.pop("name", None)
    if name is None:
        raise ValueError(f"model config needs a 'name' field; known models: {', '.join(MODELS.names())}")
    cls = MODELS.get(name)
    try:
        return cls(**params)
    except TypeError as err:
        raise ValueError(f"bad arguments for model {name!r}: {err}") from None


def network_inputs(
    sde: LinearSDE, x: torch.Tensor, t: torch.Tensor, sigma_data: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(c_in x, c_noise, α, σ)`` at time t, in x's dtype, with c_in and c_noise of the module docstring."""
    t = batch_time(t, x)
    log_alpha, sigma = sde.log_alpha(t), sde.sigma(t)
    alpha = torch.exp(log_alpha)
    c_in = torch.rsqrt(alpha**2 * sigma_data**2 + sigma**2).to(x.dtype)
    c_noise = (torch.log(sigma) - log_alpha).to(x.dtype)
    return append_dims(c_in, x.ndim) * x, c_noise, alpha.to(x.dtype), sigma.to(x.dtype)


def get_score_fn(sde: LinearSDE, model: nn.Module) -> ScoreFn:
    """``score_fn(x, t)`` of ``model`` under ``sde`` with the preconditioning of the module docstring.
    It also takes an optional third argument, the (B,) labels of a class-conditional network
    (``num_classes`` > 0; ``NULL_LABEL`` = -1 or None for the unconditional score): ``score_fn(x, t, labels)``
    is then the class-conditional score function of ``sde_diffusion.conditioning.guidance``.

    Gradients are not touched: training calls it with grad, samplers under ``torch.no_grad``.
    """
    to_score = PARAMETERIZATIONS.get(model.parameterization).to_score

    def score_fn(x: torch.Tensor, t: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        x_in, c_noise, alpha, sigma = network_inputs(sde, x, t, model.sigma_data)
        out = model(x_in, c_noise) if labels is None else model(x_in, c_noise, labels)
        return to_score(out, x, alpha, sigma)

    return score_fn
