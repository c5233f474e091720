"""Time-conditioned classifiers p_t(y | x) of perturbed data, for classifier guidance: the network, its
cross-entropy-over-t training, the exact classifier of a mixture, and ∇_x log p_t(y | x).

A classifier is a function ``classifier(x, t) -> logits`` of shape (B, C) whose log-softmax is
log p_t(y | x) for the perturbed data x = x_t at time t.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from sde_diffusion.core.mixtures import GaussianMixture
from sde_diffusion.core.sde_lib import LinearSDE
from sde_diffusion.core.utils import append_dims, batch_time, check_positive_int
from sde_diffusion.models.embeddings import TimeEmbedding
from sde_diffusion.models.mlp import ResidualMLPBlock
from sde_diffusion.models.utils import check_dropout, network_inputs
from sde_diffusion.training.losses import uniform_time

ClassifierFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class NoisyClassifier(nn.Module):
    """logits = W_out SiLU(LayerNorm h_L), h_0 = W_in x_in, h_l = Block_l(h_{l-1}, temb(c_noise)): the
    body of ``ScoreMLP`` (its residual blocks and time embedding) with a ``num_classes``-way head.

    Inputs of any shape (B, ...) with ``dim`` entries per sample are flattened (an 8×8 image is dim =
    64). ``get_classifier_fn`` feeds it the preconditioned x_in = c_in x and c_noise = log(σ/α) that
    ``models.get_score_fn`` feeds the score networks.
    """

    def __init__(
        self,
        *,
        dim: int,
        num_classes: int,
        hidden: int = 256,
        num_blocks: int = 2,
        embedding_type: str = "fourier",
        embedding_dim: int = 64,
        embedding_scale: Optional[float] = None,
        dropout: float = 0.0,
        sigma_data: float = 0.5,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("hidden", hidden), ("num_blocks", num_blocks)):
            check_positive_int(value, name)
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        check_dropout(dropout)
        self.dim, self.num_classes, self.sigma_data = dim, num_classes, float(sigma_data)
        temb_dim = 4 * embedding_dim
        self.time_embedding = TimeEmbedding(embedding_dim, temb_dim, embedding_type, embedding_scale)
        self.input = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(ResidualMLPBlock(hidden, temb_dim, dropout) for _ in range(num_blocks))
        self.out_norm = nn.LayerNorm(hidden)
        self.output = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        if x[0].numel() != self.dim:
            raise ValueError(f"NoisyClassifier(dim={self.dim}) got inputs of shape {tuple(x.shape)}")
        temb = self.time_embedding(c_noise)
        h = self.input(x.reshape(x.shape[0], self.dim))
        for block in self.blocks:
            h = block(h, temb)
        return self.output(F.silu(self.out_norm(h)))


def get_classifier_fn(sde: LinearSDE, model: NoisyClassifier) -> ClassifierFn:
    """``classifier(x, t) -> logits`` of ``model`` under ``sde``, with the score networks' preconditioning."""

    def classifier(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x_in, c_noise = network_inputs(sde, x, t, model.sigma_data)[:2]
        return model(x_in, c_noise)

    return classifier


def mixture_classifier(mixture: GaussianMixture, sde: LinearSDE) -> ClassifierFn:
    """The exact classifier of a mixture whose classes are its components: logits
    log w_k + log N(x; α μ_k, α² C_k + σ² I), whose softmax is the responsibility p_t(k | x) (float64)."""

    def classifier(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return mixture.component_log_prob(x, t, sde) + mixture.log_weights

    return classifier


def log_prob_grad(classifier: ClassifierFn, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """∇_x log p_t(y | x) = ∇_x log_softmax(classifier(x, t))_y by autograd, in x's dtype (gradients are
    enabled locally, so it works inside the samplers' ``torch.no_grad``)."""
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        log_p = torch.log_softmax(classifier(x_in, batch_time(t, x)), dim=1)
        (grad,) = torch.autograd.grad(log_p.gather(1, labels[:, None]).sum(), x_in)
    return grad.to(x.dtype)


def classifier_loss(
    sde: LinearSDE,
    classifier: ClassifierFn,
    x0: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Cross-entropy over noise levels (Song et al. 2021, App. I.1; Dhariwal & Nichol 2021, §4):

        L = E_{t ~ U(eps, T)} E_{z ~ N(0, I)} [-log p_θ(y | α(t) x_0 + σ(t) z, t)],

    one (t, z) per example, averaged over the batch."""
    t = uniform_time(x0.shape[0], eps, sde.T, generator, x0.device).to(x0.dtype)
    z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    mean, std = sde.marginal_prob(x0, t)
    return F.cross_entropy(classifier(mean + append_dims(std, x0.ndim) * z, t), labels)


def train_classifier(
    sde: LinearSDE,
    model: NoisyClassifier,
    data: torch.Tensor,
    labels: torch.Tensor,
    *,
    n_iters: int = 2000,
    batch_size: int = 256,
    lr: float = 2e-3,
    eps: float = 1e-5,
    generator: Optional[torch.Generator] = None,
) -> list[float]:
    """Fit ``model`` to (data, labels) by Adam on ``classifier_loss``, minibatches drawn with replacement
    (``generator`` drives every draw); returns the loss of each step. Leaves the model in eval mode."""
    for name, value in (("n_iters", n_iters), ("batch_size", batch_size)):
        check_positive_int(value, name)
    if labels.shape != (data.shape[0],):
        raise ValueError(f"labels must have shape ({data.shape[0]},), got {tuple(labels.shape)}")
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, {sde.T}), got {eps}")
    classifier = get_classifier_fn(sde, model)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    model.train()
    for _ in range(n_iters):
        idx = torch.randint(data.shape[0], (batch_size,), generator=generator, device=data.device)
        loss = classifier_loss(sde, classifier, data[idx], labels[idx], eps, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
    model.eval()
    return history
