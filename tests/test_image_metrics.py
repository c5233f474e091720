"""Image-quality metrics (``sde_diffusion.evaluation.image_metrics``) and the feature classifier
(``sde_diffusion.evaluation.features``)."""
import importlib.util
import json
import math
import os
from types import SimpleNamespace

import pytest
import torch

from sde_diffusion.core.mixtures import GaussianMixture
from sde_diffusion.core.sde_lib import get_sde
from sde_diffusion.data import datasets
from sde_diffusion.evaluation.benchmark import Benchmark, Problem, write_report
from sde_diffusion.evaluation.features import FeatureNetSettings, feature_fn, load_or_train_feature_net
from sde_diffusion.evaluation.image_metrics import (
    ImageMetrics,
    feature_statistics,
    frechet_distance,
    frechet_distance_of_features,
    kernel_distance,
    polynomial_kernel,
)

DIGITS = SimpleNamespace(dataset="digits", centered=True, seed=0, test_fraction=0.2)


def _spd(g: torch.Generator, d: int) -> torch.Tensor:
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_distance_of_two_gaussians_equals_the_closed_form(gen):
    """For 2×2 PSD M, Tr √M = √(Tr M + 2 √det M) (the eigenvalues' square roots summed), so in d = 2
    FD = |μ₁ - μ₂|² + Tr Σ₁ + Tr Σ₂ - 2 √(Tr Σ₁Σ₂ + 2 √(det Σ₁ det Σ₂)), for non-commuting Σ₁, Σ₂.
    Both sides are float64 with entries O(1): agreement to 1e-10."""
    for _ in range(5):
        mu1, mu2 = (torch.randn(2, generator=gen, dtype=torch.float64) for _ in range(2))
        c1, c2 = _spd(gen, 2), _spd(gen, 2)
        exact = (mu1 - mu2).pow(2).sum() + c1.trace() + c2.trace() - 2 * torch.sqrt((c1 @ c2).trace() + 2 * torch.sqrt(c1.det() * c2.det()))
        assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(float(exact), abs=1e-10)


def test_frechet_distance_of_commuting_covariances(gen):
    """Covariances with common eigenvectors U: Σ₁ = U diag(a) Uᵀ, Σ₂ = U diag(b) Uᵀ give
    FD = |μ₁ - μ₂|² + Σ_k (√a_k - √b_k)² in any dimension (here 6); FD(N, N) = 0 to round-off."""
    u, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    a, b = torch.rand(6, generator=gen, dtype=torch.float64) + 0.1, torch.rand(6, generator=gen, dtype=torch.float64) + 0.1
    mu1, mu2 = torch.randn(6, generator=gen, dtype=torch.float64), torch.randn(6, generator=gen, dtype=torch.float64)
    exact = (mu1 - mu2).pow(2).sum() + (a.sqrt() - b.sqrt()).pow(2).sum()
    c1, c2 = u @ torch.diag(a) @ u.T, u @ torch.diag(b) @ u.T
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(float(exact), abs=1e-10)
    assert abs(frechet_distance(mu1, c1, mu1, c1)) < 1e-10


def test_frechet_distance_matches_the_sqrtm_form(gen):
    """The symmetric form Tr (Σ₁^½ Σ₂ Σ₁^½)^½ against pytorch-fid's Tr sqrtm(Σ₁Σ₂) (scipy), on
    random 8-d covariances (float64; the non-symmetric square root loses a few digits: 1e-8)."""
    from scipy import linalg

    c1, c2 = _spd(gen, 8), _spd(gen, 8)
    mu = torch.zeros(8, dtype=torch.float64)
    sqrtm_form = float(c1.trace() + c2.trace() - 2 * linalg.sqrtm((c1 @ c2).numpy()).real.trace())
    assert frechet_distance(mu, c1, mu, c2) == pytest.approx(sqrtm_form, rel=1e-8)


def test_frechet_distance_of_samples_converges_to_the_closed_form(gen):
    """Gaussian samples (n = 100 000 each, d = 2, equal means) against the closed form: the error is
    that of the fitted covariances, each entry off by about √(2/n) |Σ| ≈ 0.0045 |Σ|, so 5 of those
    times (Tr Σ₁ + Tr Σ₂) bounds it."""
    c1, c2 = _spd(gen, 2), _spd(gen, 2)
    n = 100_000
    x = torch.randn(n, 2, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(c1).T
    y = torch.randn(n, 2, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(c2).T
    zero = torch.zeros(2, dtype=torch.float64)
    tol = 5 * math.sqrt(2 / n) * float(c1.trace() + c2.trace())
    assert frechet_distance_of_features(x, y) == pytest.approx(frechet_distance(zero, c1, zero, c2), abs=tol)
    mu, cov = feature_statistics(x)
    assert torch.allclose(cov, torch.cov(x.T), atol=1e-12)


def _mmd2_by_definition(x: torch.Tensor, y: torch.Tensor) -> float:
    n, m = x.shape[0], y.shape[0]
    kxx, kyy = polynomial_kernel(x, x), polynomial_kernel(y, y)
    return float((kxx.sum() - kxx.trace()) / (n * (n - 1)) + (kyy.sum() - kyy.trace()) / (m * (m - 1)) - 2 * polynomial_kernel(x, y).mean())


def test_kernel_distance_is_the_unbiased_mmd_with_its_jackknife_error(gen):
    """KID equals MMD²_u written out from its definition, and its standard error the delete-one
    jackknife over both sets with every leave-one-out estimate recomputed from scratch (float64
    sums of a few thousand O(1) terms: 1e-9 relative)."""
    x = torch.randn(30, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(25, 4, generator=gen, dtype=torch.float64) + 0.3
    kid, se = kernel_distance(x, y)
    assert kid == pytest.approx(_mmd2_by_definition(x, y), rel=1e-9)
    lx = torch.tensor([_mmd2_by_definition(torch.cat([x[:i], x[i + 1 :]]), y) for i in range(30)], dtype=torch.float64)
    ly = torch.tensor([_mmd2_by_definition(x, torch.cat([y[:j], y[j + 1 :]])) for j in range(25)], dtype=torch.float64)
    variance = 29 / 30 * (lx - lx.mean()).pow(2).sum() + 24 / 25 * (ly - ly.mean()).pow(2).sum()
    assert se == pytest.approx(float(variance.sqrt()), rel=1e-9)


def test_kernel_distance_is_unbiased_and_its_error_is_calibrated(gen):
    """Over R = 300 repetitions: under the null (one law) the mean KID is 0 within 4 standard errors
    of that mean (std/√R); under a shift the jackknife standard error is on average at least 0.8 of
    the estimates' spread (the jackknife is conservative in expectation; the spread itself is known
    to about 1/√(2R) = 4%) and not more than twice it."""
    reps, n = 300, 60
    null, shifted, errors = [], [], []
    for _ in range(reps):
        x = torch.randn(n, 4, generator=gen, dtype=torch.float64)
        null.append(kernel_distance(x, torch.randn(n, 4, generator=gen, dtype=torch.float64))[0])
        kid, se = kernel_distance(x, torch.randn(n, 4, generator=gen, dtype=torch.float64) + 0.5)
        shifted.append(kid)
        errors.append(se)
    null_t, shifted_t = torch.tensor(null), torch.tensor(shifted)
    assert abs(float(null_t.mean())) < 4 * float(null_t.std()) / math.sqrt(reps)
    ratio = sum(errors) / reps / float(shifted_t.std())
    assert 0.8 < ratio < 2.0


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="at least 3 points"):
        kernel_distance(torch.zeros(2, 3), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="dimensions differ"):
        kernel_distance(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance_of_features(torch.full((5, 3), math.nan), torch.zeros(5, 3))


# --- on the digits, with the classifier trained on their training split ---------------------------
@pytest.fixture(scope="module")
def digits_metrics(tmp_path_factory):
    """The feature classifier trained on the digits' training split (a few seconds), cached in a
    temporary directory, and the metrics against the test set."""
    train, test = datasets.get_dataset(DIGITS)
    train_labels, test_labels = datasets.get_labels(DIGITS)
    path = str(tmp_path_factory.mktemp("features") / "digits.pt")
    settings = FeatureNetSettings(jitter=datasets.bin_width(DIGITS))
    args = (path, train, train_labels, test, test_labels)
    net, info = load_or_train_feature_net(*args, num_classes=10, settings=settings)
    return SimpleNamespace(args=args, settings=settings, info=info, train=train, test=test, metrics=ImageMetrics(feature_fn(net), test, info=info))


def test_feature_classifier_is_cached_with_its_accuracy(digits_metrics):
    """The cache holds the weights and a JSON with the test accuracy (the classifier recognises the
    held-out digits: above 90%, chance is 10%); the same inputs load it (same weights hash), other
    settings retrain."""
    path = digits_metrics.args[0]
    with open(path + ".json", encoding="utf-8") as fh:
        recorded = json.load(fh)
    assert recorded["test_accuracy"] == digits_metrics.info["test_accuracy"] > 0.9
    lines = []
    _, again = load_or_train_feature_net(*digits_metrics.args, num_classes=10, settings=digits_metrics.settings, log=lines.append)
    assert again["weights_sha256"] == recorded["weights_sha256"] and "loaded" in lines[0]
    other = FeatureNetSettings(epochs=1, jitter=digits_metrics.settings.jitter)
    _, retrained = load_or_train_feature_net(*digits_metrics.args, num_classes=10, settings=other, log=lines.append)
    assert retrained["weights_sha256"] != recorded["weights_sha256"] and "trained" in lines[1]
    assert os.path.getsize(path) > 0


def test_test_set_against_training_set_is_near_the_floor_and_noise_raises_both(digits_metrics):
    """Training images are samples of the test set's law, so against the test set they score near the
    small-sample floor: KID (unbiased) within 3 standard errors of 0, and FD within 2× the FD between
    two disjoint training subsets of about the same sizes (the floor measured on seen images; the
    classifier's own train/test gap makes the test set score measured 1.6× that). Gaussian pixel
    noise of growing σ (one draw, rescaled) raises both monotonically, FD by over 3× at σ = 0.4
    (3.4 bin widths), far beyond the floor."""
    m, train, test = digits_metrics.metrics, digits_metrics.train, digits_metrics.test
    base = m(train)
    assert abs(base["kid"]) < 3 * base["kid_se"]
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(train.shape[0], generator=g)
    floors = [frechet_distance_of_features(m.featurize(train[p[: test.shape[0]]]), m.featurize(train[p[test.shape[0] :]])) for p in (perm, perm.flip(0))]
    assert base["fd"] < 2 * sum(floors) / len(floors)
    z = torch.randn(train.shape, generator=g)
    scores = [base] + [m(train + sigma * z) for sigma in (0.2, 0.4, 0.8)]
    for key in ("fd", "kid"):
        values = [s[key] for s in scores]
        assert all(b > a for a, b in zip(values, values[1:])), (key, values)
    assert scores[2]["fd"] > 2.5 * base["fd"] and scores[2]["kid"] > 3 * scores[2]["kid_se"]


# --- FID Inception features (torch-fidelity, when installed) ----------------------------------------
def _untrained_inception_weights(path: str) -> str:
    """A weights file with torch-fidelity's Inception-v3 layout and He-initialised convolutions (the
    default initialisation shrinks the activations to ~1e-7 over its 90 layers): the constructor
    builds every layer before it reads the file, so a missing file leaves the built network to save
    (the real FID weights cannot be downloaded here)."""
    from sde_diffusion.evaluation.features import _fidelity_inception_class

    cls = _fidelity_inception_class()
    net = cls.__new__(cls)
    with pytest.raises(FileNotFoundError):
        cls.__init__(net, "inception-v3-compat", ["2048"], feature_extractor_weights_path=path + ".missing")
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=torch.Generator().manual_seed(0))
    torch.save(net.state_dict(), path)
    return path


def test_inception_features_from_a_local_weights_file(tmp_path, gen):
    """The FID path runs torch-fidelity's network from a file on disk: 2048 finite features per image
    for grey and RGB inputs in [0, 1]; identical images have FD 0 to round-off and noisy ones a
    positive FD; a missing file is a clear error, never a download."""
    if importlib.util.find_spec("torch_fidelity") is None:
        pytest.skip("torch-fidelity is not installed (pip install --no-deps torch-fidelity)")
    from sde_diffusion.evaluation.features import inception_features

    features = inception_features(_untrained_inception_weights(str(tmp_path / "inception.pth")))
    grey = torch.rand(6, 1, 8, 8, generator=gen)
    f = features(grey)
    assert f.shape == (6, 2048) and torch.isfinite(f).all()
    assert torch.equal(features(grey[:2].expand(-1, 3, -1, -1)), f[:2])
    # 6 images span 5 of 2048 dimensions: the ~2043 zero eigenvalues come out of eigh as ±1e-16·|Σ|²,
    # and their square roots add up to about 2043 × 1e-8 |Σ|, so FD(x, x) = 0 holds to 1e-4 Tr Σ.
    assert abs(frechet_distance_of_features(f, f)) < 1e-4 * float(feature_statistics(f)[1].trace())
    noisy = (grey + 0.3 * torch.randn(grey.shape, generator=gen)).clamp(0, 1)
    assert frechet_distance_of_features(features(noisy), f) > 0
    with pytest.raises(ValueError, match="no Inception weights file"):
        inception_features(str(tmp_path / "absent.pth"))


def test_step_count_benchmark_scores_images_by_fd_and_kid(digits_metrics, tmp_path):
    """The benchmark on images with an exact score: the data law is a mixture of narrow Gaussians
    (std half a grey level) at 100 training digits, so its exact samples are recognisable digits and
    score the floor. Euler–Maruyama's samples at 5, 10 and 20 NFE are measured 170×, 10× and 1.2×
    that floor in FD: FD and KID fall with NFE, at 20 NFE FD is within 2× the floor, at 5 KID is
    many standard errors above its value at 20; the table and plot carry the columns and floors."""
    train = digits_metrics.train[:100].reshape(100, 64).to(torch.float64)
    s = datasets.bin_width(DIGITS) / 2
    mixture = GaussianMixture(torch.ones(100), train, (s**2 * torch.eye(64, dtype=torch.float64)).expand(100, 64, 64).clone())
    sde = get_sde("vp")
    exact = mixture.sample(300, torch.Generator().manual_seed(1)).reshape(300, 1, 8, 8)
    problem = Problem(
        sde=sde, score_fn=mixture.score_fn(sde), shape=(1, 8, 8), true_samples=digits_metrics.test, n=300,
        image_metrics=digits_metrics.metrics, floor_samples=exact, name="digit mixture",
    )
    result = Benchmark(problem, reference_tol=None).sweep(["euler_maruyama"], nfe_grid=(5, 10, 20))
    rows = sorted(result.rows, key=lambda r: r.nfe)
    assert [r.nfe for r in rows] == [5, 10, 20] and all(r.median_dist is None for r in rows)
    fd, kid = [r.fd for r in rows], [r.kid for r in rows]
    assert fd[0] > fd[1] > fd[2] and kid[0] > kid[1] > kid[2]
    assert fd[2] < 2 * result.problem["fd_floor"]
    assert kid[0] - kid[2] > 5 * (rows[0].kid_se + rows[2].kid_se)
    assert result.problem["features_test_accuracy"] == digits_metrics.info["test_accuracy"]
    paths = write_report(result, str(tmp_path))
    with open(paths["markdown"], encoding="utf-8") as fh:
        table = fh.read()
    assert "| fd | kid | kid_se |" in table and "fd_floor" in table
    assert os.path.getsize(paths["plot"]) > 0


def test_quantizer_rounds_to_the_stored_grey_levels():
    """Samples are scored as the data are stored: each value goes to the centre of its grey level's bin
    (17 levels of width 2/17 in (-1, 1)), values outside the range to the end levels; the data are
    fixed points; continuous data have no quantizer."""
    quantize = datasets.get_quantizer(DIGITS)
    train, _ = datasets.get_dataset(DIGITS)
    assert torch.equal(quantize(train), train)
    width = datasets.bin_width(DIGITS)
    centres = -1 + (torch.arange(17) + 0.5) * width
    x = torch.tensor([-1.5, -1.0, centres[3] + 0.49 * width, centres[3] - 0.49 * width, 0.999, 3.0])
    expected = torch.stack([centres[0], centres[0], centres[3], centres[3], centres[16], centres[16]])
    assert torch.allclose(quantize(x), expected, atol=1e-6)
    assert datasets.get_quantizer(SimpleNamespace(dataset="ring")) is None
