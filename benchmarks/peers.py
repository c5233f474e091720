"""k-diffusion's samplers as benchmark peers, run on the same latents and exact denoiser as ours.

k-diffusion 0.1.1.post1 installs with ``pip install -c constraints.txt --no-deps k-diffusion==0.1.1.post1``
(plus ``torchsde``, which ``sampling.py`` imports). Its package ``__init__`` pulls torchvision and more,
so ``load_sampling`` executes ``k_diffusion/sampling.py`` alone under a private package name whose
``utils`` holds the one helper it uses (``append_dims``).

A peer samples x̃ = x/α in the EDM noise level σ̃ = σ/α from σ̃_max to σ̃_min and then to 0; the
model is the exact denoiser D(x̃; σ̃) = x̂_0(α x̃, t(σ̃)) of the problem's score, so that a peer's
output and ours are comparable sample by sample.
"""
from __future__ import annotations

import importlib.util
import math
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from sde_diffusion.core.parameterization import data_from_score
from sde_diffusion.core.sde_lib import LinearSDE
from solvers.common import CountedScore, ScoreFn

PACKAGE = "_kdiffusion_peer"


def _append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    return x[(...,) + (None,) * (target_dims - x.ndim)]


@lru_cache(maxsize=1)
def load_sampling() -> types.ModuleType:
    """k-diffusion's ``sampling`` module, loaded by path (the package itself is never imported)."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("k-diffusion is not installed: pip install -c constraints.txt --no-deps k-diffusion==0.1.1.post1 torchsde")
    path = f"{list(spec.submodule_search_locations)[0]}/sampling.py"
    package = types.ModuleType(PACKAGE)
    package.__path__ = []
    utils = types.ModuleType(f"{PACKAGE}.utils")
    utils.append_dims = _append_dims
    package.utils = utils
    sys.modules[PACKAGE], sys.modules[f"{PACKAGE}.utils"] = package, utils
    module_spec = importlib.util.spec_from_file_location(f"{PACKAGE}.sampling", path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module
    module_spec.loader.exec_module(module)
    return module


def exact_denoiser(sde: LinearSDE, score_fn: ScoreFn) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """D(x̃; σ̃) for k-diffusion: Tweedie's x̂_0 at x = α x̃ and the time t with σ/α = σ̃ (σ̃ is a
    (B,) tensor holding one value, as k-diffusion passes it)."""

    def model(x_tilde: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        level = float(sigma.reshape(-1)[0])
        t = sde.t_of_lambda(torch.tensor(-math.log(level), dtype=torch.float64))
        alpha, std = float(sde.alpha(t)), float(sde.sigma(t))
        x = alpha * x_tilde
        tt = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
        return data_from_score(score_fn(x, tt), x, alpha, std)

    return model


@dataclass(frozen=True)
class Peer:
    """A k-diffusion sampler on a σ grid; ``nfe(n)`` is its evaluation count for n grid levels
    (n steps, the last one to σ = 0)."""

    name: str
    fn: str
    kwargs: dict[str, Any]
    nfe: Callable[[int], int]


def _zero_noise(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    raise AssertionError("eta = 0 draws no noise")


#: The issue's peers: Euler, Heun, DPM-2, LMS (order 4), DPM-Solver++(2M), DPM-Solver++(3M) SDE with η = 0.
PEERS = (
    Peer("euler", "sample_euler", {}, lambda n: n),
    Peer("heun", "sample_heun", {}, lambda n: 2 * n - 1),
    Peer("dpm_2", "sample_dpm_2", {}, lambda n: 2 * n - 1),
    Peer("lms", "sample_lms", {"order": 4}, lambda n: n),
    Peer("dpmpp_2m", "sample_dpmpp_2m", {}, lambda n: n),
    Peer("dpmpp_3m_sde", "sample_dpmpp_3m_sde", {"eta": 0.0, "noise_sampler": _zero_noise}, lambda n: n),
)
GRIDS = ("karras", "exponential")


def levels_for_nfe(peer: Peer, nfe: int) -> int:
    """The most grid levels n (≥ 1) with peer.nfe(n) ≤ nfe (0 when none fits)."""
    n = 0
    while peer.nfe(n + 1) <= nfe:
        n += 1
    return n


def sigmas(grid: str, n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """k-diffusion's σ grids of n levels from sigma_max to sigma_min, then 0, computed in float64
    (``get_sigmas_karras`` / ``get_sigmas_exponential`` build them in float32)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    if grid == "karras":
        levels = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    elif grid == "exponential":
        levels = torch.exp(math.log(sigma_max) + ramp * (math.log(sigma_min) - math.log(sigma_max)))
    else:
        raise ValueError(f"unknown grid {grid!r}; known: {', '.join(GRIDS)}")
    return torch.cat([levels, levels.new_zeros(1)])


def run_peer(
    peer: Peer, grid: str, n: int, sde: LinearSDE, score_fn: ScoreFn, x_start: torch.Tensor, t_start: float, sigma_min: float, sigma_max: float
) -> tuple[torch.Tensor, int]:
    """The peer's samples from ``x_start`` (x at t_start, with σ(t_start)/α(t_start) = sigma_max)
    and its counted NFE."""
    kd = load_sampling()
    counted = CountedScore(score_fn)
    alpha_start = float(sde.alpha(torch.tensor(t_start, dtype=torch.float64)))
    grid_sigmas = sigmas(grid, n, sigma_min, sigma_max).to(x_start.dtype)
    x = getattr(kd, peer.fn)(exact_denoiser(sde, counted), x_start / alpha_start, grid_sigmas, disable=True, **peer.kwargs)
    return x, counted.nfe
