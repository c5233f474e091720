"""VP SDE (β ∈ [0.1, 20]) on the 2-D ring with the residual MLP; PC sampling as score_sde's VP configs:
Euler–Maruyama on 1000 steps, no corrector."""
from sde_diffusion.config import get_default_config, sampling_group, sde_group


def get_config():
    config = get_default_config()
    config.sde = sde_group("vp", beta_min=0.1, beta_max=20.0, N=1000)
    config.sampling = sampling_group("pc", n_samples=2000, predictor="euler_maruyama", corrector="none")
    return config
