"""Controllable generation (Song et al. 2021, §5 and App. I.2): imputation / inpainting of known
coordinates and colourisation-style linear constraints, for vectors and images, with any sampler.

A constraint observes x_0 through an orthogonal projector P (P² = P = Pᵀ): P x_0 = ``known``. Masks
(P = diag(m), m ∈ {0, 1}), linear measurements A x_0 = y (P = A⁺A) and grey levels of colour images
(P = the per-pixel channel mean) are all of this form. Under the forward kernel x_t = α x_0 + σ z the
observed part P x_t = α known + σ P z is known in law at every t. The replacement method integrates
the unobserved part u = (I - P) x with the model's score evaluated at a forward-perturbed copy of the
data in place of the observed part, and drives the observed part by the exact score of its own kernel:

    s_c(x, t) = (I - P) ∇log p_t(x̃, t) - P (x - α(t) known) / σ(t)²,
    x̃ = (I - P) x + α(t) known + σ(t) P z.

``constrained_score_fn`` wraps a score function this way, so every sampler in ``solvers`` becomes a
controllable one, its predictor and corrector updates unchanged. ``impute`` starts the observed part at
the time-T marginal α(T) known + σ(T) P z (score_sde starts from the clean known pixels, which the forward kernel never produces at t = T);
the second term then keeps it a forward-perturbed copy of the data at every step (it is the reverse
process of p_0t(P x | known), exact in law). Stochastic samplers (PC and the others) evaluate the model
on a fresh z at each call, i.e. the known coordinates are replaced by a fresh draw of p_0t(· | data)
after each predictor and corrector step, as in score_sde's ``pc_inpainter``. Deterministic samplers
(the probability-flow ODE, the fast solvers) use the state's own observed part, x̃ = x, which the
probability-flow ODE carries exactly along α(t) known + σ(t) P z for the z it started with, so the ODE
for u is smooth and adaptive solvers work. ``impute`` returns (I - P) x + known.

The replacement method is an approximation: u is driven by ∇log p_t(u, P x_t) at one noisy copy of the
observation, not by the conditional score ∇log p_t(u | P x_0) (Lugmayr et al. 2022, "RePaint", discuss
the bias). A corrector (PC with Langevin steps) pulls u towards the conditional; the probability-flow
ODE has none and stays biased on coordinates correlated with the observation (the README gives the
measured figures, ``tests/test_controllable.py`` checks them against analytic conditionals).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch

import solvers
from sde_diffusion.core.sde_lib import LinearSDE
from sde_diffusion.core.types import ScoreFn
from sde_diffusion.core.utils import append_dims, batch_time, check_finite


@dataclass(frozen=True)
class Constraint:
    """P x_0 = ``known`` for the orthogonal projector ``project`` (v ↦ P v on (B, ...) tensors);
    ``known`` has the shape of the samples, (B, ...)."""

    project: Callable[[torch.Tensor], torch.Tensor]
    known: torch.Tensor

    def complement(self, x: torch.Tensor) -> torch.Tensor:
        """(I - P) x, the unobserved part."""
        return x - self.project(x)


def mask_constraint(data: torch.Tensor, mask: torch.Tensor) -> Constraint:
    """Imputation / inpainting: the entries of ``data`` where ``mask`` is 1 are known. ``mask`` holds 0s
    and 1s (or booleans) and broadcasts against ``data`` (e.g. (d,) for vectors, (1, H, W) for images)."""
    check_finite(data, "data")
    m = torch.as_tensor(mask, device=data.device)
    if not bool(((m == 0) | (m == 1)).all()):
        raise ValueError("mask must hold only 0s and 1s (or booleans)")
    try:
        m = torch.broadcast_to(m.to(data.dtype), data.shape)
    except RuntimeError:
        raise ValueError(f"mask of shape {tuple(m.shape)} does not broadcast to data of shape {tuple(data.shape)}") from None
    return Constraint(lambda v: m * v, m * data)


def linear_constraint(A: torch.Tensor, y: torch.Tensor, shape: tuple[int, ...]) -> Constraint:
    """Linear measurements A x_0 = y of samples of ``shape`` (B, ...), flattened to d entries: ``A`` is
    (m, d) of full row rank m ≤ d, ``y`` is (B, m) or (m,) (shared). P = A⁺A and known = A⁺ y with the
    pseudo-inverse A⁺ = Aᵀ(AAᵀ)⁻¹, computed once in float64."""
    check_finite(A, "A")
    check_finite(y, "y")
    d = int(torch.Size(shape[1:]).numel())
    if A.ndim != 2 or A.shape[1] != d or A.shape[0] > d:
        raise ValueError(f"A must have shape (m, {d}) with m <= {d} for samples of shape {tuple(shape)}, got {tuple(A.shape)}")
    if y.shape not in ((A.shape[0],), (shape[0], A.shape[0])):
        raise ValueError(f"y must have shape ({A.shape[0]},) or ({shape[0]}, {A.shape[0]}), got {tuple(y.shape)}")
    A64 = A.to(torch.float64)
    if int(torch.linalg.matrix_rank(A64)) < A.shape[0]:
        raise ValueError(f"A must have full row rank {A.shape[0]}, got rank {int(torch.linalg.matrix_rank(A64))}")
    pinv = torch.linalg.pinv(A64)  # (d, m)
    P = pinv @ A64
    known = (y.to(torch.float64) @ pinv.T).to(y.dtype).expand(shape[0], d).reshape(shape)

    def project(v: torch.Tensor) -> torch.Tensor:
        return (v.reshape(v.shape[0], d) @ P.to(v.dtype)).reshape(v.shape)  # P is symmetric

    return Constraint(project, known)


def grayscale_constraint(gray: torch.Tensor, num_channels: int) -> Constraint:
    """Colourisation: images (B, C, H, W) whose per-pixel channel mean is ``gray`` (B, 1, H, W), i.e. the
    projection onto (1, ..., 1)/√C in channel space (score_sde's ``pc_colorizer`` observes the same
    direction through its orthonormal decoupling matrix)."""
    check_finite(gray, "gray")
    if gray.ndim != 4 or gray.shape[1] != 1:
        raise ValueError(f"gray must have shape (B, 1, H, W), got {tuple(gray.shape)}")
    if not isinstance(num_channels, int) or num_channels < 2:
        raise ValueError(f"num_channels must be an integer >= 2, got {num_channels!r}")
    shape = (gray.shape[0], num_channels, *gray.shape[2:])
    return Constraint(lambda v: v.mean(dim=1, keepdim=True).expand_as(v), gray.expand(shape))


def constrained_score_fn(
    sde: LinearSDE,
    score_fn: ScoreFn,
    constraint: Constraint,
    noise: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> ScoreFn:
    """s_c(x, t) = (I - P) s(x̃, t) - P (x - α(t) known) / σ(t)² (module docstring), with the observed
    part of x̃ a fresh forward-perturbed copy α(t) known + σ(t) P z, z = ``noise(x)``, or, when ``noise``
    is None, the observed part of x itself (x̃ = (I - P) x + P x)."""
    known = constraint.known

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = batch_time(t, x)
        mean, std = sde.marginal_prob(known.to(x.dtype), t)
        std = append_dims(std, x.ndim)
        x_model = x if noise is None else constraint.complement(x) + mean + std * constraint.project(noise(x))
        return constraint.complement(score_fn(x_model, t)) - constraint.project(x - mean) / std**2

    return score


def impute(
    sde: LinearSDE,
    score_fn: ScoreFn,
    constraint: Constraint,
    method: str,
    *,
    generator: Optional[torch.Generator] = None,
    **sample_kwargs: Any,
) -> tuple[torch.Tensor, int]:
    """Samples of p_0(x | P x_0 = known) by the replacement method with ``solvers.sample(..., method)``:
    ``(x, nfe)`` with x = (I - P) x_sampled + known (exact on the observed part). The observed part starts
    at the time-T marginal α(T) known + σ(T) P z; stochastic methods evaluate the model on a fresh
    forward-perturbed copy of the data at each call, deterministic ones on the state's own (module
    docstring). ``sample_kwargs`` go to ``solvers.sample`` (steps, eps, method options, ...)."""
    known = constraint.known
    prior = sde.prior_sampling(tuple(known.shape), generator=generator, device=known.device, dtype=known.dtype)
    mean, std = sde.marginal_prob(known, sde.T)
    x_T = constraint.complement(prior) + mean + append_dims(std, known.ndim) / sde.prior_std * constraint.project(prior)

    def noise(x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    options = {k: v for k, v in sample_kwargs.items() if k in solvers.METHODS.get(method).options}
    deterministic = solvers.METHODS.get(method).is_deterministic(options)
    score = constrained_score_fn(sde, score_fn, constraint, None if deterministic else noise)
    x, nfe = solvers.sample(sde, score, x_T.shape, method, x_T=x_T, generator=generator, **sample_kwargs)
    return constraint.complement(x) + known.to(x.dtype), nfe
