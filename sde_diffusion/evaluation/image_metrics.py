"""Image-quality metrics between a set of samples and a reference set, computed on features: the
Fréchet distance (FD) and the kernel distance (KID).

Fréchet distance between the Gaussians N(μ₁, Σ₁) and N(μ₂, Σ₂) fitted to two feature sets (Dowson &
Landau 1982; as FID, Heusel et al. 2017, eq. 6):

    FD = ‖μ₁ - μ₂‖² + Tr(Σ₁ + Σ₂ - 2 (Σ₁^½ Σ₂ Σ₁^½)^½),

with the sample means and the unbiased (N - 1) covariances, in float64. The trace of the square root
is the sum of the square roots of the eigenvalues of the symmetric PSD matrix Σ₁^½ Σ₂ Σ₁^½ (the same
eigenvalues as Σ₁Σ₂). FD is biased upward at finite N: even two samples of one law score above 0.

Kernel distance (KID; Bińkowski et al. 2018, "Demystifying MMD GANs", eq. 2 and §4): the unbiased
estimate of the squared MMD with the cubic kernel k(x, y) = (xᵀy/d + 1)³,

    MMD²_u = Σ_{i≠j} k(xᵢ, xⱼ) / (n(n-1)) + Σ_{i≠j} k(yᵢ, yⱼ) / (m(m-1)) - 2 Σ_{i,j} k(xᵢ, yⱼ) / (nm).

``kernel_distance`` evaluates it over all pairs of the two sets (unbiased, so it can be negative) with
a jackknife standard error. (torch-fidelity's ``kid_std`` is the spread of estimates on overlapping
random subsets of 1000, not a standard error.)

What the features are decides what the numbers mean: ``ImageMetrics`` takes any feature function
(``features.FeatureNet`` trained on the data set's own training split, or the FID Inception network
with ``features.inception_features``). Values on the small classifier's features are comparable only
with values on the same classifier (the same ``weights_sha256``), the same N and the same reference
set: not with a published FID.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


def _as_features(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"{name} must be a (N, d) feature matrix with N >= 2, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} has non-finite entries")
    return x.detach().to(device="cpu", dtype=torch.float64)


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean μ (d,) and unbiased covariance Σ (d, d) of a (N, d) feature matrix, in float64."""
    f = _as_features(features, "features")
    mu = f.mean(dim=0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """The PSD square root V diag(√λ) Vᵀ of a symmetric PSD matrix (round-off negatives set to 0)."""
    lam, v = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (v * lam.clamp(min=0).sqrt()) @ v.T


def frechet_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """‖μ₁ - μ₂‖² + Tr(Σ₁ + Σ₂ - 2 (Σ₁^½ Σ₂ Σ₁^½)^½), the squared 2-Wasserstein distance between the
    Gaussians N(μ₁, Σ₁) and N(μ₂, Σ₂)."""
    mu1, mu2, cov1, cov2 = (a.to(torch.float64) for a in (mu1, mu2, cov1, cov2))
    d = mu1.shape[0]
    if mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(f"need means (d,) and covariances (d, d) of one d, got {tuple(mu1.shape)}, {tuple(cov1.shape)}, {tuple(mu2.shape)}, {tuple(cov2.shape)}")
    root = _psd_sqrt(cov1)
    middle = root @ cov2 @ root
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    return float((mu1 - mu2).pow(2).sum() + cov1.trace() + cov2.trace() - 2 * trace_sqrt)


def frechet_distance_of_features(x: torch.Tensor, y: torch.Tensor) -> float:
    """FD between the Gaussians fitted to feature matrices x (n, d) and y (m, d)."""
    return frechet_distance(*feature_statistics(x), *feature_statistics(y))


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(x, y) = (xᵀy/d + 1)³ for all pairs of rows: (n, m)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _kernel_diagonal(x: torch.Tensor) -> torch.Tensor:
    """k(xᵢ, xᵢ) = (|xᵢ|²/d + 1)³ for every row."""
    return (x.pow(2).sum(dim=1) / x.shape[1] + 1.0) ** 3


def _kernel_sums(x: torch.Tensor, y: torch.Tensor, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row sums of the kernel matrices without their diagonals: r_x[i] = Σ_{j≠i} k(xᵢ, xⱼ),
    c_x[i] = Σ_j k(xᵢ, yⱼ), r_y[j] = Σ_{l≠j} k(yⱼ, y_l), c_y[j] = Σ_i k(xᵢ, yⱼ), in row chunks."""
    rx, cx, ry = (torch.zeros(a.shape[0], dtype=torch.float64) for a in (x, x, y))
    cy = torch.zeros(y.shape[0], dtype=torch.float64)
    for s in range(0, x.shape[0], chunk):
        a = x[s : s + chunk]
        rx[s : s + chunk] = polynomial_kernel(a, x).sum(dim=1) - _kernel_diagonal(a)
        kxy = polynomial_kernel(a, y)
        cx[s : s + chunk], cy = kxy.sum(dim=1), cy + kxy.sum(dim=0)
    for s in range(0, y.shape[0], chunk):
        b = y[s : s + chunk]
        ry[s : s + chunk] = polynomial_kernel(b, y).sum(dim=1) - _kernel_diagonal(b)
    return rx, cx, ry, cy


def kernel_distance(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """KID between feature matrices x (n, d) and y (m, d): MMD²_u over all pairs and its delete-one
    jackknife standard error over both sets (Arvesen 1969, two-sample U-statistics; the jackknife
    variance is conservative in expectation, Efron & Stein 1981). The leave-one-out estimates come in
    closed form from the kernel row sums: without xᵢ the x-x term is (S_xx - 2 r_x[i]) / ((n-1)(n-2))
    and the cross term 2 (S_xy - c_x[i]) / ((n-1) m)."""
    x, y = _as_features(x, "x"), _as_features(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} and {y.shape[1]}")
    n, m = x.shape[0], y.shape[0]
    if min(n, m) < 3:
        raise ValueError(f"KID's jackknife needs at least 3 points in each set, got {n} and {m}")
    rx, cx, ry, cy = _kernel_sums(x, y)
    sxx, syy, sxy = rx.sum(), ry.sum(), cx.sum()
    within_x, within_y = sxx / (n * (n - 1)), syy / (m * (m - 1))
    kid = within_x + within_y - 2 * sxy / (n * m)
    without_x = (sxx - 2 * rx) / ((n - 1) * (n - 2)) + within_y - 2 * (sxy - cx) / ((n - 1) * m)
    without_y = within_x + (syy - 2 * ry) / ((m - 1) * (m - 2)) - 2 * (sxy - cy) / (n * (m - 1))
    variance = (n - 1) / n * (without_x - without_x.mean()).pow(2).sum() + (m - 1) / m * (without_y - without_y.mean()).pow(2).sum()
    return float(kid), float(variance.sqrt())


class ImageMetrics:
    """FD and KID of images against a fixed reference set, on the features of ``features``.

    The reference's features and statistics are computed once. ``preprocess`` maps images before the
    features are taken (both the samples and the reference), e.g. rounding samples to the data's grey
    levels as the data are stored. ``info`` describes the feature network for reports.
    """

    def __init__(
        self,
        features: FeatureFn,
        reference: torch.Tensor,
        *,
        preprocess: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        info: Optional[dict[str, Any]] = None,
    ) -> None:
        self.features = features
        self.preprocess = preprocess
        self.info = dict(info or {})
        self.reference_features = self.featurize(reference)
        self.reference_stats = feature_statistics(self.reference_features)

    def featurize(self, images: torch.Tensor) -> torch.Tensor:
        """(N, d) float64 features of images (after ``preprocess``)."""
        if self.preprocess is not None:
            images = self.preprocess(images)
        with torch.no_grad():
            return _as_features(self.features(images), "features")

    def __call__(self, images: torch.Tensor) -> dict[str, float]:
        """``{"fd", "kid", "kid_se"}`` of ``images`` against the reference set."""
        f = self.featurize(images)
        kid, kid_se = kernel_distance(f, self.reference_features)
        return {"fd": frechet_distance(*feature_statistics(f), *self.reference_stats), "kid": kid, "kid_se": kid_se}

    def describe(self) -> dict[str, Any]:
        """The feature network and the reference set's size, for reports."""
        return {**self.info, "feature_dim": self.reference_features.shape[1], "n_reference": self.reference_features.shape[0]}
