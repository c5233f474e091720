"""VE SDE on scikit-learn's 8×8 digits with a small U-Net. σ_max = 12 exceeds the largest distance
between two centred training digits, 8.9 (Song & Ermon 2020, technique 1). PC sampling with reverse
diffusion + Langevin (snr 0.16) on the SDE's 500 levels."""
from sde_diffusion.app.config import get_digits_config, sampling_group, sde_group


def get_config():
    config = get_digits_config()
    config.sde = sde_group("ve", sigma_min=0.01, sigma_max=12.0, N=500)
    config.sampling = sampling_group("pc", n_samples=64, predictor="reverse_diffusion", corrector="langevin", snr=0.16)
    return config
