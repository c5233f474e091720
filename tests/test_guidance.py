"""Guidance wrappers against exact mixture scores, at random (x, t) in float64, so that only rounding
separates the two sides of each identity (tolerance 1e-9 relative):

* ∇log p_t(y | x) by autograd through the exact classifier (the responsibilities) is s_y - s (Bayes);
* the ε form (Ho & Salimans 2022, eq. 6) and the score form of classifier-free guidance agree;
* classifier-free guidance with weight w is classifier guidance with scale 1 + w by the exact classifier;
* w = 0 is the conditional score, w = -1 the unconditional one, and γ = 1 + w is the other convention.
"""
import pytest
import torch

from sde_diffusion.conditioning.classifier import log_prob_grad, mixture_classifier
from sde_diffusion.conditioning.guidance import (
    NULL_LABEL,
    classifier_free_guidance,
    classifier_guidance,
    conditional_score_fn,
    guide,
    mixture_conditional_score_fn,
)
from sde_diffusion.core.parameterization import noise_from_score, score_from_noise
from sde_diffusion.core.sde_lib import get_sde
from sde_diffusion.core.targets import anisotropic, ring

B = 64


def perturbed_points(mix, sde, gen):
    """x = α(t) x_0 + σ(t) z with x_0 ~ p_0 and t ~ U(1e-3, 1), one t per sample, float64."""
    t = torch.rand(B, generator=gen, dtype=torch.float64) * 0.999 + 1e-3
    x0 = mix.sample(B, gen, dtype=torch.float64)
    return sde.alpha(t)[:, None] * x0 + sde.sigma(t)[:, None] * torch.randn(B, mix.dim, generator=gen, dtype=torch.float64), t


def close(a, b):
    return torch.allclose(a, b, rtol=1e-9, atol=1e-9 * float(b.abs().max()))


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("target", [ring, anisotropic], ids=["ring2d", "aniso8d"])
def test_classifier_gradient_is_difference_of_scores(sde_name, target, gen):
    """∇_x log p_t(y | x) = ∇log p_t(x | y) - ∇log p_t(x), with a different label on every row."""
    sde, mix = get_sde(sde_name), target()
    x, t = perturbed_points(mix, sde, gen)
    y = torch.randint(mix.n_components, (B,), generator=gen)
    cond = mixture_conditional_score_fn(mix, sde)
    grad = log_prob_grad(mixture_classifier(mix, sde), x, t, y)
    assert close(grad, cond(x, t, y) - cond(x, t, torch.full_like(y, NULL_LABEL)))


def test_classifier_free_guidance_score_and_noise_forms_agree(gen):
    """s̃ from ``classifier_free_guidance`` equals -ε̃/σ with ε̃ = (1 + w) ε(x, y) - w ε(x, ∅), ε = -σ s,
    and the γ-convention γ s_y + (1 - γ) s_∅ with γ = 1 + w."""
    sde, mix = get_sde("vp"), ring()
    x, t = perturbed_points(mix, sde, gen)
    cond = mixture_conditional_score_fn(mix, sde)
    alpha, sigma = sde.alpha(t), sde.sigma(t)
    s_y, s_null = cond(x, t, torch.full((B,), 3)), cond(x, t, torch.full((B,), NULL_LABEL))
    for w in (-1.0, 0.5, 2.0, 7.5):
        eps_guided = (1 + w) * noise_from_score(s_y, x, alpha, sigma) - w * noise_from_score(s_null, x, alpha, sigma)
        guided = classifier_free_guidance(cond, 3, w)(x, t)
        assert close(guided, score_from_noise(eps_guided, x, alpha, sigma))
        gamma = 1 + w
        assert close(guided, gamma * s_y + (1 - gamma) * s_null)


@pytest.mark.parametrize("w", [0.0, 1.0, 3.0])
def test_classifier_free_is_classifier_guidance_with_scale_one_plus_w(w, gen):
    """s_∅ + (1 + w)(s_y - s_∅) = s + (1 + w) ∇log p_t(y | x) for the exact classifier (8-D mixture)."""
    sde, mix = get_sde("subvp"), anisotropic()
    x, t = perturbed_points(mix, sde, gen)
    y = torch.randint(mix.n_components, (B,), generator=gen)
    cfg = classifier_free_guidance(mixture_conditional_score_fn(mix, sde), y, w)
    cg = classifier_guidance(mix.score_fn(sde), mixture_classifier(mix, sde), y, 1 + w)
    assert close(cfg(x, t), cg(x, t))


def test_guidance_weight_limits(gen):
    """w = 0 gives the conditional score, w = -1 the unconditional score, exactly."""
    sde, mix = get_sde("vp"), ring()
    x, t = perturbed_points(mix, sde, gen)
    cond = mixture_conditional_score_fn(mix, sde)
    assert close(classifier_free_guidance(cond, 5, 0.0)(x, t), cond(x, t, torch.full((B,), 5)))
    assert close(classifier_free_guidance(cond, 5, -1.0)(x, t), mix.score(x, t, sde))
    assert torch.equal(guide(torch.ones(3), torch.zeros(3), 2.0), torch.full((3,), 3.0))


def test_classifier_free_guidance_is_one_call_on_the_doubled_batch(gen):
    """Each guided evaluation calls the conditional score once, on [x; x] with labels [y; ∅]."""
    sde, mix = get_sde("vp"), ring()
    x, t = perturbed_points(mix, sde, gen)
    cond = mixture_conditional_score_fn(mix, sde)
    calls = []

    def recording(x, t, labels):
        calls.append(labels.clone())
        return cond(x, t, labels)

    classifier_free_guidance(recording, 2, 1.5)(x, t)
    assert len(calls) == 1
    assert torch.equal(calls[0], torch.cat([torch.full((B,), 2), torch.full((B,), NULL_LABEL)]))
    conditional_score_fn(recording, 2)(x, t)
    assert len(calls) == 2 and torch.equal(calls[1], torch.full((B,), 2))


def test_bad_labels_raise(gen):
    sde, mix = get_sde("vp"), ring()
    cond = mixture_conditional_score_fn(mix, sde)
    x, t = perturbed_points(mix, sde, gen)
    with pytest.raises(ValueError, match=">= 0"):
        classifier_free_guidance(cond, NULL_LABEL, 1.0)
    with pytest.raises(ValueError, match=">= 0"):
        classifier_guidance(mix.score_fn(sde), mixture_classifier(mix, sde), -1, 1.0)
    with pytest.raises(ValueError, match="integer"):
        conditional_score_fn(cond, torch.zeros(B))
    with pytest.raises(ValueError, match="integer"):
        conditional_score_fn(cond, 1.5)
    with pytest.raises(ValueError, match="< 8"):
        cond(x, t, torch.full((B,), 8))
    with pytest.raises(ValueError, match="batch has 64"):
        conditional_score_fn(cond, torch.zeros(3, dtype=torch.long))(x, t)
