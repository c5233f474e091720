"""Class-conditional VP SDE on scikit-learn's 8×8 digits: the small U-Net of ``configs/vp/digits.py`` with a
label embedding (10 classes plus ∅), trained with condition dropout 0.1 so that the one network gives the
conditional and the unconditional score (Ho & Salimans 2022). Sampling draws every class, one grid row
each (``class_label=-1``), with classifier-free guidance weight w = 2 and DPM-Solver++(2M) on 20 steps:

    python -m sde_diffusion train  --config configs/digits_vp_conditional.py --workdir runs/digits_cond
    python -m sde_diffusion sample --config configs/digits_vp_conditional.py --workdir runs/digits_cond \\
        --config.sampling.class_label=3 --config.sampling.guidance_scale=2
"""
from sde_diffusion.app.config import get_digits_config, model_group, sampling_group, sde_group


def get_config():
    config = get_digits_config()
    config.sde = sde_group("vp", beta_min=0.1, beta_max=20.0, N=1000)
    config.model = model_group(
        "unet", image_size=8, num_channels=1, nf=32, ch_mult=(1, 2), num_res_blocks=1, dropout=0.1, num_classes=10
    )
    config.training.cond_drop_prob = 0.1
    config.training.batch_size = 128
    config.training.n_iters = 1000
    config.optim.lr = 2e-3
    config.training.n_snapshot_samples = 100
    config.sampling = sampling_group(
        "dpm_solver_pp", steps=20, n_samples=100, class_label=-1, guidance_scale=2.0, order=2
    )
    return config
