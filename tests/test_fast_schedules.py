"""Time-step schedules of the fast solvers: each is uniform in its own coordinate, ends exactly at
t_start and eps, matches the published formulas, and refuses bad input."""
import math

import pytest
import torch

from sde_diffusion.core.sde_lib import get_sde
from solvers.schedules import SCHEDULES, nodes, time_steps

SDES = ["vp", "subvp", "ve", "cosine_vp"]


def coordinate(name: str, sde, t: torch.Tensor, rho: float) -> torch.Tensor:
    """The coordinate each schedule is uniform in, written from the definitions (not the module's warps)."""
    sigma_tilde = sde.sigma(t) / sde.alpha(t)
    return {
        "time_uniform": t,
        "logsnr": torch.log(sde.alpha(t) / sde.sigma(t)),
        "karras": sigma_tilde ** (1.0 / rho),
        "quadratic": t.sqrt(),
    }[name]


@pytest.mark.parametrize("sde_name", SDES)
@pytest.mark.parametrize("schedule", ["time_uniform", "logsnr", "karras", "quadratic"])
def test_schedule_is_uniform_in_its_coordinate(sde_name, schedule):
    """9 nodes from T to the default eps: the ends are exact, t decreases strictly, and successive
    differences of the schedule's coordinate agree to 1e-7 of the spacing. The nodes come from
    closed-form inverses in float64, so round-off is ~1e-13 relative in t; the bound allows the
    amplification by dλ/dt near eps (up to ~1/eps = 1e5 for VE)."""
    sde = get_sde(sde_name)
    t = time_steps(sde, 8, sde.default_eps, schedule)
    assert t[0].item() == sde.T and t[-1].item() == sde.default_eps
    assert bool((t[1:] < t[:-1]).all())
    diffs = coordinate(schedule, sde, t, 7.0).diff()
    assert float((diffs - diffs.mean()).abs().max()) <= 1e-7 * float(diffs.abs().mean())


def test_karras_schedule_is_edm_eq5():
    """Karras et al. 2022, eq. 5 with σ_max = 80, σ_min = 0.002, ρ = 7, N = 18 levels, in the EDM
    noise level σ/α of VP: the nodes' σ/α equal the closed form to 1e-10 relative."""
    sde = get_sde("vp")
    t_start = float(sde.t_of_lambda(torch.tensor(-math.log(80.0), dtype=torch.float64)))
    eps = float(sde.t_of_lambda(torch.tensor(-math.log(0.002), dtype=torch.float64)))
    got = torch.tensor([n.sigma_tilde for n in nodes(sde, time_steps(sde, 17, eps, "karras", t_start, 7.0))], dtype=torch.float64)
    i = torch.arange(18, dtype=torch.float64)
    edm = (80.0 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    assert torch.allclose(got, edm, rtol=1e-10, atol=0.0)


def test_logsnr_nodes_are_geometric_in_edm_noise_level():
    """Uniform λ = -log(σ/α) means σ/α falls by the same factor at every step: (80/0.002)^(1/10)
    for 10 steps from σ/α = 80 to 0.002 under sub-VP (to 1e-9 relative)."""
    sde = get_sde("subvp")
    t_start = float(sde.t_of_lambda(torch.tensor(-math.log(80.0), dtype=torch.float64)))
    eps = float(sde.t_of_lambda(torch.tensor(-math.log(0.002), dtype=torch.float64)))
    levels = torch.tensor([n.sigma_tilde for n in nodes(sde, time_steps(sde, 10, eps, "logsnr", t_start))], dtype=torch.float64)
    ratios = levels[:-1] / levels[1:]
    assert torch.allclose(ratios, torch.full_like(ratios, (80 / 0.002) ** 0.1), rtol=1e-9, atol=0.0)


def test_node_holds_alpha_sigma_lambda():
    """Node(t) carries α(t), σ(t) and λ = log(α/σ) of the SDE; σ̃ = σ/α = e^{-λ}."""
    sde = get_sde("ve")
    (node,) = nodes(sde, torch.tensor([0.3], dtype=torch.float64))
    assert node.alpha == 1.0
    assert node.sigma == pytest.approx(0.01 * math.sqrt((50 / 0.01) ** 0.6 - 1), rel=1e-12)
    assert node.sigma_tilde == pytest.approx(math.exp(-node.lam), rel=1e-12)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"schedule": "cosine"}, "unknown time-step schedule 'cosine'; known: karras, logsnr, quadratic, time_uniform"),
        ({"rho": 0.0}, "rho must be a finite number > 0"),
        ({"t_start": 1.5}, "t_start must lie in"),
        ({"eps": 0.0}, "needs eps > 0"),
        ({"steps": 0}, "steps must be an integer >= 1"),
    ],
)
def test_bad_schedule_arguments_raise(kwargs, message):
    sde = get_sde("vp")
    args = {"steps": 4, "eps": 1e-3, "schedule": "logsnr", **kwargs}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        time_steps(sde, args.pop("steps"), args.pop("eps"), **args)


def test_registry_lists_the_four_schedules():
    assert SCHEDULES.names() == ["karras", "logsnr", "quadratic", "time_uniform"]
