"""Sub-VP SDE on scikit-learn's 8×8 digits with a small U-Net; PC sampling with Euler–Maruyama and
no corrector on 500 steps."""
from sde_diffusion.app.config import get_digits_config, sampling_group, sde_group


def get_config():
    config = get_digits_config()
    config.sde = sde_group("subvp", beta_min=0.1, beta_max=20.0, N=1000)
    config.sampling = sampling_group("pc", steps=500, n_samples=64, predictor="euler_maruyama", corrector="none")
    return config
