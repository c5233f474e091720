"""VP SDE on scikit-learn's 8×8 digits with a small U-Net: the demo's run (`make demo`). PC sampling
with Euler–Maruyama + Langevin on 250 steps (500 network calls); the probability-flow ODE at rtol =
atol = 1e-3 (about 75 calls: at the default 1e-5 the learned score costs about 800 for the same
images)."""
from sde_diffusion.app.config import get_digits_config, sampling_group, sde_group


def get_config():
    config = get_digits_config()
    config.sde = sde_group("vp", beta_min=0.1, beta_max=20.0, N=1000)
    config.sampling = sampling_group("pc", steps=250, n_samples=64, predictor="euler_maruyama", corrector="langevin", snr=0.16)
    config.sampling.ode.rtol = config.sampling.ode.atol = 1e-3
    return config
