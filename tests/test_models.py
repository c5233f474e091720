"""Score networks and ``get_score_fn``: shapes, noise-level dependence, the preconditioning
convention (checked with an oracle network built from an exact mixture score), and a short DSM
training run that must approach the analytic score."""

import pytest
import torch
from ml_collections import ConfigDict

from sde_diffusion.core.mixtures import GaussianMixture
from sde_diffusion.core.parameterization import PARAMETERIZATIONS
from sde_diffusion.core.sde_lib import get_sde
from sde_diffusion.core.targets import ring
from sde_diffusion.models import (
    MODELS,
    GaussianFourierEmbedding,
    ScoreNetwork,
    SinusoidalEmbedding,
    create_model,
    get_score_fn,
)
from sde_diffusion.training.losses import dsm_loss, get_loss_fn

ALL_SDES = ["vp", "subvp", "ve", "cosine_vp"]

# (config, input shape): vectors, flattened images through the MLP, and U-Nets at 8×8 and 32×32.
NETWORKS = [
    (dict(name="mlp", dim=2, hidden=32, num_blocks=2, embedding_dim=16), (6, 2)),
    (dict(name="mlp", dim=16, hidden=32, num_blocks=1, embedding_type="sinusoidal", embedding_dim=16), (6, 1, 4, 4)),
    (dict(name="unet", image_size=8, num_channels=1, nf=16, ch_mult=(1, 2), num_res_blocks=1, dropout=0.0), (6, 1, 8, 8)),
    (
        dict(name="unet", image_size=32, num_channels=3, nf=16, ch_mult=(1, 2, 2), num_res_blocks=1,
             attn_resolutions=(16,), num_heads=2, embedding_type="sinusoidal", resamp_with_conv=False),
        (3, 3, 32, 32),
    ),
]


def _randomize(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Replace every parameter by N(0, 0.1²) draws, undoing the zero initialisation of the output
    layers (which makes an untrained network identically 0 and hence trivially t-independent)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("config,shape", NETWORKS, ids=["mlp-vector", "mlp-image", "unet-8", "unet-32"])
def test_network_preserves_shape_and_depends_on_noise_level(config, shape, gen):
    """An untrained network outputs exactly 0 (zero-initialised last layer). With random weights the
    output has the input's shape, changes with c_noise (relative change ≫ float32 rounding, 1e-6),
    is reproducible, and treats samples independently: sample i's output in a batch equals its
    output alone (up to float32 summation-order rounding, 1e-5) — this fails if GroupNorm or the
    attention reshapes mixed the batch dimension."""
    torch.manual_seed(0)
    model = create_model(ConfigDict(config)).eval()
    x = torch.randn(shape, generator=gen)
    c = torch.full((shape[0],), -2.0)
    assert torch.equal(model(x, c), torch.zeros(shape))
    _randomize(model, gen)
    with torch.no_grad():
        out_lo, out_hi = model(x, c), model(x, c + 5.0)
        alone = model(x[:1], c[:1])
    assert out_lo.shape == x.shape
    assert torch.isfinite(out_lo).all()
    assert float((out_hi - out_lo).norm() / out_lo.norm()) > 1e-2
    assert torch.equal(model(x, c), out_lo)
    assert torch.allclose(alone, out_lo[:1], rtol=1e-5, atol=1e-5 * float(out_lo.abs().max()))


@pytest.mark.parametrize("config,shape", NETWORKS[2:3], ids=["unet-8"])
def test_unet_output_depends_on_every_input_pixel(config, shape, gen):
    """Self-attention and the down/up path give every output pixel a receptive field covering the
    whole 8×8 image: the gradient of one corner output w.r.t. the input is non-zero at the opposite
    corner (a U-Net missing its skip/attention wiring, or with a broken reshape, has zeros there)."""
    model = create_model(ConfigDict(config)).eval()
    _randomize(model, gen)
    x = torch.randn(shape, generator=gen).requires_grad_(True)
    model(x, torch.zeros(shape[0]))[0, 0, 0, 0].backward()
    grad = x.grad[0, 0]
    assert float(grad[-1, -1].abs()) > 0
    assert float(x.grad[1:].abs().max()) == 0.0  # no leakage across the batch


def _oracle_network(mixture: GaussianMixture, sde, parameterization: str, sigma_data: float) -> ScoreNetwork:
    """A 'network' that inverts the documented preconditioning exactly: from c_noise = log(σ/α) it
    recovers t = t(λ = -c_noise), from x_in = c_in x it recovers x, and it outputs the exact
    mixture score converted to ``parameterization``. get_score_fn must then return the exact score."""

    class Oracle(ScoreNetwork):
        def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
            t = sde.t_of_lambda(-c_noise.to(torch.float64))
            alpha, sigma = sde.alpha(t), sde.sigma(t)
            c_in = 1 / torch.sqrt(alpha**2 * sigma_data**2 + sigma**2)
            x = x_in / c_in[:, None]
            score = mixture.score(x, t, sde)
            return PARAMETERIZATIONS.get(parameterization).from_score(score, x, alpha, sigma)

    return Oracle(parameterization, sigma_data)


@pytest.mark.parametrize("sde_name", ALL_SDES)
@pytest.mark.parametrize("parameterization", ["noise", "score", "data"])
def test_get_score_fn_follows_the_documented_convention(sde_name, parameterization, gen):
    """Every parameterisation converts back to the same (exact) score, for every SDE. All in
    float64; the round trip through t(λ) and the conversions loses ≲ 1e-12 relative, so rtol 1e-8.
    A different time input (e.g. t itself, or 999 t), a different c_in, or a wrong conversion
    (score_sde's VE output taken as the score without the 1/σ) breaks the equality by O(1)."""
    sde = get_sde(sde_name)
    mixture = ring()
    x = 3 * torch.randn(64, 2, generator=gen, dtype=torch.float64)
    t = torch.linspace(0.02, 1.0, 64, dtype=torch.float64)
    score_fn = get_score_fn(sde, _oracle_network(mixture, sde, parameterization, sigma_data=0.7))
    assert torch.allclose(score_fn(x, t), mixture.score(x, t, sde), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("sde_name", ALL_SDES)
def test_network_input_has_unit_variance(sde_name, gen):
    """c_in = 1/√(α² σ_data² + σ²) with σ_data the data RMS makes E[x_in²] = 1 at every t for every
    SDE (x_t = α x_0 + σ z with z independent of x_0). σ_data is the RMS of the same 40000 points,
    so only z fluctuates: x_in² per number has variance ≤ 2 (its kurtosis is at most the
    Gaussian's 3), and counting the two coordinates of a point as one observation the standard
    error of the mean is ≤ √(2/40000) = 0.007; tolerance 0.04 (5.7 SE). Without c_in the VE input
    at t = 1 would have mean square ≈ 2500."""
    sde = get_sde(sde_name)
    x0 = ring().sample(40000, gen, dtype=torch.float64)
    rms = float(x0.pow(2).mean().sqrt())
    model = create_model(ConfigDict(dict(name="mlp", dim=2, hidden=8, num_blocks=1, embedding_dim=4, sigma_data=rms))).double()
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    score_fn = get_score_fn(sde, model)
    for t in (0.01, 0.3, 1.0):
        tt = torch.full((x0.shape[0],), t, dtype=torch.float64)
        xt = sde.alpha(tt)[:, None] * x0 + sde.sigma(tt)[:, None] * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        score_fn(xt, tt)
        assert abs(float(seen[-1].pow(2).mean()) - 1.0) < 0.04, (t, float(seen[-1].pow(2).mean()))


def test_time_embeddings():
    """Sinusoidal frequencies run geometrically from ``scale`` down to scale/max_period; Fourier
    features are unit-norm (sin, cos) pairs with frequencies stored as a buffer, so they travel
    with ``state_dict`` (a checkpoint reloaded into a differently seeded model reproduces it)."""
    sin = SinusoidalEmbedding(8, scale=100.0, max_period=10000.0)
    assert torch.allclose(sin.freqs, torch.tensor([100.0, 100.0 / 10000 ** (1 / 3), 100.0 / 10000 ** (2 / 3), 0.01]))
    torch.manual_seed(1)
    fourier = GaussianFourierEmbedding(16)
    c = torch.linspace(-5, 5, 7)
    features = fourier(c)
    assert torch.allclose(features[:, :8] ** 2 + features[:, 8:] ** 2, torch.ones(7, 8))
    torch.manual_seed(2)
    other = GaussianFourierEmbedding(16)
    assert not torch.allclose(other(c), features)
    other.load_state_dict(fourier.state_dict())
    assert torch.equal(other(c), features)


def test_create_model_rejects_bad_configs():
    with pytest.raises(ValueError, match="unknown model 'resnet'; known: mlp, unet"):
        create_model(ConfigDict(dict(name="resnet")))
    with pytest.raises(ValueError, match="needs a 'name'"):
        create_model(ConfigDict(dict(nf=8)))
    with pytest.raises(ValueError, match="bad arguments for model 'mlp'.*widht"):
        create_model(ConfigDict(dict(name="mlp", widht=3)))
    with pytest.raises(ValueError, match="unknown parameterization 'eps'; known: data, noise, score"):
        create_model(ConfigDict(dict(name="mlp", parameterization="eps")))
    with pytest.raises(ValueError, match="sigma_data"):
        create_model(ConfigDict(dict(name="mlp", sigma_data=0.0)))
    with pytest.raises(ValueError, match=r"attn_resolutions \[3\] .* allowed: \[8, 4\]"):
        create_model(ConfigDict(dict(name="unet", image_size=8, ch_mult=(1, 2), attn_resolutions=(3,))))
    with pytest.raises(ValueError, match="image_size=12 must be divisible by 2\\^3"):
        create_model(ConfigDict(dict(name="unet", image_size=12, ch_mult=(1, 1, 2, 2))))
    with pytest.raises(ValueError, match="dropout"):
        create_model(ConfigDict(dict(name="unet", dropout=1.5)))
    with pytest.raises(ValueError, match="unknown time embedding 'gauss'"):
        create_model(ConfigDict(dict(name="mlp", embedding_type="gauss")))
    unet = create_model(ConfigDict(dict(name="unet", image_size=8, nf=8, ch_mult=(1, 2), num_res_blocks=1)))
    with pytest.raises(ValueError, match=r"expects inputs of shape \(B, 1, 8, 8\), got \(2, 1, 16, 16\)"):
        unet(torch.zeros(2, 1, 16, 16), torch.zeros(2))
    assert MODELS.names() == ["mlp", "unet"]


def test_dsm_training_approaches_the_analytic_score():
    """Seeds checklist §5.2.11: a network trained by DSM on Gaussian data approaches the exact score.

    Data N(m, diag(0.25, 1)) in 2-D under VP; the exact perturbed score is linear. Measured with
    common random numbers on 8192 fresh points, the excess of the σ²-weighted DSM loss over the
    exact score's is E σ² ‖s_θ - ∇log p_t‖² (Vincent 2011), here per dimension. The untrained
    network (s = 0) has excess E σ²/(α² v + σ²) ≈ 0.78 (measured: 0.783 ± 0.011); after 200 Adam
    steps it must be below 10% of that (0.018 measured; the paired differences of a score 10% off,
    0.9·∇log p_t, already give 0.0075 ± 0.0004, so the threshold is far above the estimator's
    noise and fails only if training does not work)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    sde = get_sde("vp")
    data = GaussianMixture([1.0], [[1.0, -0.5]], [[[0.25, 0.0], [0.0, 1.0]]])
    model = create_model(ConfigDict(dict(name="mlp", dim=2, hidden=32, num_blocks=2, embedding_dim=32, sigma_data=1.0)))
    loss_fn = get_loss_fn(sde, ConfigDict(dict(loss="dsm", weighting="sigma2", reduce="mean", eps=1e-3)))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x0 = data.sample(8192, gen)
    t = 1e-3 + (1 - 1e-3) * torch.rand(8192, generator=gen)
    z = torch.randn(x0.shape, generator=gen)

    def excess(score_fn) -> float:
        return float((dsm_loss(sde, score_fn, x0, t, z) - dsm_loss(sde, data.score_fn(sde), x0, t, z)).mean()) / 2

    with torch.no_grad():
        before = excess(get_score_fn(sde, model))
    for _ in range(200):
        opt.zero_grad()
        loss_fn(model, data.sample(256, gen), gen).backward()
        opt.step()
    with torch.no_grad():
        after = excess(get_score_fn(sde, model))
    assert before > 0.3
    assert 0 <= after < 0.1 * before, (before, after)
