"""The one entry point: ``sample(sde, score_fn, shape, method, ...) -> (x, nfe)``."""
from __future__ import annotations

from typing import Any, Optional

import torch

from sde_diffusion.core.sde_lib import LinearSDE
from sde_diffusion.core.utils import check_finite, check_positive_int

from .common import CountedScore, ScoreFn
from .registry import METHODS

#: Fields of ``config.sampling`` that are not method options.
GENERAL_FIELDS = ("method", "steps", "eps")


def sample(
    sde: LinearSDE,
    score_fn: ScoreFn,
    shape: tuple[int, ...],
    method: str,
    *,
    steps: Optional[int] = None,
    eps: Optional[float] = None,
    x_T: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    device: Optional[torch.device | str] = None,
    progress: bool = False,
    return_info: bool = False,
    **options: Any,
):
    """Draw samples by integrating from the prior at t = T down to ``eps`` with ``method``.

    Args:
      sde: the forward SDE the score belongs to.
      score_fn: ``score_fn(x, t) -> ∇log p_t(x)`` with ``t`` a ``(B,)`` tensor.
      shape: ``(B, ...)`` of the samples (ignored when ``x_T`` is given).
      method: a name from ``solvers.available()``.
      steps: number of steps; None uses the method's default.
      eps: final time; None uses the SDE's default (1e-3 VP / sub-VP, 1e-5 VE).
      x_T: initial latent (default: a draw from the prior with ``generator``).
      generator: ``torch.Generator`` for every random draw.
      progress: show a tqdm progress bar.
      return_info: also return the method's statistics dict (accepted / rejected steps, ...).
      **options: method options (see ``solvers.available()``); unknown names raise ``ValueError``.

    Returns:
      ``(x, nfe)`` where ``nfe`` counts every ``score_fn`` call, or ``(x, nfe, info)``.
    """
    spec = METHODS.get(method)
    opts = spec.resolve(options)
    if steps is not None:
        check_positive_int(steps, "steps")
    eps = sde.default_eps if eps is None else float(eps)
    if not 0.0 <= eps < sde.T:
        raise ValueError(f"eps must lie in [0, {sde.T}), got {eps}")
    if x_T is None:
        x_T = sde.prior_sampling(tuple(shape), generator=generator, device=device)
    else:
        check_finite(x_T, "x_T")
        x_T = x_T.to(device) if device is not None else x_T
    counted = CountedScore(score_fn)
    with torch.no_grad():
        out = spec.fn(sde, counted, x_T, steps=steps, eps=eps, generator=generator, progress=progress, **opts)
    x, info = out if isinstance(out, tuple) else (out, {})
    return (x, counted.nfe, info) if return_info else (x, counted.nfe)


def available() -> dict[str, dict[str, Any]]:
    """Every method with its description, determinism and options (with defaults)."""
    return {
        name: {"description": m.description, "deterministic": m.deterministic, "options": dict(m.options)}
        for name, m in ((n, METHODS.get(n)) for n in METHODS.names())
    }


def get_sampler(sampling_config: Any, sde: LinearSDE):
    """The sampler described by ``config.sampling``: ``sampler(score_fn, shape, **kw) -> (x, nfe)``.

    ``config.sampling.method`` names the method, ``steps`` and ``eps`` are shared, and the group
    ``config.sampling.<method>`` (if present) holds that method's options.
    """
    method = sampling_config.method
    spec = METHODS.get(method)
    group = sampling_config.get(method, None) if hasattr(sampling_config, "get") else getattr(sampling_config, method, None)
    options = dict(group.items()) if group is not None else {}
    spec.resolve(options)  # fail now, not at the first call
    steps = sampling_config.get("steps", None) if hasattr(sampling_config, "get") else getattr(sampling_config, "steps", None)
    eps = sampling_config.get("eps", None) if hasattr(sampling_config, "get") else getattr(sampling_config, "eps", None)

    def sampler(score_fn: ScoreFn, shape: tuple[int, ...], **kwargs: Any):
        merged = {"steps": steps, "eps": eps, **options, **kwargs}
        return sample(sde, score_fn, shape, method, **merged)

    return sampler
