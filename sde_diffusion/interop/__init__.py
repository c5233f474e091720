"""Pretrained models from other libraries as ``(sde, score_fn)`` pairs that every sampler, the
likelihood, the ELBO and the step-count benchmark take: diffusers ``UNet2DModel``s with their scheduler
(``from_diffusers``) and denoisers in k-diffusion's convention D(x, σ) (``from_k_diffusion``).
diffusers is an optional dependency (``pip install ".[diffusers]"``), imported only when a diffusers
model is loaded."""
from sde_diffusion.interop.diffusers import DiffusersScore, from_diffusers, load_pretrained
from sde_diffusion.interop.k_diffusion import DenoiserScore, from_k_diffusion

__all__ = ["from_diffusers", "load_pretrained", "DiffusersScore", "from_k_diffusion", "DenoiserScore"]
