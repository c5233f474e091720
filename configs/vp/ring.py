"""VP SDE (β ∈ [0.1, 20]) on the 2-D ring with the residual MLP; PC sampling with reverse diffusion +
Langevin (snr 0.16) on the SDE's 1000 levels. (score_sde's VP configs use Euler–Maruyama without a
corrector; on the ring at 10k samples its O(1/N) bias is visible in the energy distance even with
the exact score, reverse diffusion + Langevin is not: benchmarks/train_quality.py.)"""
from sde_diffusion.app.config import get_default_config, sampling_group, sde_group


def get_config():
    config = get_default_config()
    config.sde = sde_group("vp", beta_min=0.1, beta_max=20.0, N=1000)
    config.sampling = sampling_group("pc", n_samples=2000, predictor="reverse_diffusion", corrector="langevin", snr=0.16)
    return config
