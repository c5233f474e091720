"""Sub-VP SDE on the 2-D ring with the residual MLP; PC sampling with Euler–Maruyama and no
corrector (score_sde's sub-VP recipe)."""
from sde_diffusion.app.config import get_default_config, sampling_group, sde_group


def get_config():
    config = get_default_config()
    config.sde = sde_group("subvp", beta_min=0.1, beta_max=20.0, N=1000)
    config.sampling = sampling_group("pc", n_samples=2000, predictor="euler_maruyama", corrector="none")
    return config
