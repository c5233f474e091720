"""Stochastic differential equations for score-based generative modelling.

The interface follows score_sde's ``sde_lib.py`` (Song et al., ICLR 2021): an abstract ``SDE`` with
``sde``, ``marginal_prob``, ``prior_sampling``, ``prior_logp``, ``discretize`` and ``reverse``. Every
SDE of the toolkit is *linear*,

    dx = f(t) x dt + g(t) dw,    p_0t(x(t) | x(0)) = N(α(t) x(0), σ(t)² I),

so ``LinearSDE`` also exposes α(t), σ(t), the half log-SNR λ(t) = log(α/σ) and its inverse, on which
samplers and fast solvers are written once for all SDEs. Times are ``(B,)`` tensors (a Python float is
broadcast); data may have any rank.

Times are validated once, where they enter: a Python number given to any method is checked here
(no cost), a tensor is not (checking it would be a device-to-host sync on every network evaluation);
entry points that take user times (samplers, likelihoods) call ``check_time`` on them once.
"""
from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch

from sde_diffusion.core.discrete import DDPMChain, SMLDChain
from sde_diffusion.core.registry import Registry
from sde_diffusion.core.types import ScoreFn
from sde_diffusion.core.utils import (
    TimeLike,
    append_dims,
    as_tensor_time,
    batch_time,
    check_finite,
    check_increasing_pair,
    check_positive_int,
    check_time,
    sum_except_batch,
)

SDES: Registry[type[LinearSDE]] = Registry("SDE")


class SDE(abc.ABC):
    """Abstract forward SDE dx = f(x, t) dt + g(t) dw on t ∈ [0, T] with N discretisation steps."""

    def __init__(self, N: int) -> None:
        check_positive_int(N, "N")
        self.N = N

    @property
    def T(self) -> float:
        return 1.0

    @abc.abstractmethod
    def sde(self, x: torch.Tensor, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift f(x, t) (shape of x) and diffusion g(t) (shape (B,))."""

    @abc.abstractmethod
    def marginal_prob(self, x: torch.Tensor, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (shape of x) and std (shape (B,)) of the perturbation kernel p_0t(x(t) | x(0) = x)."""

    @abc.abstractmethod
    def prior_sampling(
        self,
        shape: tuple[int, ...],
        generator: Optional[torch.Generator] = None,
        device: Optional[torch.device] = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """A draw from the prior p_T."""

    @abc.abstractmethod
    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log p_T(z) summed over all but the batch dimension, shape (B,)."""

    def discretize(self, x: torch.Tensor, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward step x_{i+1} = x_i + f_i(x_i) + G_i z_i; by default Euler–Maruyama with
        Δt = T/N: f_i = f(x, t) Δt, G_i = g(t) √Δt."""
        dt = self.T / self.N
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * math.sqrt(dt)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
        """The reverse-time SDE (Anderson 1982; Song et al. 2021, eq. 6) or, with
        ``probability_flow``, the probability-flow ODE (eq. 13)."""
        return ReverseSDE(self, score_fn, probability_flow)


class ReverseSDE:
    """dx = [f(x, t) - c g(t)² ∇log p_t(x)] dt + g̃(t) dw̄, integrated from T to 0, with c = 1, g̃ = g
    for the reverse SDE and c = ½, g̃ = 0 for the probability-flow ODE (Song et al. 2021, eqs. 6, 13).

    ``discretize`` is the matching reverse step of the forward discretisation (reverse diffusion,
    Song et al. 2021, eq. 46): x_i = x_{i+1} - f_{i+1} + c G_{i+1}² s + G̃_{i+1} z.
    """

    def __init__(self, forward: LinearSDE, score_fn: ScoreFn, probability_flow: bool = False) -> None:
        self.forward = forward
        self.score_fn = score_fn
        self.probability_flow = probability_flow
        self.N = forward.N

    @property
    def T(self) -> float:
        return self.forward.T

    def _coef(self) -> float:
        return 0.5 if self.probability_flow else 1.0

    def sde(self, x: torch.Tensor, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        t = batch_time(self.forward._number(t), x)
        _, diffusion = self.forward.sde(x, t)
        drift = self.forward.reverse_drift(x, t, self.score_fn(x, t), self.probability_flow)
        if self.probability_flow:
            diffusion = torch.zeros_like(diffusion)
        return drift, diffusion

    def discretize(self, x: torch.Tensor, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        t = batch_time(t, x)
        f, G = self.forward.discretize(x, t)
        rev_f = f - append_dims(G**2, x.ndim) * self.score_fn(x, t) * self._coef()
        rev_G = torch.zeros_like(G) if self.probability_flow else G
        return rev_f, rev_G


class LinearSDE(SDE):
    """dx = f(t) x dt + g(t) dw with Gaussian kernel N(α(t) x0, σ(t)² I), α(t) = exp ∫_0^t f.

    Subclasses define ``log_alpha``, ``sigma``, ``f``, ``g2`` and ``t_of_lambda``; everything else
    (drift, kernel, λ(t), priors) is written here once.
    """

    #: Discrete chain this SDE generalises (DDPM or SMLD), or None.
    chain: Optional[DDPMChain | SMLDChain] = None
    #: Standard deviation of the prior N(0, prior_std² I).
    prior_std: float = 1.0
    #: score_sde's default sampling cut-off ε (1e-3 for VP / sub-VP, 1e-5 for VE).
    default_eps: float = 1e-3

    # --- the schedule, per subclass ------------------------------------------------------------
    @abc.abstractmethod
    def _log_alpha(self, t: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def _sigma(self, t: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def _f(self, t: torch.Tensor) -> torch.Tensor:
        """Drift coefficient f(t) = d log α / dt."""

    @abc.abstractmethod
    def _g2(self, t: torch.Tensor) -> torch.Tensor:
        """Squared diffusion g(t)² = dσ²/dt - 2 f σ²."""

    @abc.abstractmethod
    def _t_of_lambda(self, lam: torch.Tensor) -> torch.Tensor: ...

    # --- public; a Python number is validated, a tensor is checked at the entry points ----------
    def _time(self, t: TimeLike) -> torch.Tensor:
        return as_tensor_time(self._number(t))

    def _number(self, t: TimeLike) -> TimeLike:
        """``t``, checked when it is a Python number."""
        if not isinstance(t, torch.Tensor):
            check_time(as_tensor_time(t), self.T)
        return t

    def check_time(self, t: TimeLike, name: str = "t") -> None:
        """Raise ``ValueError`` unless every time is finite and in [0, T] (one host sync for a tensor:
        call it where times enter, not per network evaluation)."""
        check_time(as_tensor_time(t), self.T, name)

    def alpha(self, t: TimeLike) -> torch.Tensor:
        """Mean coefficient α(t) of the kernel."""
        return torch.exp(self._log_alpha(self._time(t)))

    def log_alpha(self, t: TimeLike) -> torch.Tensor:
        return self._log_alpha(self._time(t))

    def sigma(self, t: TimeLike) -> torch.Tensor:
        """Standard deviation σ(t) of the kernel."""
        return self._sigma(self._time(t))

    def f(self, t: TimeLike) -> torch.Tensor:
        """Drift coefficient f(t), drift = f(t) x."""
        return self._f(self._time(t))

    def g2(self, t: TimeLike) -> torch.Tensor:
        """Squared diffusion coefficient g(t)²."""
        return self._g2(self._time(t))

    def lambda_(self, t: TimeLike) -> torch.Tensor:
        """Half log-SNR λ(t) = log(α(t) / σ(t)) (DPM-Solver's λ); named ``lambda_`` since
        ``lambda`` is a Python keyword. Decreasing in t; +inf where σ = 0."""
        t = self._time(t)
        return self._log_alpha(t) - torch.log(self._sigma(t))

    def t_of_lambda(self, lam: TimeLike) -> torch.Tensor:
        """Inverse of ``lambda_``."""
        lam = as_tensor_time(lam)
        if bool(torch.isnan(lam).any()):
            raise ValueError("lambda must not be NaN")
        return self._t_of_lambda(lam)

    def reverse_drift(self, x: torch.Tensor, t: TimeLike, score: torch.Tensor, probability_flow: bool = False) -> torch.Tensor:
        """Drift of the reverse-time SDE, f(t) x - g(t)² s, or of the probability-flow ODE,
        f(t) x - ½ g(t)² s (Song et al. 2021, eqs. 6, 13), for the score s at (x, t): the one place
        this drift is written (``ReverseSDE``, the ODE samplers, Gotta-Go-Fast, the likelihood)."""
        t = batch_time(self._number(t), x)
        c = 0.5 if probability_flow else 1.0
        f, g2 = append_dims(self.f(t), x.ndim).to(x.dtype), append_dims(self.g2(t), x.ndim).to(x.dtype)
        return f * x - c * g2 * score

    # --- the score_sde interface ----------------------------------------------------------------
    def sde(self, x: torch.Tensor, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        t = batch_time(self._number(t), x)
        return append_dims(self.f(t), x.ndim) * x, self.g2(t).sqrt()

    def marginal_prob(self, x: torch.Tensor, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        t = batch_time(self._number(t), x)
        return append_dims(self.alpha(t), x.ndim) * x, self.sigma(t)

    def prior_sampling(
        self,
        shape: tuple[int, ...],
        generator: Optional[torch.Generator] = None,
        device: Optional[torch.device] = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        return self.prior_std * torch.randn(shape, generator=generator, device=device, dtype=dtype)

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, prior_std² I), summed over all but the batch dimension."""
        check_finite(z, "z")
        d = z[0].numel()
        var = self.prior_std**2
        return -0.5 * d * math.log(2 * math.pi * var) - sum_except_batch(z**2) / (2 * var)

    def discretize(self, x: torch.Tensor, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        """The discrete chain's step (DDPM for VP, SMLD for VE) when there is one, else
        Euler–Maruyama. Time t maps to chain index i = round(t (N-1) / T)."""
        if self.chain is None:
            return super().discretize(x, t)
        return self.chain.discretize(x, self.index(batch_time(t, x)))

    # --- helpers shared by samplers ---------------------------------------------------------------
    def index(self, t: torch.Tensor) -> torch.Tensor:
        """Discrete index i = round(t (N-1) / T) of continuous time t."""
        check_time(t, self.T)
        return torch.round(t.to(torch.float64) * (self.N - 1) / self.T).long()

    def chain_times(self) -> torch.Tensor:
        """Times t_k (float64, (N,)) matched to the discrete chain's levels: the t whose kernel has the
        level's half log-SNR, λ(t_k) = log(α_k / σ_k), clamped to [0, T]. For these SDEs equal λ means
        an equal kernel (α² + σ² = 1 for the VP family, α = 1 for VE), so the exact score at t_k is the
        score of the chain's marginal at level k. The top levels of a DDPM chain can be noisier than
        the SDE at T (VP: 4 levels; cosine VP: its last, whose β is clipped) and are clamped to T."""
        if self.chain is None:
            raise ValueError(f"{self!r} has no discrete chain; 'vp', 'cosine_vp' (DDPM) and 've' (SMLD) have one")
        alpha, sigma = self.chain.kernel()
        return self._t_of_lambda(torch.log(alpha) - torch.log(sigma)).clamp(0.0, self.T)

    def langevin_alpha(self, t: TimeLike) -> torch.Tensor:
        """α_i of the Langevin corrector's step rule ε = 2 α_i (r ‖z‖ / ‖s‖)² (Song et al. 2021,
        Alg. 4): 1 - β_i for the VP family (β_i = β(t) T/N), 1 for VE."""
        t = self._time(t)
        return torch.ones_like(t)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({params})"

    def _params(self) -> dict[str, Any]:
        return {"N": self.N}


class _LinearBetaSDE(LinearSDE):
    """Shared linear schedule β(t) = β_min + t (β_max - β_min) of VP and sub-VP, with
    log α(t) = -¼ t² (β_max - β_min) - ½ t β_min (Song et al. 2021, eq. 33)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000) -> None:
        super().__init__(N)
        check_increasing_pair(beta_min, beta_max, "beta_min", "beta_max")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def beta(self, t: TimeLike) -> torch.Tensor:
        t = self._time(t)
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def _f(self, t: torch.Tensor) -> torch.Tensor:
        return -0.5 * (self.beta_min + t * (self.beta_max - self.beta_min))

    def _t_from_log_alpha(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """Positive root of ¼ Δβ t² + ½ β_min t + log α = 0, written to avoid cancellation."""
        d = self.beta_max - self.beta_min
        disc = self.beta_min**2 - 4.0 * d * log_alpha
        return -4.0 * log_alpha / (self.beta_min + torch.sqrt(disc))

    def langevin_alpha(self, t: TimeLike) -> torch.Tensor:
        return 1.0 - self.beta(t) * self.T / self.N

    def _params(self) -> dict[str, Any]:
        return {"beta_min": self.beta_min, "beta_max": self.beta_max, "N": self.N}


@SDES.register("vp")
class VPSDE(_LinearBetaSDE):
    """Variance-preserving SDE dx = -½ β(t) x dt + √β(t) dw (Song et al. 2021, eq. 11),
    σ(t)² = 1 - α(t)²; its discretisation is the DDPM chain with β_i = linspace(β_min/N, β_max/N, N)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000) -> None:
        super().__init__(beta_min, beta_max, N)
        self.chain = DDPMChain(torch.linspace(beta_min / N, beta_max / N, N, dtype=torch.float64))

    def _sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(-torch.expm1(2.0 * self._log_alpha(t)))

    def _g2(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _t_of_lambda(self, lam: torch.Tensor) -> torch.Tensor:
        # α² = sigmoid(2λ)  =>  log α = -½ softplus(-2λ)
        return self._t_from_log_alpha(-0.5 * torch.nn.functional.softplus(-2.0 * lam))

    def langevin_alpha(self, t: TimeLike) -> torch.Tensor:
        return self.chain.alphas[self.index(self._time(t))]


@SDES.register("subvp")
class SubVPSDE(_LinearBetaSDE):
    """Sub-VP SDE dx = -½ β(t) x dt + √(β(t)(1 - e^{-2∫β})) dw (Song et al. 2021, eq. 34):
    same mean as VP, std σ(t) = 1 - α(t)² (not its square root), g(t)² = β(t)(1 - α(t)⁴).
    It has no discrete chain; the Langevin corrector uses α_i = 1 - β(t) T/N as for VP."""

    def _sigma(self, t: torch.Tensor) -> torch.Tensor:
        return -torch.expm1(2.0 * self._log_alpha(t))

    def _g2(self, t: torch.Tensor) -> torch.Tensor:
        beta = self.beta_min + t * (self.beta_max - self.beta_min)
        return -beta * torch.expm1(4.0 * self._log_alpha(t))

    def _t_of_lambda(self, lam: torch.Tensor) -> torch.Tensor:
        # α / (1 - α²) = e^λ  =>  α = (√(1 + 4 e^{2λ}) - 1) / (2 e^λ) = 2 e^λ / (1 + √(1 + 4 e^{2λ}))
        e = torch.exp(lam)
        log_alpha = torch.log(2.0 * e) - torch.log1p(torch.sqrt(1.0 + 4.0 * e**2))
        return self._t_from_log_alpha(log_alpha)


@SDES.register("ve")
class VESDE(LinearSDE):
    """Variance-exploding SDE dx = √(d[σ²(t)]/dt) dw with σ(t) = σ_min (σ_max/σ_min)^t
    (Song et al. 2021, eq. 30): g(t)² = 2 σ(t)² log(σ_max/σ_min), drift 0, α = 1.

    The kernel std is the exact √(σ(t)² - σ_min²) (score_sde uses σ(t), which ignores the σ_min²
    already present at t = 0); the prior is N(0, σ_max² I) as in score_sde. The discrete chain is
    SMLD on σ_i = exp(linspace(log σ_min, log σ_max, N)).
    """

    default_eps = 1e-5

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000) -> None:
        super().__init__(N)
        check_increasing_pair(sigma_min, sigma_max, "sigma_min", "sigma_max")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.prior_std = self.sigma_max
        self._log_ratio = math.log(sigma_max / sigma_min)
        self.chain = SMLDChain(
            torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), N, dtype=torch.float64))
        )

    def noise_level(self, t: TimeLike) -> torch.Tensor:
        """σ_min (σ_max/σ_min)^t, the noise level NCSN conditions on."""
        return self.sigma_min * torch.exp(self._time(t) * self._log_ratio)

    def _log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(t)

    def _sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_min * torch.sqrt(torch.expm1(2.0 * t * self._log_ratio))

    def _f(self, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(t)

    def _g2(self, t: torch.Tensor) -> torch.Tensor:
        return 2.0 * self._log_ratio * (self.sigma_min * torch.exp(t * self._log_ratio)) ** 2

    def _t_of_lambda(self, lam: torch.Tensor) -> torch.Tensor:
        # σ = e^{-λ}:  t = log(1 + σ²/σ_min²) / (2 log(σ_max/σ_min))
        return torch.log1p(torch.exp(-2.0 * lam) / self.sigma_min**2) / (2.0 * self._log_ratio)

    def _params(self) -> dict[str, Any]:
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "N": self.N}


class _AlphaBarVPSDE(LinearSDE):
    """A VP SDE given by its ᾱ(t) = α(t)² and β(t) = -d log ᾱ/dt: σ(t) = √(1 - ᾱ(t)),
    f(t) = -½β(t), g(t)² = β(t) (Song et al. 2021, eq. 11)."""

    @abc.abstractmethod
    def _log_abar(self, t: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def _beta(self, t: torch.Tensor) -> torch.Tensor: ...

    def _log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return 0.5 * self._log_abar(t)

    def _sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(-torch.expm1(self._log_abar(t)))

    def _f(self, t: torch.Tensor) -> torch.Tensor:
        return -0.5 * self._beta(t)

    def _g2(self, t: torch.Tensor) -> torch.Tensor:
        return self._beta(t)


@SDES.register("cosine_vp")
class CosineVPSDE(_AlphaBarVPSDE):
    """VP SDE with the cosine schedule of Nichol & Dhariwal (2021):
    ᾱ(t) = h(t)/h(0), h(t) = cos²(((t + s)/(1 + s)) π/2), s = 0.008, α = √ᾱ, σ² = 1 - ᾱ,
    β(t) = -d log ᾱ/dt = π/(1+s) tan(((t + s)/(1 + s)) π/2).

    β(t) diverges at t = 1; as Nichol & Dhariwal clip β_i ≤ ``max_beta`` = 0.999 per step, β(t) is
    clipped at ``max_beta`` N (i.e. β(t) T/N ≤ max_beta) and log ᾱ is integrated with the clip, so
    that ᾱ(1) > 0 and λ(1) is finite. The discrete chain is their DDPM chain with
    β_k = min(1 - ᾱ_k/ᾱ_{k-1}, max_beta) on ᾱ_k = h(k/N)/h(0).
    """

    def __init__(self, s: float = 0.008, max_beta: float = 0.999, N: int = 1000) -> None:
        super().__init__(N)
        if not 0 < s < 1:
            raise ValueError(f"s must lie in (0, 1), got {s}")
        if not 0 < max_beta < 1:
            raise ValueError(f"max_beta must lie in (0, 1), got {max_beta}")
        self.s, self.max_beta = float(s), float(max_beta)
        self._c = math.pi / 2 / (1 + s)
        self._log_h0 = 2 * math.log(math.cos(self._c * s))
        self.beta_clip = max_beta * N / self.T
        # t_c: where the unclipped β(t) = 2c tan(c (t + s)) reaches the clip.
        self._t_clip = min(math.atan(self.beta_clip / (2 * self._c)) / self._c - s, self.T)
        self._log_abar_clip = 2 * math.log(math.cos(self._c * (self._t_clip + s))) - self._log_h0
        k = torch.arange(N + 1, dtype=torch.float64)
        abar = torch.cos(self._c * (k / N + s)) ** 2 / math.cos(self._c * s) ** 2
        betas = torch.clamp(1 - abar[1:] / abar[:-1], max=max_beta)
        self.chain = DDPMChain(betas)

    def _log_abar(self, t: torch.Tensor) -> torch.Tensor:
        tc = torch.clamp(t, max=self._t_clip)
        smooth = 2 * torch.log(torch.cos(self._c * (tc + self.s))) - self._log_h0
        return smooth - self.beta_clip * torch.clamp(t - self._t_clip, min=0.0)

    def _beta(self, t: torch.Tensor) -> torch.Tensor:
        tc = torch.clamp(t, max=self._t_clip)
        return torch.clamp(2 * self._c * torch.tan(self._c * (tc + self.s)), max=self.beta_clip)

    def _t_of_lambda(self, lam: torch.Tensor) -> torch.Tensor:
        log_abar = -torch.nn.functional.softplus(-2.0 * lam)  # ᾱ = sigmoid(2λ)
        smooth = torch.arccos(torch.exp(0.5 * (log_abar + self._log_h0)).clamp(max=1.0)) / self._c - self.s
        clipped = self._t_clip + (self._log_abar_clip - log_abar) / self.beta_clip
        return torch.where(log_abar >= self._log_abar_clip, smooth, clipped)

    def langevin_alpha(self, t: TimeLike) -> torch.Tensor:
        return self.chain.alphas[self.index(self._time(t))]

    def _params(self) -> dict[str, Any]:
        return {"s": self.s, "max_beta": self.max_beta, "N": self.N}


#: DDPM β schedules by diffusers' ``beta_schedule`` names: ``(beta_start, beta_end, N) -> β_k`` (float64).
BETA_SCHEDULES: Registry[Callable[[float, float, int], torch.Tensor]] = Registry("beta schedule")


@BETA_SCHEDULES.register("linear")
def linear_betas(beta_start: float, beta_end: float, N: int) -> torch.Tensor:
    """β_k evenly spaced from β_start to β_end (Ho et al. 2020, §4)."""
    return torch.linspace(beta_start, beta_end, N, dtype=torch.float64)


@BETA_SCHEDULES.register("scaled_linear")
def scaled_linear_betas(beta_start: float, beta_end: float, N: int) -> torch.Tensor:
    """β_k = (evenly spaced from √β_start to √β_end)² (Rombach et al. 2022, latent diffusion)."""
    return torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), N, dtype=torch.float64) ** 2


@BETA_SCHEDULES.register("squaredcos_cap_v2")
def cosine_betas(beta_start: float, beta_end: float, N: int) -> torch.Tensor:
    """β_k = min(1 - h((k+1)/N)/h(k/N), 0.999), h(u) = cos²((u + 0.008)/1.008 · π/2), k = 0..N-1
    (Nichol & Dhariwal 2021, eq. 17); β_start and β_end are unused."""
    u = torch.arange(N + 1, dtype=torch.float64) / N
    h = torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    return torch.clamp(1.0 - h[1:] / h[:-1], max=0.999)


@SDES.register("discrete_vp")
class DiscreteVPSDE(_AlphaBarVPSDE):
    """The VP SDE through a DDPM chain's own ᾱ table: exact at every trained timestep.

    A chain of N steps with ᾱ_k = Π_{j≤k} (1 - β_j), k = 0..N-1 (diffusers' 0-based timesteps; β_k from
    ``BETA_SCHEDULES[beta_schedule]`` or the table ``alphas_cumprod`` itself), is placed at times
    t_k = (k + 1)/N, and log ᾱ is interpolated linearly in between, with ᾱ := 1 at t = 0
    (DPM-Solver's discrete noise schedule, Lu et al. 2022, App. D.1):

        τ(t) = N t - 1,   log ᾱ(t) = (1 - w) log ᾱ_j + w log ᾱ_{j+1},   j = ⌊τ⌋, w = τ - j,

    α = √ᾱ, σ² = 1 - ᾱ, and β(t) = -d log ᾱ/dt = -N log(1 - β_{j+1}) is constant between timesteps, so
    dx = -½ β(t) x dt + √β(t) dw has the kernel N(√ᾱ(t) x_0, (1 - ᾱ(t)) I) with ᾱ(t_k) = ᾱ_k exactly
    and ᾱ(1) = ᾱ_{N-1}. τ(t) is the (fractional) timestep a network trained on the chain is given at
    time t; t ∈ [1/N, 1] spans its trained timesteps 0..N-1 and ``default_eps`` is 1/N. ``vp`` and
    ``cosine_vp`` are the continuous-time limits of the linear and cosine chains, close to but not at
    the table (``vp``: ᾱ(1) = 4.3e-5 against ᾱ_999 = 4.0e-5 for β from 1e-4 to 0.02).
    """

    def __init__(
        self,
        beta_schedule: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        N: int = 1000,
        alphas_cumprod: Optional[Sequence[float]] = None,
    ) -> None:
        super().__init__(N)
        if alphas_cumprod is None:
            check_increasing_pair(beta_start, beta_end, "beta_start", "beta_end")
            betas = BETA_SCHEDULES.get(beta_schedule)(float(beta_start), float(beta_end), N)
            self.chain = DDPMChain(betas)
            abar = self.chain.alphas_cumprod
        else:
            abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
            if abar.shape != (N,):
                raise ValueError(f"alphas_cumprod must hold N = {N} values, got {abar.numel()}")
            if not bool(((abar > 0) & (abar < 1)).all()) or not bool((abar[1:] < abar[:-1]).all()):
                raise ValueError("alphas_cumprod must decrease strictly inside (0, 1) (a zero-SNR last step has no VP SDE)")
            prev = torch.cat([abar.new_ones(1), abar[:-1]])
            self.chain = DDPMChain(1.0 - abar / prev)
        self.beta_schedule, self.beta_start, self.beta_end = beta_schedule, float(beta_start), float(beta_end)
        self.table_given = alphas_cumprod is not None
        #: log ᾱ at τ = -1, 0, ..., N-1 (index j + 1 holds timestep j).
        self.log_abar = torch.cat([torch.zeros(1, dtype=torch.float64), torch.log(abar)])
        self.default_eps = 1.0 / N

    def timestep(self, t: torch.Tensor) -> torch.Tensor:
        """The chain's fractional timestep τ(t) = N t - 1 at time t."""
        return self.N * t - 1.0

    def _segment(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = self.N * t
        j = torch.clamp(torch.floor(u), 0, self.N - 1).long()
        return j, u - j

    def _log_abar(self, t: torch.Tensor) -> torch.Tensor:
        j, w = self._segment(t)
        table = self.log_abar.to(device=t.device, dtype=t.dtype)
        return torch.lerp(table[j], table[j + 1], w)

    def _beta(self, t: torch.Tensor) -> torch.Tensor:
        j, _ = self._segment(t)
        table = self.log_abar.to(device=t.device, dtype=t.dtype)
        return self.N * (table[j] - table[j + 1])

    def _t_of_lambda(self, lam: torch.Tensor) -> torch.Tensor:
        # ᾱ = sigmoid(2λ); invert the piecewise-linear log ᾱ(t), extrapolating the end segments.
        log_abar = -torch.nn.functional.softplus(-2.0 * lam)
        table = self.log_abar.to(device=log_abar.device, dtype=log_abar.dtype)
        descending = -table
        j = torch.clamp(torch.searchsorted(descending, -log_abar.contiguous()) - 1, 0, self.N - 1)
        w = (table[j] - log_abar) / (table[j] - table[j + 1])
        return (j + w) / self.N

    def index(self, t: torch.Tensor) -> torch.Tensor:
        """The chain index of time t: the nearest timestep round(τ(t)), clamped to 0..N-1."""
        check_time(t, self.T)
        return torch.clamp(torch.round(self.timestep(t.to(torch.float64))), 0, self.N - 1).long()

    def langevin_alpha(self, t: TimeLike) -> torch.Tensor:
        return self.chain.alphas[self.index(self._time(t))]

    def _params(self) -> dict[str, Any]:
        if self.table_given:
            return {"N": self.N, "alphas_cumprod": f"<table, last {float(self.chain.alphas_cumprod[-1]):.4g}>"}
        return {"beta_schedule": self.beta_schedule, "beta_start": self.beta_start, "beta_end": self.beta_end, "N": self.N}


def get_sde(name: str, **kwargs: Any) -> LinearSDE:
    """Build an SDE by registered name (``vp``, ``subvp``, ``ve``, ``cosine_vp``)."""
    cls = SDES.get(name)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"bad arguments for SDE {name!r}: {err}") from None


def sde_from_config(config: Any) -> LinearSDE:
    """Build the SDE described by a config group with a ``name`` field and the SDE's keyword
    arguments, e.g. ``config.sde = {'name': 'vp', 'beta_min': 0.1, 'beta_max': 20., 'N': 1000}``."""
    params = dict(config.items()) if hasattr(config, "items") else dict(vars(config))
    name = params.pop("name", None)
    if name is None:
        raise ValueError(f"SDE config needs a 'name' field; known names: {', '.join(SDES.names())}")
    return get_sde(name, **params)
