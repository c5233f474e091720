"""Exact likelihoods through the probability-flow ODE, and bits per dimension for discrete data.

The PF-ODE dx/dt = f̃(x, t) = f(t) x - ½ g(t)² ∇log p_t(x) (Song et al. 2021, eq. 13) is a
continuous normalising flow, so by the instantaneous change of variables (Chen et al. 2018,
thm. 1; Song et al. 2021, eq. 39)

    log p_eps(x(eps)) = log p_T(x(T)) + ∫_eps^T ∇·f̃(x(t), t) dt.

``log_likelihood`` integrates the state [x, Δlog p] from eps to T with torchdiffeq. The divergence is
exact (a sum of d vector-Jacobian products, for small d) or Hutchinson–Skilling's estimate
E_v[vᵀ (∂f̃/∂x) v] with probes v drawn once and held fixed along the trajectory (FFJORD, Grathwohl
et al. 2019, eq. 7: fresh probes per call would make the right-hand side random and stop an adaptive
solver from converging), averaged over ``n_probes``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Optional

import torch
from torchdiffeq import odeint

from sde_diffusion.core.registry import Registry
from sde_diffusion.core.sde_lib import LinearSDE
from sde_diffusion.core.types import ScoreFn
from sde_diffusion.core.utils import check_finite, check_positive_int, sum_except_batch
from solvers.common import GuardedScore
from solvers.ode import ADAPTIVE_SOLVERS

#: ``divergence(out, x) -> (B,)``: the divergence of ``out`` (a function of ``x``) w.r.t. ``x``.
Divergence = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``probe_sampler(shape, generator, like) -> probes`` with zero mean and identity covariance.
ProbeSampler = Callable[[tuple[int, ...], Optional[torch.Generator], torch.Tensor], torch.Tensor]

PROBES: Registry[ProbeSampler] = Registry("Hutchinson probe")
TRACES: Registry[Callable[..., Divergence]] = Registry("trace estimator")


@PROBES.register("rademacher")
def rademacher(shape: tuple[int, ...], generator: Optional[torch.Generator], like: torch.Tensor) -> torch.Tensor:
    """Independent ±1 entries (the lowest-variance choice, Hutchinson 1990)."""
    bits = torch.randint(0, 2, shape, generator=generator, device=like.device)
    return (2 * bits - 1).to(like.dtype)


@PROBES.register("gaussian")
def gaussian(shape: tuple[int, ...], generator: Optional[torch.Generator], like: torch.Tensor) -> torch.Tensor:
    """Independent standard normal entries (Skilling 1989)."""
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


@TRACES.register("exact")
def exact_trace(x: torch.Tensor, **_: object) -> Divergence:
    """∇·out = Σ_j ∂out_j/∂x_j from d vector–Jacobian products e_jᵀ J (one backward pass each).
    Samples must not interact inside the score (true of per-sample networks)."""

    def divergence(out: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        flat = out.reshape(out.shape[0], -1)
        diag = [
            torch.autograd.grad(flat[:, j].sum(), inp, retain_graph=True)[0].reshape(flat.shape)[:, j]
            for j in range(flat.shape[1])
        ]
        return torch.stack(diag, dim=1).sum(dim=1)

    return divergence


@TRACES.register("hutchinson")
def hutchinson_trace(
    x: torch.Tensor, *, n_probes: int, probe: str, generator: Optional[torch.Generator], **_: object
) -> Divergence:
    """∇·out ≈ (1/K) Σ_k v_kᵀ J v_k with K = ``n_probes`` probes drawn now and reused at every call,
    each term one vector–Jacobian product."""
    probes = PROBES.get(probe)((n_probes, *x.shape), generator, x)

    def divergence(out: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        terms = [
            sum_except_batch(torch.autograd.grad(out, inp, grad_outputs=v, retain_graph=True)[0] * v) for v in probes
        ]
        return torch.stack(terms).mean(dim=0)

    return divergence


def log_likelihood(
    sde: LinearSDE,
    score_fn: ScoreFn,
    x: torch.Tensor,
    *,
    trace: str = "exact",
    n_probes: int = 1,
    probe: str = "rademacher",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    eps: float = 1e-5,
    generator: Optional[torch.Generator] = None,
    prior_logp: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """log p_eps(x) in nats through the probability-flow ODE: ``(logp, z, nfe)``.

    Integrates d/dt [x, Δ] = [f̃(x, t), ∇·f̃(x, t)] from (x, 0) at t = eps to (z, Δ) at t = T (module
    docstring) and returns logp = prior_logp(z) + Δ, shape (B,), in x's dtype (float64 input gives
    the most accurate answer). Times the solver probes are clamped to [eps, T].

    Args:
      trace: ``"exact"`` (d backward passes per call) or ``"hutchinson"``.
      n_probes, probe: Hutchinson's number of fixed probes and their law (``"rademacher"`` or
        ``"gaussian"``), drawn from ``generator``.
      rtol, atol, method: torchdiffeq settings; the whole batch is one ODE system, so the adaptive
        step (and nfe) is shared by the batch.
      eps: the start time (the likelihood is that of the data perturbed to eps).
      prior_logp: log-density of z at T (default ``sde.prior_logp``, the prior; pass the true log p_T
        to take the SDE's finite horizon out of the comparison).

    Returns:
      ``nfe``: the number of forward score evaluations, one per ODE right-hand side. The d (exact)
      or n_probes (Hutchinson) vector–Jacobian products of each evaluation are backward passes through
      that one forward evaluation and are not counted.
    """
    estimator = TRACES.get(trace)
    PROBES.get(probe)  # an unknown probe name fails here, whatever the trace
    check_positive_int(n_probes, "n_probes")
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be positive, got rtol={rtol}, atol={atol}")
    if not 0.0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, {sde.T}), got {eps}")
    check_finite(x, "x")
    x = x.detach()
    divergence = estimator(x, n_probes=n_probes, probe=probe, generator=generator)
    counted = GuardedScore(score_fn, "log_likelihood")

    def dynamics(t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        t = t.clamp(eps, sde.T).expand(x.shape[0])
        with torch.enable_grad():
            xt = state[0].detach().requires_grad_(True)
            drift = sde.reverse_drift(xt, t, counted(xt, t), probability_flow=True)
            div = divergence(drift, xt)
        return drift.detach(), div.detach()

    times = torch.tensor([eps, sde.T], dtype=x.dtype, device=x.device)
    # the last adaptive step ends on T: a step past it would be evaluated at clamped times and interpolated back
    options = {"step_t": times[-1:]} if method in ADAPTIVE_SOLVERS else None
    state = (x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
    try:
        zs, deltas = odeint(dynamics, state, times, rtol=rtol, atol=atol, method=method, options=options)
    except Exception:
        counted.check()  # a non-finite score is the cause of whatever failed after it
        raise
    counted.check()
    z, delta = zs[-1], deltas[-1]
    logp = (prior_logp or sde.prior_logp)(z).to(x.dtype) + delta
    return logp, z, counted.nfe


# --- discrete data ----------------------------------------------------------------------------------
def bits_per_dim(logp: torch.Tensor, dim: int, levels: int, scale: float) -> torch.Tensor:
    """Bits per dimension of K-level data from the log-density (nats) of their dequantised values in
    model space, where the scaler maps [0, 1] affinely onto model space with slope ``scale``
    (``datasets``: 2 when centred on [-1, 1], 1 on [0, 1]) and level v owns the bin
    [v/K, (v + 1)/K) of [0, 1] (dequantisation: a uniform draw over the bin, Theis et al. 2016).

    Two exact steps and one bound, per sample of D dimensions:
      1. back to [0, 1] (the scaler's log-Jacobian): log p_01(y) = log p(x) + D log(scale);
      2. P(v) = ∫_bin p_01 = K^{-D} E_u[p_01(y)] over the dequantised y, so by Jensen
         -log P(v) ≤ E_u[-log p_01(y)] - D log K.
    Hence bpd = (-log p(x) - D log(scale) + D log K)/(D ln 2) = -log p(x)/(D ln 2) + log2(K/scale),
    an upper bound (averaged over the dequantisation noise) on the code length of v. The offset
    log2(K/scale) is score_sde's ``7 - inverse_scaler(-1)``: 8 for 8-bit data on [0, 1], 7 on
    [-1, 1]; for the 17-level digits on [-1, 1] it is log2(8.5) = 3.09. Returns (B,).
    """
    if not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels must be an integer >= 2, got {levels!r}")
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a positive number, got {scale}")
    check_positive_int(dim, "dim")
    return -logp / (dim * math.log(2)) + math.log2(levels / scale)
