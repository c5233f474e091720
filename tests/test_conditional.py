"""Conditional generation against analytic mixtures whose classes are the components, class-conditional
networks, and the time-conditioned classifier.

Tolerances. Energy distances are compared with the noise floor E|X-X'|(1/n + 1/m), the null expectation
of the V-statistic for two exact samples; over 300 replicate pairs of exact samples (n = m = 2000, a ring
component) the ratio ED/floor had mean 1.05, 99% quantile 3.0 and 99.9% quantile 4.0, so a sampler is
accepted at ratio < 4 (the step counts below put the samplers' discretisation error well inside this:
measured ratios 0.6-1.5). Means are compared within 4 standard errors √(var/n).
"""
import math
import os
import re

import numpy as np
import pytest
import torch
from ml_collections import ConfigDict

import solvers
from sde_diffusion.app.build import draw_samples, sample_labels
from sde_diffusion.app.commands import sample_command
from sde_diffusion.app.config import apply_overrides, load_config
from sde_diffusion.app.train import train
from sde_diffusion.conditioning.classifier import (
    NoisyClassifier,
    classifier_loss,
    get_classifier_fn,
    mixture_classifier,
    train_classifier,
)
from sde_diffusion.conditioning.guidance import (
    NULL_LABEL,
    classifier_guidance,
    conditional_score_fn,
    mixture_conditional_score_fn,
)
from sde_diffusion.core.mixtures import GaussianMixture
from sde_diffusion.core.sde_lib import get_sde
from sde_diffusion.core.targets import anisotropic, ring
from sde_diffusion.evaluation.metrics import energy_distance, energy_noise_floor
from sde_diffusion.models import ScoreMLP, UNet, get_score_fn
from sde_diffusion.training.losses import drop_labels, get_loss_fn

#: Samplers and step counts whose conditional samples are checked (ED/floor measured 0.6-1.5).
SAMPLERS = [
    ("euler_maruyama", {"steps": 200}),
    ("pc", {"steps": 100}),
    ("ode", {}),
    ("dpm_solver_pp", {"steps": 20}),
    ("edm", {"steps": 40}),
    ("unipc", {"steps": 20}),
]
N = 2000


def component(mix: GaussianMixture, k: int) -> GaussianMixture:
    return GaussianMixture([1.0], mix.means[k : k + 1], mix.covariances[k : k + 1])


def overlapping_pair() -> GaussianMixture:
    """Two unit-variance Gaussians at (∓1, 0) with weights 0.7, 0.3: p_0(y | x) is far from 0 and 1."""
    return GaussianMixture([0.7, 0.3], [[-1.0, 0.0], [1.0, 0.0]], [torch.eye(2).tolist()] * 2)


def assert_samples_component(mix: GaussianMixture, x: torch.Tensor, k: int) -> None:
    """All but ≤ 0.1% of the samples sit on mode k, and their law is component k's (ED/floor < 4)."""
    exact = component(mix, k)
    assert float((mix.assign(x) == k).double().mean()) >= 0.999
    reference = exact.sample(N, torch.Generator().manual_seed(99))
    floor = energy_noise_floor(exact.sample(4000, torch.Generator().manual_seed(98)), x.shape[0], N)
    assert energy_distance(x, reference) < 4 * floor


@pytest.mark.parametrize("method, options", SAMPLERS, ids=[m for m, _ in SAMPLERS])
def test_conditional_score_samples_the_chosen_component(method, options, gen):
    """With the exact class-conditional score of the ring, every sampler returns its least likely mode
    (prior weight 1/36) and nothing else."""
    sde, mix = get_sde("vp"), ring()
    score = conditional_score_fn(mixture_conditional_score_fn(mix, sde), 0)
    x, _ = solvers.sample(sde, score, (N, 2), method, generator=gen, **options)
    assert_samples_component(mix, x, 0)


def test_per_sample_labels_in_one_batch(gen):
    """Random labels per row on the 8-D mixture: each sample lands on its own label's component
    (≥ 99.9% of 2000; the components are ≥ 7 standard deviations apart)."""
    sde, mix = get_sde("vp"), anisotropic()
    labels = torch.randint(mix.n_components, (N,), generator=gen)
    score = conditional_score_fn(mixture_conditional_score_fn(mix, sde), labels)
    x, _ = solvers.sample(sde, score, (N, mix.dim), "dpm_solver_pp", steps=20, generator=gen)
    assert float((mix.assign(x) == labels).double().mean()) >= 0.999


@pytest.mark.parametrize("method, options", SAMPLERS[2:4], ids=[m for m, _ in SAMPLERS[2:4]])
def test_classifier_guidance_at_scale_one_is_the_conditional(method, options, gen):
    """s + 1·∇log p_t(y | x) with the exact classifier (autograd through the responsibilities) is the
    conditional score: the samples are the ring's least likely mode."""
    sde, mix = get_sde("vp"), ring()
    score = classifier_guidance(mix.score_fn(sde), mixture_classifier(mix, sde), 0, 1.0)
    x, _ = solvers.sample(sde, score, (N, 2), method, generator=gen, **options)
    assert_samples_component(mix, x, 0)


def tilted_class_probability(mix: GaussianMixture, y: int, scale: float) -> float:
    """E[p_0(y | x)] under the tilted density p_0(x) p_0(y | x)^s / Z, by quadrature along x_1 (for
    ``overlapping_pair`` p_0(y | x) depends on x_1 only and x_2 integrates out): trapezoid on 8001
    points over [-12, 12], error ≪ 1e-8."""
    x1 = torch.linspace(-12, 12, 8001, dtype=torch.float64)
    pts = torch.stack([x1, torch.zeros_like(x1)], 1)
    density, r = mix.log_prob(pts).exp(), mix.responsibilities(pts)[:, y]
    return float(torch.trapezoid(density * r ** (scale + 1), x1) / torch.trapezoid(density * r**scale, x1))


def test_guidance_scale_what_holds(gen):
    """Classifier guidance s(x) + s ∇log p_t(y | x) on two overlapping classes (prior 0.3 for y = 1),
    exact classifier, DPM-Solver++ on 20 steps (its error here ≤ 0.01 on every figure below, measured
    against the adaptive probability-flow ODE), n = 20000 (SE of a mean coordinate ≤ √(2/n) = 0.01):

    * s = 0 samples p_0 (mean of x_1 = 0.7·(-1) + 0.3·1 = -0.4) and s = 1 samples p_0(x | y) = N((1, 0), I),
      within 4 SE;
    * E[p_0(y | x)] over the samples increases with s;
    * for s ≠ 1 the law is not the tilted density p_0 p_0(y | ·)^s / Z (guidance tilts every p_t, which
      does not commute with noising): guidance concentrates more on class y than the tilt for s > 1 and
      less for s < 1, by more than 5 SE (measured gaps 0.05-0.11, SE of E[p(y|x)] ≤ 0.5/√n = 0.0035).
    """
    sde, mix, y, n = get_sde("vp"), overlapping_pair(), 1, 20000
    se = 1 / math.sqrt(n)
    probability = {}
    for s in (0.0, 0.5, 1.0, 2.0, 4.0):
        score = classifier_guidance(mix.score_fn(sde), mixture_classifier(mix, sde), y, s)
        x, _ = solvers.sample(sde, score, (n, 2), "dpm_solver_pp", steps=20, generator=torch.Generator().manual_seed(1))
        x = x.double()
        probability[s] = float(mix.responsibilities(x)[:, y].mean())
        if s == 0.0:
            assert abs(float(x[:, 0].mean()) + 0.4) < 4 * math.sqrt(float(mix.covariance()[0, 0])) * se
        if s == 1.0:
            assert torch.allclose(x.mean(0), torch.tensor([1.0, 0.0], dtype=torch.float64), atol=4 * se)
            assert torch.allclose(x.var(0), torch.ones(2, dtype=torch.float64), atol=4 * math.sqrt(2) * se)
            assert abs(probability[s] - tilted_class_probability(mix, y, s)) < 4 * 0.5 * se
        if s in (2.0, 4.0):
            assert probability[s] > tilted_class_probability(mix, y, s) + 5 * 0.5 * se
        if s == 0.5:
            assert probability[s] < tilted_class_probability(mix, y, s) - 5 * 0.5 * se
    values = [probability[s] for s in sorted(probability)]
    assert all(b > a + 5 * 0.5 * se for a, b in zip(values, values[1:]))


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Redraw every parameter: the zero-initialised layers would otherwise hide the label's effect."""
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return model


@pytest.mark.parametrize("network", ["mlp", "unet"])
def test_label_embedding(network, gen):
    """A class-conditional network's output depends on the label; ``NULL_LABEL`` and ``labels=None``
    are the same ∅ input; each row uses its own label (a row of a mixed batch equals that row of a
    batch with its label everywhere up to the kernels' float32 rounding, within 1e-5 of the output's
    scale: rows are never combined); an unconditional network refuses labels."""
    torch.manual_seed(0)
    if network == "mlp":
        model, x = ScoreMLP(dim=2, hidden=32, num_blocks=2, num_classes=3), torch.randn(6, 2, generator=gen)
    else:
        model, x = UNet(image_size=4, nf=8, ch_mult=(1,), num_res_blocks=1, num_classes=3), torch.randn(6, 1, 4, 4, generator=gen)
    randomise(model)
    model.eval()
    c = torch.linspace(-3, 3, 6)
    labels = torch.tensor([0, 1, 2, NULL_LABEL, 1, 0])
    with torch.no_grad():
        mixed = model(x, c, labels)
    for k in (0, 1, 2, NULL_LABEL):
        rows = labels == k
        assert torch.allclose(mixed[rows], model(x, c, torch.full((6,), k))[rows], rtol=0, atol=1e-5 * float(mixed.abs().max()))
    assert torch.equal(model(x, c), model(x, c, torch.full((6,), NULL_LABEL)))
    with torch.no_grad():
        assert float((model(x, c, torch.zeros(6, dtype=torch.long)) - model(x, c, torch.ones(6, dtype=torch.long))).abs().min()) > 0
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        model(x, c, torch.full((6,), 3))
    with pytest.raises(ValueError, match="unconditional"):
        ScoreMLP(dim=2)(torch.zeros(6, 2), c, labels)


def test_condition_dropout(gen):
    """``drop_labels`` replaces each label by ∅ with probability p (binomial, 4 SE on n = 100000) and
    keeps the others; in training, the ∅ row of the embedding learns only when p > 0."""
    labels = torch.randint(10, (100000,), generator=gen)
    dropped = drop_labels(labels, 0.1, gen)
    kept = dropped != NULL_LABEL
    assert abs(1 - float(kept.double().mean()) - 0.1) < 4 * math.sqrt(0.1 * 0.9 / 100000)
    assert torch.equal(dropped[kept], labels[kept])
    assert torch.equal(drop_labels(labels, 0.0, gen), labels)

    sde, mix = get_sde("vp"), ring()
    x0, y = mix.sample(256, gen, return_labels=True)
    for p, learns in ((0.0, False), (0.5, True)):
        torch.manual_seed(0)
        model = ScoreMLP(dim=2, hidden=32, num_blocks=1, num_classes=8)
        null_row = model.time_embedding.label_embedding.weight[8].clone()
        loss_fn = get_loss_fn(sde, ConfigDict({"loss": "dsm", "cond_drop_prob": p}))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(3):
            opt.zero_grad()
            loss_fn(model, x0, gen, y).backward()
            opt.step()
        assert torch.equal(model.time_embedding.label_embedding.weight[8], null_row) != learns
    with pytest.raises(ValueError, match="cond_drop_prob"):
        get_loss_fn(sde, ConfigDict({"loss": "dsm", "cond_drop_prob": 1.0}))


def test_conditional_score_fn_of_a_network_uses_the_labels(gen):
    """``get_score_fn``'s optional labels reach the network: a conditional score differs by label and
    its ∅ score equals the plain two-argument call."""
    sde = get_sde("vp")
    torch.manual_seed(0)
    model = randomise(ScoreMLP(dim=2, hidden=32, num_blocks=1, num_classes=2)).eval()
    score = get_score_fn(sde, model)
    x, t = torch.randn(8, 2, generator=gen), torch.full((8,), 0.3)
    assert torch.equal(score(x, t), score(x, t, torch.full((8,), NULL_LABEL)))
    assert not torch.allclose(score(x, t, torch.zeros(8, dtype=torch.long)), score(x, t, torch.ones(8, dtype=torch.long)))


def test_noisy_classifier_approaches_the_bayes_classifier(gen):
    """Cross-entropy over t of a small classifier trained 300 steps on ``overlapping_pair``, on 20000
    held-out (x_t, t) shared with the exact classifier: it cannot beat the Bayes CE (0.52 nats) by more
    than noise and must be within 0.04 nats of it (measured gap 0.016), far below the 0.61 nats of the
    label prior alone. Its gradient then guides the samples towards the class (E p_0(y | x) rises from
    0.30 unguided to > 0.5 at s = 1; exact guidance gives 0.66)."""
    sde, mix = get_sde("vp"), overlapping_pair()
    x, labels = mix.sample(20000, gen, return_labels=True)
    torch.manual_seed(0)
    model = NoisyClassifier(dim=2, num_classes=2, hidden=64, num_blocks=1)
    history = train_classifier(sde, model, x, labels, n_iters=300, batch_size=256, generator=gen)
    assert len(history) == 300 and sum(history[-50:]) < sum(history[:50])
    x_test, y_test = mix.sample(20000, torch.Generator().manual_seed(5), return_labels=True)
    with torch.no_grad():
        ce_model = float(classifier_loss(sde, get_classifier_fn(sde, model), x_test, y_test, 1e-5, torch.Generator().manual_seed(7)))
    ce_bayes = float(classifier_loss(sde, mixture_classifier(mix, sde), x_test.double(), y_test, 1e-5, torch.Generator().manual_seed(7)))
    prior_ce = -(0.7 * math.log(0.7) + 0.3 * math.log(0.3))
    assert ce_bayes - 0.01 < ce_model < ce_bayes + 0.04 < prior_ce - 0.05
    score = classifier_guidance(mix.score_fn(sde), get_classifier_fn(sde, model), 1, 1.0)
    samples, _ = solvers.sample(sde, score, (4000, 2), "dpm_solver_pp", steps=20, generator=gen)
    assert float(mix.responsibilities(samples)[:, 1].mean()) > 0.5


CONDITIONAL_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "digits_vp_conditional.py")
#: The conditional digits config, shrunk for a smoke run: a 2-step U-Net with 8 channels.
SMOKE = {"model.nf": 8, "training.n_iters": 2, "training.batch_size": 16, "training.sample_freq": 0,
         "training.snapshot_freq": 2, "training.progress": False, "sampling.steps": 2, "sampling.n_samples": 20}


def test_sampling_config_selects_labels_and_guidance():
    """``class_label = -1`` asks for n // C samples of each class in turn, and the guided score function
    evaluates the labels [y; ∅] on the doubled batch; a single class repeats it."""
    config = load_config(CONDITIONAL_CONFIG, SMOKE)
    seen = []

    def recording(x, t, labels):
        seen.append(labels.clone())
        return torch.zeros_like(x)

    x, nfe = draw_samples(config, get_sde("vp"), recording, 20, seed=0, progress=False)
    assert x.shape == (20, 1, 8, 8) and nfe == len(seen) == 3  # 2 steps + the final denoise
    expected = torch.arange(10).repeat_interleave(2)
    assert all(torch.equal(y, torch.cat([expected, torch.full((20,), NULL_LABEL)])) for y in seen)
    assert torch.equal(sample_labels(apply_overrides(config, {"sampling.class_label": 3}), 5), torch.full((5,), 3))
    assert sample_labels(apply_overrides(config, {"sampling.class_label": None}), 5) is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"sampling.class_label": 10}, "must be < config.model.num_classes=10"),
        ({"sampling.class_label": -2}, "config.sampling.class_label"),
        ({"sampling.class_label": -1, "sampling.n_samples": 5}, "n_samples >= 10"),
        ({"training.cond_drop_prob": 0.0}, "cond_drop_prob > 0"),
        ({"training.cond_drop_prob": 1.0}, "config.training.cond_drop_prob"),
        ({"model.num_classes": 0}, "needs a class-conditional model"),
        ({"model.num_classes": 7}, "with 7 classes"),
        ({"training.loss": "stf"}, "a class-conditional model (config.model.num_classes=10) needs loss 'dsm'"),
    ],
)
def test_bad_conditional_configs_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config(CONDITIONAL_CONFIG, overrides)


def test_train_and_sample_a_conditional_digits_model(tmp_path):
    """The conditional config trains (labels and condition dropout reach the loss) and ``sample`` writes
    a grid with one row per class, 2 samples each, and a single-class guided run."""
    workdir = str(tmp_path)
    config = load_config(CONDITIONAL_CONFIG, SMOKE)
    assert train(config, workdir).step == 2
    paths = sample_command(config, workdir)
    assert np.load(paths[1])["samples"].shape == (20, 1, 8, 8)
    single = load_config(CONDITIONAL_CONFIG, {**SMOKE, "sampling.class_label": 3, "sampling.guidance_scale": 4.0})
    paths = sample_command(single, workdir, tag="three")
    assert paths[0].endswith("three.png") and np.isfinite(np.load(paths[1])["samples"]).all()
