"""VP SDE on 28×28 grey images with a small U-Net: MNIST's IDX
files by default — set ``data.path`` to the directory holding them. A folder of images or an array
file of 28×28 grey images trains with ``data.dataset=folder`` or ``array`` and its ``data.path``."""
from sde_diffusion.app.config import data_group, get_default_config, model_group, sampling_group, sde_group


def get_config():
    config = get_default_config()
    config.data = data_group("mnist", image_size=28, num_channels=1, uniform_dequantization=True)
    config.model = model_group("unet", image_size=28, num_channels=1, nf=32, ch_mult=(1, 2, 2), num_res_blocks=2,
                               attn_resolutions=(7,), dropout=0.1)
    config.sde = sde_group("vp", beta_min=0.1, beta_max=20.0, N=1000)
    config.training.loss = "dsm"
    config.training.batch_size = 128
    config.training.n_iters = 20000
    config.optim.lr, config.optim.schedule, config.optim.warmup = 2e-4, "constant", 1000
    config.training.snapshot_freq = 2000
    config.training.sample_freq = 2000
    config.training.n_snapshot_samples = 64
    config.sampling = sampling_group("pc", steps=500, n_samples=64, predictor="euler_maruyama", corrector="langevin", snr=0.16)
    config.eval.batch_size, config.eval.n_samples = 100, 1000
    return config
