"""VE SDE (σ ∈ [0.01, 50]) on the 2-D ring with the residual MLP; PC sampling with reverse diffusion +
Langevin (snr 0.16). σ_max = 50 exceeds the largest distance between ring points (4), as VE needs."""
from sde_diffusion.app.config import get_default_config, sampling_group, sde_group


def get_config():
    config = get_default_config()
    config.sde = sde_group("ve", sigma_min=0.01, sigma_max=50.0, N=1000)
    config.sampling = sampling_group("pc", n_samples=2000, predictor="reverse_diffusion", corrector="langevin", snr=0.16)
    return config
