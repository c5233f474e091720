"""Class conditioning and guidance as ``score_fn`` wrappers: every sampler takes a ``score_fn(x, t)``,
so each wrapper below works with every sampler unchanged.

Conventions
-----------
* A *class-conditional* score function is ``score_fn(x, t, labels)``, ``labels`` a (B,) long tensor of
  classes 0, ..., C-1 in which ``NULL_LABEL`` = -1 stands for ∅, "no label": the unconditional score
  ∇log p_t(x), which a network trained with condition dropout provides too (``models.get_score_fn``).
* Classifier-free guidance with weight w (Ho & Salimans 2022, eq. 6):

      ε̃(x, y) = (1 + w) ε(x, y) - w ε(x, ∅),        s̃(x, y) = (1 + w) s(x, y) - w s(x, ∅).

  The two forms are one formula: ε = -σ(t) s is linear with the same σ for both terms. w = 0 is the
  plain conditional model and w = -1 the unconditional one. Texts writing γ ε(x, y) + (1 - γ) ε(x, ∅)
  (γ = 1 plain conditional) use γ = 1 + w.
* Classifier guidance with scale s (Dhariwal & Nichol 2021, Alg. 1; Song et al. 2021, eq. 14 at s = 1):

      s̃(x, y) = ∇log p_t(x) + s ∇log p_t(y | x).

  Bayes gives ∇log p_t(y | x) = ∇log p_t(x | y) - ∇log p_t(x), so s = 1 is the exact conditional
  score, and classifier-free guidance with weight w is classifier guidance with s = 1 + w by the
  implicit classifier p_t(y | x) ∝ p_t(x | y) / p_t(x).
* For s ≠ 1, s̃ is the score of the density p_t(x) p_t(y | x)^s tilted *at each time t*, which is not
  the perturbed tilted data density (p_0 p_0(y | ·)^s convolved with the kernel): tilting does not
  commute with noising, so guided samplers draw p_0(x) p_0(y | x)^s / Z only approximately. What does
  hold: s = 1 samples p_0(x | y), and for s > 1 the samples concentrate further on class y.
"""
from __future__ import annotations

import math
from typing import Union

import torch

from sde_diffusion.conditioning.classifier import ClassifierFn, log_prob_grad
from sde_diffusion.core.mixtures import GaussianMixture
from sde_diffusion.core.sde_lib import LinearSDE
from sde_diffusion.core.types import ScoreFn
from sde_diffusion.core.utils import batch_time
from sde_diffusion.models.embeddings import NULL_LABEL

#: A sampling label asking for every class in turn, ``n // C`` samples each (one grid row per class).
ALL_CLASSES = -1

Labels = Union[int, torch.Tensor]


def check_labels(labels: Labels, allow_null: bool = True) -> None:
    """Raise ``ValueError`` unless ``labels`` is an int or a 1-D integer tensor of classes >= 0
    (or ``NULL_LABEL`` when ``allow_null``)."""
    lowest = NULL_LABEL if allow_null else 0
    if isinstance(labels, torch.Tensor):
        if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype.is_complex:
            raise ValueError(f"labels must be a 1-D integer tensor, got dtype {labels.dtype} and shape {tuple(labels.shape)}")
        if labels.numel() and int(labels.min()) < lowest:
            raise ValueError(f"labels must be >= {lowest}, got {int(labels.min())}")
    elif not isinstance(labels, int) or isinstance(labels, bool) or labels < lowest:
        raise ValueError(f"a label must be an integer >= {lowest}, got {labels!r}")


def check_weight(name: str, value: float) -> None:
    """Raise ``ValueError`` unless the guidance weight ``value`` is a finite real number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"the guidance {name} must be a finite number, got {value!r}")


def labels_for(labels: Labels, x: torch.Tensor) -> torch.Tensor:
    """``labels`` as the (B,) long tensor matching the batch x: an int is broadcast."""
    if isinstance(labels, int):
        return torch.full((x.shape[0],), labels, dtype=torch.long, device=x.device)
    if labels.shape != (x.shape[0],):
        raise ValueError(f"labels have shape {tuple(labels.shape)}, the batch has {x.shape[0]} samples")
    return labels.to(device=x.device, dtype=torch.long)


def guide(cond: torch.Tensor, uncond: torch.Tensor, w: float) -> torch.Tensor:
    """(1 + w) · cond - w · uncond: the classifier-free combination, for noise or score predictions alike."""
    return cond + w * (cond - uncond)


def conditional_score_fn(score_fn: ScoreFn, labels: Labels) -> ScoreFn:
    """The score ∇log p_t(x | y) of a class-conditional score function at fixed labels."""
    check_labels(labels)

    def conditional(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return score_fn(x, t, labels_for(labels, x))

    return conditional


def classifier_free_guidance(score_fn: ScoreFn, labels: Labels, w: float) -> ScoreFn:
    """s̃ = (1 + w) s(x, t, y) - w s(x, t, ∅) (module docstring), the two scores from one call on the
    doubled batch [x; x] with labels [y; ∅]; w = 0 is ``conditional_score_fn`` (one batch)."""
    check_labels(labels, allow_null=False)
    check_weight("w", w)
    if w == 0:
        return conditional_score_fn(score_fn, labels)

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        y = labels_for(labels, x)
        t = batch_time(t, x)
        both = score_fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, NULL_LABEL)]))
        cond, uncond = both.chunk(2)
        return guide(cond, uncond, w)

    return guided


def classifier_guidance(score_fn: ScoreFn, classifier: ClassifierFn, labels: Labels, scale: float) -> ScoreFn:
    """s̃ = s(x, t) + scale · ∇log p_t(y | x) (module docstring) with the time-conditioned
    ``classifier`` (``classifier.log_prob_grad``; evaluated at x_t, as Dhariwal & Nichol)."""
    check_labels(labels, allow_null=False)
    check_weight("scale", scale)

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return score_fn(x, t) + scale * log_prob_grad(classifier, x, t, labels_for(labels, x))

    return guided


def mixture_conditional_score_fn(mixture: GaussianMixture, sde: LinearSDE) -> ScoreFn:
    """The exact class-conditional score of a mixture whose classes are its components: label k gives
    the score of component k alone, N(α μ_k, α² C_k + σ² I); ``NULL_LABEL`` the whole mixture's."""
    parts = [GaussianMixture([1.0], mixture.means[k : k + 1], mixture.covariances[k : k + 1]) for k in range(mixture.n_components)]

    def score_fn(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_labels(labels)
        if labels.numel() and int(labels.max()) >= len(parts):
            raise ValueError(f"labels must be < {len(parts)} (the number of components), got {int(labels.max())}")
        t = batch_time(t, x)
        out = torch.empty_like(x)
        for k, part in enumerate([mixture, *parts], start=NULL_LABEL):
            rows = labels == k
            if bool(rows.any()):
                out[rows] = part.score(x[rows], t[rows], sde)
        return out

    return score_fn
